import { test } from 'node:test';
import assert from 'node:assert/strict';
import seedrandom from 'seedrandom';
import type { NamedAttrMap, Tensor, Variable } from '@tensorflow/tfjs';
import { BACKEND_ENV, initBackend } from './backend.js';
import { registerWasmTrainingKernels } from './wasm-conv2d-grad.js';
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

test('wasm is active and carries the training kernels tfjs leaves out', () => {
  assert.equal(name, 'wasm');
  assert.ok(tf.getKernel(tf.Conv2DBackpropFilter, 'wasm'));
  // Already there: registering again is a no-op.
  assert.deepEqual(registerWasmTrainingKernels(tf), []);
  // Kernels the CNN's backward pass also needs ship with the backend.
  for (const k of [tf.MaxPoolGrad, tf.Conv2DBackpropInput, tf.Step, tf.Conv2D, tf.MaxPool]) {
    assert.ok(tf.getKernel(k, 'wasm'), `${k} missing on wasm`);
  }
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
