import { test } from 'node:test';
import assert from 'node:assert/strict';
import seedrandom from 'seedrandom';
import type { NamedAttrMap, Tensor, Variable } from '@tensorflow/tfjs';
import { BACKEND_ENV, initBackend } from './backend.js';
import {
  activeWasmTrainingKernels,
  batchMatMulConfig,
  conv2DBackpropInputConfig,
  registerWasmTrainingKernels,
  restoreWasmKernels,
  WASM_TRAINING_KERNELS,
} from './wasm-kernels.js';
import { Trainer } from './trainer.js';
import type { LocalDataset } from './dataset.js';

// This file is about the wasm backend, whatever a developer's shell forces elsewhere.
delete process.env[BACKEND_ENV];
const { tf, name } = await initBackend(['wasm']);

function randoms(n: number, rng: () => number): Float32Array {
  return Float32Array.from({ length: n }, () => rng() * 2 - 1);
}

interface Case {
  x: [number, number, number, number];
  filter: [number, number, number, number];
  strides: number | [number, number];
  pad: 'same' | 'valid' | number;
  dataFormat?: 'NHWC' | 'NCHW';
}

/** Runs the kernel by name on `backend` with the same inputs, so cpu's own implementation is the reference. */
async function filterGrad(backend: 'cpu' | 'wasm', c: Case, xv: Float32Array, dyv: Float32Array, dyShape: number[]) {
  await tf.setBackend(backend);
  return tf.tidy(() => {
    const x = tf.tensor(xv, c.x);
    const dy = tf.tensor(dyv, dyShape);
    const attrs = { strides: c.strides, pad: c.pad, dataFormat: c.dataFormat ?? 'NHWC', filterShape: c.filter };
    const dw = tf.engine().runKernel(tf.Conv2DBackpropFilter, { x, dy }, attrs as unknown as NamedAttrMap) as Tensor;
    assert.deepEqual(dw.shape, c.filter);
    return Float32Array.from(dw.dataSync());
  });
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const v of a) m = Math.max(m, Math.abs(v));
  return m;
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

test('wasm is active and carries every training kernel of ours', () => {
  assert.equal(name, 'wasm');
  assert.deepEqual(activeWasmTrainingKernels(tf), [...WASM_TRAINING_KERNELS]);
  // Already there: registering again is a no-op.
  assert.deepEqual(registerWasmTrainingKernels(tf), []);
  // Kernels the CNN's backward pass also needs ship with the backend.
  for (const k of [tf.MaxPoolGrad, tf.Step, tf.Conv2D, tf.MaxPool, tf.Transpose, tf.Reverse]) {
    assert.ok(tf.getKernel(k, 'wasm'), `${k} missing on wasm`);
  }
});

test('restoring puts the backend kernels back, and registering ours again replaces them', () => {
  const ownInput = tf.getKernel(tf.Conv2DBackpropInput, 'wasm');
  assert.deepEqual(restoreWasmKernels(tf).sort(), ['BatchMatMul', 'Conv2DBackpropInput']);
  assert.deepEqual(activeWasmTrainingKernels(tf), ['Conv2DBackpropFilter']);
  assert.notEqual(tf.getKernel(tf.Conv2DBackpropInput, 'wasm'), ownInput);
  assert.ok(tf.getKernel(tf.BatchMatMul, 'wasm'));
  assert.deepEqual(restoreWasmKernels(tf), []);
  assert.deepEqual(registerWasmTrainingKernels(tf).sort(), ['BatchMatMul', 'Conv2DBackpropInput']);
  assert.deepEqual(activeWasmTrainingKernels(tf), [...WASM_TRAINING_KERNELS]);
});

