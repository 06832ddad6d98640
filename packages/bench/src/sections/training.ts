import {
  activeWasmTrainingKernels,
  initBackend,
  registerWasmTrainingKernels,
  restoreWasmKernels,
  Trainer,
  type LocalDataset,
  type Tf,
} from '@fedunlearn/client';
import { buildArchitecture, definitionOf, type ArchitectureName } from '@fedunlearn/models';
import { compare, spreadOf, summarise } from '../measure.js';
import { round } from '../fixtures.js';
import type { SectionOptions, SectionResult } from '../section.js';

/** The batch size the simulations train with by default. */
const BATCH = 32;
const MATMUL_N = 1024;

/**
 * Local training against the machine's floor: examples/s of the SDK's Trainer per built-in architecture (MNIST
 * shapes) on the backend the SDK picks, turned into a FLOP rate with the architecture's multiply-adds per example, and
 * divided by the same backend's GFLOP/s on a 1024x1024 float32 matmul (the fastest thing it does). On wasm, each
 * architecture is also trained with and without the SDK's training kernels (wasm-kernels.ts), interleaved, for the
 * speed-up they bring; the other rows are measured with them, as clients run.
 */
export async function run(opts: SectionOptions): Promise<SectionResult> {
  const { tf, name: backend } = await initBackend();
  const floor = await matmulFloor(tf, opts.quick ? 3 : 7);
  opts.log(`training: backend ${backend}, ${MATMUL_N}x${MATMUL_N} matmul ${floor.gflops.toFixed(1)} GFLOP/s`);
  const out: Record<string, unknown> = { backend, matmulFloorGflops: round(floor.gflops, 2), batchSize: BATCH };
  for (const arch of ['mlp', 'cnn'] as const) {
    out[arch] = await measureArchitecture(tf, backend, arch, opts, floor.gflops);
  }
  out.matmulFloor = { n: MATMUL_N, ms: floor.ms };
  return out;
}

async function matmulFloor(tf: Tf, repeats: number): Promise<{ gflops: number; ms: Record<string, number> }> {
  const a = tf.randomUniform([MATMUL_N, MATMUL_N], -1, 1, 'float32', 1);
  const b = tf.randomUniform([MATMUL_N, MATMUL_N], -1, 1, 'float32', 2);
  const times: number[] = [];
  try {
    for (let i = 0; i < repeats + 1; i++) {
      const t0 = performance.now();
      const c = tf.matMul(a, b);
      await c.data();
      const ms = performance.now() - t0;
      c.dispose();
      if (i > 0) times.push(ms); // the first run pays for XNNPACK's weight packing and page faults
    }
  } finally {
    a.dispose();
    b.dispose();
  }
  const s = spreadOf(times);
  return { gflops: (2 * MATMUL_N ** 3) / (s.median / 1000) / 1e9, ms: { median: round(s.median, 2), min: round(s.min, 2), max: round(s.max, 2) } };
}

/**
 * Floating-point operations one training example costs, forward and backward, counted as 2 per multiply-add of the
 * convolution and dense layers (bias, activations, pooling and the loss are element-wise, under 1 % here):
 * forward Σ MACs, weight gradients the same again, input gradients the same for every layer but the first, whose
 * input is data (tfjs computes no gradient for it). For the MNIST CNN: 2 x (12.27M + 12.27M + 11.65M) = 72.4 MFLOP.
 */
export function trainingFlopsPerExample(model: { layers: { getClassName(): string; outputShape: unknown; getConfig(): Record<string, unknown>; countParams(): number; weights: { shape: (number | null)[] }[] }[] }): number {
  let macs = 0;
  let first = true;
  for (const layer of model.layers) {
    const kind = layer.getClassName();
    if (kind !== 'Conv2D' && kind !== 'Dense') continue;
    const kernel = layer.weights[0]!.shape as number[];
    let forward: number;
    if (kind === 'Dense') forward = kernel[0]! * kernel[1]!;
    else {
      const out = layer.outputShape as number[]; // [null, h, w, co]
      forward = out[1]! * out[2]! * kernel[0]! * kernel[1]! * kernel[2]! * kernel[3]!;
    }
    macs += forward * (first ? 2 : 3);
    first = false;
  }
  return 2 * macs;
}