test('Conv2DBackpropFilter on wasm matches the cpu backend', async () => {
  const cases: Case[] = [
    { x: [2, 8, 8, 3], filter: [3, 3, 3, 4], strides: 1, pad: 'same' },
    { x: [2, 9, 9, 2], filter: [3, 3, 2, 5], strides: 2, pad: 'same' },
    { x: [3, 10, 7, 2], filter: [5, 5, 2, 3], strides: 2, pad: 'valid' },
    { x: [2, 11, 11, 1], filter: [4, 4, 1, 2], strides: 3, pad: 'valid' },
    { x: [1, 12, 10, 3], filter: [2, 3, 3, 2], strides: [2, 1], pad: 'same' },
    { x: [2, 6, 6, 2], filter: [1, 1, 2, 3], strides: 2, pad: 'valid' },
    { x: [2, 7, 7, 2], filter: [3, 3, 2, 2], strides: 1, pad: 1 },
    { x: [4, 28, 28, 1], filter: [5, 5, 1, 8], strides: 1, pad: 'same' },
    { x: [2, 14, 14, 8], filter: [5, 5, 8, 16], strides: 1, pad: 'same' },
    { x: [2, 3, 8, 8], filter: [3, 3, 3, 4], strides: 2, pad: 'same', dataFormat: 'NCHW' },
  ];
  const rng = seedrandom('conv2d-backprop-filter');
  for (const c of cases) {
    const info = tf.backend_util.computeConv2DInfo(
      c.x,
      c.filter,
      c.strides,
      1,
      c.pad,
      undefined,
      false,
      tf.backend_util.convertConv2DDataFormat(c.dataFormat ?? 'NHWC'),
    );
    const xv = randoms(c.x.reduce((a, b) => a * b, 1), rng);
    const dyv = randoms(info.outShape.reduce((a, b) => a * b, 1), rng);
    const ref = await filterGrad('cpu', c, xv, dyv, info.outShape);
    const got = await filterGrad('wasm', c, xv, dyv, info.outShape);
    const scale = Math.max(1, maxAbs(ref));
    assert.ok(maxAbs(ref) > 0, 'reference gradient is not trivially zero');
    const err = maxDiff(got, ref) / scale;
    assert.ok(err < 1e-4, `${JSON.stringify(c)}: relative error ${err}`);
  }
  await tf.setBackend('wasm');
});

interface InputCase {
  /** The forward convolution's input shape, which is dX's shape. */
  x: [number, number, number, number];
  filter: [number, number, number, number];
  strides: number | [number, number];
  pad: 'same' | 'valid' | number;
  dataFormat?: 'NHWC' | 'NCHW';
  /** Whether the XNNPACK path covers it (else the backend's kernel answers). */
  covered: boolean;
}

/** The input-gradient cases: the shapes of packages/models' CNN first, then others around them. */
const INPUT_CASES: InputCase[] = [
  { x: [4, 14, 14, 32], filter: [5, 5, 32, 64], strides: 1, pad: 'same', covered: true }, // cnn conv2
  { x: [3, 28, 28, 1], filter: [5, 5, 1, 32], strides: 1, pad: 'same', covered: true }, // cnn conv1
  { x: [2, 9, 11, 3], filter: [3, 3, 3, 4], strides: 1, pad: 'valid', covered: true },
  { x: [2, 8, 8, 2], filter: [4, 4, 2, 3], strides: 1, pad: 'same', covered: true }, // even kernel: uneven padding
  { x: [2, 7, 6, 3], filter: [2, 3, 3, 5], strides: 1, pad: 'same', covered: true },
  { x: [2, 7, 7, 2], filter: [3, 3, 2, 2], strides: 1, pad: 1, covered: true },
  { x: [1, 5, 5, 2], filter: [1, 1, 2, 3], strides: 1, pad: 'valid', covered: true },
  { x: [2, 9, 9, 2], filter: [3, 3, 2, 5], strides: 2, pad: 'same', covered: false },
  { x: [2, 10, 7, 2], filter: [5, 5, 2, 3], strides: [2, 1], pad: 'valid', covered: false },
  { x: [2, 6, 6, 2], filter: [3, 3, 2, 2], strides: 1, pad: 3, covered: false }, // padding wider than the filter
  { x: [2, 3, 8, 8], filter: [3, 3, 3, 4], strides: 1, pad: 'same', dataFormat: 'NCHW', covered: false },
];

async function inputGrad(backend: 'cpu' | 'wasm', c: InputCase, dyv: Float32Array, fv: Float32Array, dyShape: number[]) {
  await tf.setBackend(backend);
  return tf.tidy(() => {
    const dy = tf.tensor(dyv, dyShape);
    const filter = tf.tensor(fv, c.filter);
    const attrs = { strides: c.strides, pad: c.pad, dataFormat: c.dataFormat ?? 'NHWC', inputShape: c.x };
    const dx = tf.engine().runKernel(tf.Conv2DBackpropInput, { dy, filter }, attrs as unknown as NamedAttrMap) as Tensor;
    assert.deepEqual(dx.shape, c.x);
    return Float32Array.from(dx.dataSync());
  });
}

function conv2DInfoOf(c: { x: number[]; filter: number[]; strides: number | [number, number]; pad: 'same' | 'valid' | number; dataFormat?: 'NHWC' | 'NCHW' }) {
  return tf.backend_util.computeConv2DInfo(
    c.x as [number, number, number, number],
    c.filter as [number, number, number, number],
    c.strides,
    1,
    c.pad,
    undefined,
    false,
    tf.backend_util.convertConv2DDataFormat(c.dataFormat ?? 'NHWC'),
  );
}

// Tolerance: float32 sums of up to 25 x 64 = 1,600 products of values in [-1, 1] in another order than cpu's; the
// error is bounded by about k * 2^-24 * sum|terms| ~ 1e-4 relative to the largest output, and runs ~1e-6 in practice.
test('Conv2DBackpropInput on wasm matches the cpu backend (relative error < 1e-4)', async () => {
  const rng = seedrandom('conv2d-backprop-input');
  for (const c of INPUT_CASES) {
    const info = conv2DInfoOf(c);
    const dyv = randoms(info.outShape.reduce((a, b) => a * b, 1), rng);
    const fv = randoms(c.filter.reduce((a, b) => a * b, 1), rng);
    const ref = await inputGrad('cpu', c, dyv, fv, info.outShape);
    const got = await inputGrad('wasm', c, dyv, fv, info.outShape);
    assert.ok(maxAbs(ref) > 0, 'reference gradient is not trivially zero');
    const err = maxDiff(got, ref) / Math.max(1, maxAbs(ref));
    assert.ok(err < 1e-4, `${JSON.stringify(c)}: relative error ${err}`);
  }
  await tf.setBackend('wasm');
});

test('Conv2DBackpropInput takes the XNNPACK path for stride 1 channels-last, the backend kernel otherwise', async () => {
  await tf.setBackend('wasm');
  let fallbacks = 0;
  const backendKernel = restoreWasmKernels(tf, ['Conv2DBackpropInput']).length === 1 ? tf.getKernel(tf.Conv2DBackpropInput, 'wasm')! : undefined;
  assert.ok(backendKernel, 'our kernel was registered');
  const counting = conv2DBackpropInputConfig(tf, (args) => {
    fallbacks++;
    return backendKernel.kernelFunc(args);
  });
  tf.unregisterKernel(tf.Conv2DBackpropInput, 'wasm');
  tf.registerKernel(counting);
  try {
    const rng = seedrandom('coverage');
    for (const c of INPUT_CASES) {
      const info = conv2DInfoOf(c);
      const before = fallbacks;
      await inputGrad('wasm', c, randoms(info.outShape.reduce((a, b) => a * b, 1), rng), randoms(c.filter.reduce((a, b) => a * b, 1), rng), info.outShape);
      assert.equal(fallbacks - before, c.covered ? 0 : 1, `${JSON.stringify(c)} ${c.covered ? 'should not' : 'should'} fall back`);
    }
  } finally {
    tf.unregisterKernel(tf.Conv2DBackpropInput, 'wasm');
    tf.registerKernel(backendKernel);
    registerWasmTrainingKernels(tf);
  }
  assert.deepEqual(activeWasmTrainingKernels(tf), [...WASM_TRAINING_KERNELS]);
});