function randomImages(tf: Tf, n: number, inputShape: number[]): LocalDataset {
  const size = inputShape.reduce((a, b) => a * b, 1);
  const x = tf.tidy(() => tf.randomUniform([n * size], 0, 1, 'float32', 7).dataSync() as Float32Array);
  const y = Int32Array.from({ length: n }, (_, i) => (i * 7) % 10);
  return { x: Float32Array.from(x), y, inputShape, numClasses: 10, count: n };
}

async function measureArchitecture(tf: Tf, backend: string, arch: ArchitectureName, opts: SectionOptions, floorGflops: number): Promise<Record<string, unknown>> {
  const inputShape = arch === 'cnn' ? [28, 28, 1] : [784];
  const model = buildArchitecture(arch, { inputShape, numClasses: 10, seed: 1 });
  const flops = trainingFlopsPerExample(model as never);
  const def = definitionOf(model);
  model.dispose();
  // Whole batches: a call trains `examples` examples, as a client with that many examples does in one epoch.
  const examples = arch === 'cnn' ? (opts.quick ? 64 : 320) : opts.quick ? 512 : 4096;
  const data = randomImages(tf, examples, inputShape);
  const trainer = new Trainer({ tf });
  await trainer.layoutFor(def.topologyJson);
  let seed = 0;
  const trainOnce = async () => {
    await trainer.train(def.topologyJson, def.initial.values, data, { learningRate: 0.01, batchSize: BATCH, epochs: 1, seed: seed++ });
  };
  const repeats = opts.quick ? 2 : arch === 'cnn' ? 5 : 7;
  try {
    const onWasm = backend === 'wasm';
    const withKernels = { run: async () => { registerWasmTrainingKernels(tf); await trainOnce(); } };
    const without = { run: async () => { restoreWasmKernels(tf); await trainOnce(); } };
    const c = onWasm
      ? await compare(withKernels, without, { warmup: 1, repeats })
      : await compare({ run: trainOnce }, { run: trainOnce }, { warmup: 1, repeats });
    if (onWasm) registerWasmTrainingKernels(tf);
    const examplesPerSecond = examples / (c.candidate.median / 1000);
    const gflops = (examplesPerSecond * flops) / 1e9;
    const result: Record<string, unknown> = {
      examplesPerSecond: round(examplesPerSecond, 1),
      flopsPerExample: Math.round(flops),
      gflops: round(gflops, 2),
      ratioToMatmulFloor: round(gflops / floorGflops, 4),
      examplesPerCall: examples,
      parameters: def.initial.layout.totalSize,
    };
    if (onWasm) {
      result.kernels = {
        ours: activeWasmTrainingKernels(tf),
        // baseline (the backend's own kernels) time / time with ours: the speed-up the kernels bring.
        speedup: round(c.ratio, 3),
        examplesPerSecondWithout: round(examples / (c.baseline.median / 1000), 1),
        detail: summarise(c),
      };
      opts.log(`training: ${arch} ${examplesPerSecond.toFixed(0)} examples/s (${(gflops).toFixed(1)} GFLOP/s, ${(gflops / floorGflops).toFixed(2)} of the floor); without our kernels ${(examples / (c.baseline.median / 1000)).toFixed(0)} examples/s (x${c.ratio.toFixed(2)})`);
    } else {
      opts.log(`training: ${arch} ${examplesPerSecond.toFixed(0)} examples/s (${(gflops).toFixed(1)} GFLOP/s, ${(gflops / floorGflops).toFixed(2)} of the floor)`);
    }
    return result;
  } finally {
    registerWasmTrainingKernels(tf);
    trainer.dispose();
  }
}