interface MatMulCase {
  a: number[];
  b: number[];
  transposeA: boolean;
  transposeB: boolean;
}

/** The dense layers' products (MLP 784-128-64-10 and the CNN's 3136-512-10 at batch 32), then batched ones. */
const MATMUL_CASES: MatMulCase[] = [
  { a: [32, 784], b: [32, 128], transposeA: true, transposeB: false }, // mlp dense1 dW = x^T dy
  { a: [32, 128], b: [128, 64], transposeA: false, transposeB: false }, // forward, untouched
  { a: [32, 64], b: [128, 64], transposeA: false, transposeB: true }, // mlp dense2 dx = dy W^T
  { a: [32, 10], b: [64, 10], transposeA: false, transposeB: true },
  { a: [32, 3136], b: [32, 512], transposeA: true, transposeB: false }, // cnn fc1 dW
  { a: [32, 512], b: [3136, 512], transposeA: false, transposeB: true }, // cnn fc1 dx
  { a: [7, 5], b: [6, 7], transposeA: true, transposeB: true },
  { a: [3, 4, 5], b: [3, 4, 6], transposeA: true, transposeB: false },
  { a: [2, 3, 5, 4], b: [2, 3, 6, 4], transposeA: false, transposeB: true },
  { a: [1, 5, 4], b: [3, 6, 5], transposeA: true, transposeB: true }, // broadcast batch
  { a: [1, 1], b: [1, 9], transposeA: true, transposeB: false },
];

async function matMul(backend: 'cpu' | 'wasm', c: MatMulCase, av: Float32Array, bv: Float32Array) {
  await tf.setBackend(backend);
  return tf.tidy(() => {
    const a = tf.tensor(av, c.a);
    const b = tf.tensor(bv, c.b);
    const attrs = { transposeA: c.transposeA, transposeB: c.transposeB };
    const out = tf.engine().runKernel(tf.BatchMatMul, { a, b }, attrs as unknown as NamedAttrMap) as Tensor;
    return { shape: out.shape, values: Float32Array.from(out.dataSync()) };
  });
}

// Tolerance: sums of up to 3,136 products of values in [-1, 1]; float32 reordering error ~ k * 2^-24 * sum|terms|,
// below 1e-4 relative to the largest output.
test('BatchMatMul with transposed operands on wasm matches the cpu backend (relative error < 1e-4)', async () => {
  const rng = seedrandom('batch-matmul');
  for (const c of MATMUL_CASES) {
    const av = randoms(c.a.reduce((x, y) => x * y, 1), rng);
    const bv = randoms(c.b.reduce((x, y) => x * y, 1), rng);
    const ref = await matMul('cpu', c, av, bv);
    const got = await matMul('wasm', c, av, bv);
    assert.deepEqual(got.shape, ref.shape, JSON.stringify(c));
    const err = maxDiff(got.values, ref.values) / Math.max(1, maxAbs(ref.values));
    assert.ok(err < 1e-4, `${JSON.stringify(c)}: relative error ${err}`);
  }
  await tf.setBackend('wasm');
});

test('BatchMatMul hands the backend untransposed operands only', async () => {
  await tf.setBackend('wasm');
  const seen: [boolean, boolean][] = [];
  assert.equal(restoreWasmKernels(tf, ['BatchMatMul']).length, 1);
  const backendKernel = tf.getKernel(tf.BatchMatMul, 'wasm')!;
  const spying = batchMatMulConfig(tf, (args) => {
    const at = args.attrs as unknown as { transposeA: boolean; transposeB: boolean };
    seen.push([at.transposeA, at.transposeB]);
    return backendKernel.kernelFunc(args);
  });
  tf.unregisterKernel(tf.BatchMatMul, 'wasm');
  tf.registerKernel(spying);
  try {
    const rng = seedrandom('spy');
    for (const c of MATMUL_CASES) await matMul('wasm', c, randoms(c.a.reduce((x, y) => x * y, 1), rng), randoms(c.b.reduce((x, y) => x * y, 1), rng));
  } finally {
    tf.unregisterKernel(tf.BatchMatMul, 'wasm');
    tf.registerKernel(backendKernel);
    registerWasmTrainingKernels(tf);
  }
  assert.equal(seen.length, MATMUL_CASES.length);
  assert.ok(seen.every(([ta, tb]) => !ta && !tb), JSON.stringify(seen));
});

function smallCnn(filters: [number, number], dense: number, size = 28) {
  const init = (seed: number) => tf.initializers.glorotUniform({ seed });
  return tf.sequential({
    layers: [
      tf.layers.conv2d({
        inputShape: [size, size, 1],
        filters: filters[0],
        kernelSize: 5,
        activation: 'relu',
        padding: 'same',
        kernelInitializer: init(1),
      }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.conv2d({ filters: filters[1], kernelSize: 5, activation: 'relu', padding: 'same', kernelInitializer: init(2) }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.flatten(),
      tf.layers.dense({ units: dense, activation: 'relu', kernelInitializer: init(3), biasInitializer: 'ones' }),
      tf.layers.dense({ units: 10, activation: 'softmax', kernelInitializer: init(4) }),
    ],
  });
}

test('a CNN gradient (variableGrads) on wasm matches cpu', async () => {
  await tf.setBackend('wasm');
  const model = smallCnn([4, 8], 16);
  const rng = seedrandom('cnn-grad');
  const xv = Float32Array.from({ length: 6 * 28 * 28 }, () => rng());
  const labels = Int32Array.from({ length: 6 }, (_, i) => i % 10);
  const grads = async (backend: 'cpu' | 'wasm') => {
    await tf.setBackend(backend);
    return tf.tidy(() => {
      const x = tf.tensor(xv, [6, 28, 28, 1]);
      const y = tf.oneHot(tf.tensor1d(labels, 'int32'), 10);
      const { grads } = tf.variableGrads(() => tf.losses.softmaxCrossEntropy(y, model.apply(x) as Tensor));
      return model.trainableWeights.map((w) => Float32Array.from(grads[(w.read() as Variable).name]!.dataSync()));
    });
  };
  const onWasm = await grads('wasm');
  const onCpu = await grads('cpu');
  assert.equal(onWasm.length, 8);
  for (let i = 0; i < onCpu.length; i++) {
    const ref = onCpu[i]!;
    assert.ok(maxAbs(ref) > 0, `layer ${i} gradient is not trivially zero`);
    const err = maxDiff(onWasm[i]!, ref) / Math.max(1e-3, maxAbs(ref));
    assert.ok(err < 1e-4, `weight ${model.trainableWeights[i]!.originalName}: relative error ${err}`);
  }
  await tf.setBackend('wasm');
  model.dispose();
});

function randomImages(n: number, seed: string): LocalDataset {
  const rng = seedrandom(seed);
  return {
    x: Float32Array.from({ length: n * 784 }, () => rng()),
    y: Int32Array.from({ length: n }, () => Math.floor(rng() * 10)),
    inputShape: [28, 28, 1],
    numClasses: 10,
    count: n,
  };
}

test('CNN training: wasm and cpu take the same steps; speed printed', async () => {
  const opts = { learningRate: 0.05, batchSize: 16, epochs: 1, seed: 3 };
  const data = randomImages(48, 'speed');
  const small = smallCnn([4, 8], 32);
  const topology = JSON.stringify(small.toJSON(null, false));
  const start = Float32Array.from(
    small.getWeights().flatMap((w) => Array.from(w.dataSync())),
  );
  small.dispose();

  const outcomes: Record<string, Awaited<ReturnType<Trainer['train']>>> = {};
  for (const backend of ['wasm', 'cpu'] as const) {
    await tf.setBackend(backend);
    const trainer = new Trainer({ tf });
    await trainer.layoutFor(topology);
    outcomes[backend] = await trainer.train(topology, start, data, opts);
    trainer.dispose();
  }
  const w = outcomes['wasm']!;
  const c = outcomes['cpu']!;
  assert.equal(w.metrics.steps, 3);
  assert.ok(maxAbs(c.delta) > 0);
  const err = maxDiff(w.delta, c.delta) / maxAbs(c.delta);
  assert.ok(err < 1e-3, `wasm and cpu deltas differ by ${err} relative`);
  assert.ok(Math.abs(w.metrics.loss - c.metrics.loss) < 1e-4);

  // The full FedEraser CNN, on wasm only: the cpu backend needs minutes per batch of it.
  await tf.setBackend('wasm');
  const full = smallCnn([32, 64], 512);
  const fullTopology = JSON.stringify(full.toJSON(null, false));
  const fullStart = Float32Array.from(full.getWeights().flatMap((t) => Array.from(t.dataSync())));
  full.dispose();
  const trainer = new Trainer({ tf });
  await trainer.layoutFor(fullTopology);
  const fullOutcome = await trainer.train(fullTopology, fullStart, randomImages(96, 'full'), {
    ...opts,
    batchSize: 32,
  });
  trainer.dispose();
  assert.equal(fullOutcome.metrics.steps, 3);
  assert.ok(fullOutcome.delta.every(Number.isFinite));

  const perStep = (o: { trainMs: number; metrics: { steps: number } }) => (o.trainMs / o.metrics.steps).toFixed(0);
  console.log(
    `CNN (4/8 filters, dense 32) batch 16: wasm ${perStep(w)} ms/step, cpu ${perStep(c)} ms/step; ` +
      `FedEraser CNN (32/64, dense 512) batch 32 on wasm: ${perStep(fullOutcome)} ms/step`,
  );
});

/** Trains `rounds` consecutive single-epoch calls from `start`, returning each call's loss and the final weights. */
async function lossCurve(topology: string, start: Float32Array, data: LocalDataset, rounds: number) {
  const trainer = new Trainer({ tf });
  const losses: number[] = [];
  let w = start;
  try {
    for (let r = 0; r < rounds; r++) {
      const out = await trainer.train(topology, w, data, { learningRate: 0.05, batchSize: 16, epochs: 1, seed: r });
      losses.push(out.metrics.loss);
      w = w.map((v, i) => v + out.delta[i]!);
    }
  } finally {
    trainer.dispose();
  }
  return { losses, weights: w };
}

test('training on wasm with and without our kernels gives the same loss curve (CNN and MLP)', async () => {
  await tf.setBackend('wasm');
  const cnn = smallCnn([8, 16], 32);
  const mlp = tf.sequential({
    layers: [
      tf.layers.flatten({ inputShape: [28, 28, 1] }),
      tf.layers.dense({ units: 32, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: 5 }) }),
      tf.layers.dense({ units: 10, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: 6 }) }),
    ],
  });
  const data = randomImages(64, 'curve');
  for (const [label, model] of [['cnn', cnn], ['mlp', mlp]] as const) {
    const topology = JSON.stringify(model.toJSON(null, false));
    const start = Float32Array.from(model.getWeights().flatMap((t) => Array.from(t.dataSync())));
    model.dispose();
    const ours = await lossCurve(topology, start, data, 4);
    restoreWasmKernels(tf);
    let theirs: Awaited<ReturnType<typeof lossCurve>>;
    try {
      theirs = await lossCurve(topology, start, data, 4);
    } finally {
      registerWasmTrainingKernels(tf);
    }
    assert.ok(ours.losses[3]! < ours.losses[0]!, `${label}: the loss falls (${ours.losses.join(', ')})`);
    for (let r = 0; r < 4; r++) {
      assert.ok(Math.abs(ours.losses[r]! - theirs.losses[r]!) < 1e-4, `${label} round ${r}: ${ours.losses[r]} vs ${theirs.losses[r]}`);
    }
    const err = maxDiff(ours.weights, theirs.weights) / maxAbs(theirs.weights);
    assert.ok(err < 1e-4, `${label}: weights after 4 rounds differ by ${err} relative`);
  }
  assert.deepEqual(activeWasmTrainingKernels(tf), [...WASM_TRAINING_KERNELS]);
});
