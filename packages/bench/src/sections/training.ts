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
import { spreadOf } from '../measure.js';
import { round } from '../fixtures.js';
import type { SectionOptions, SectionResult } from '../section.js';

/** The batch size the simulations train with by default. */
const BATCH = 32;
const MATMUL_N = 1024;

/**
 * Local training against the machine's floor: examples/s of the SDK's Trainer per built-in architecture (MNIST
 * shapes) on the backend the SDK picks, turned into a FLOP rate with the architecture's multiply-adds per example, and
 * divided by the same backend's GFLOP/s on a 1024x1024 float32 matmul (the fastest thing it does), interleaved. On
 * wasm, each architecture is also trained with the backend's own kernels in place of the SDK's (wasm-kernels.ts) for
 * the speed-up they bring; the other figures are measured with them, as clients run.
 */
export async function run(opts: SectionOptions): Promise<SectionResult> {
  const { tf, name: backend } = await initBackend();
  const out: Record<string, unknown> = { backend, batchSize: BATCH };
  const floors: number[] = [];
  for (const arch of ['mlp', 'cnn'] as const) {
    const r = await measureArchitecture(tf, backend, arch, opts);
    floors.push(...r.floorGflops);
    out[arch] = r.result;
  }
  out.matmulFloorGflops = round(spreadOf(floors).median, 2);
  return out;
}

/** A 1024x1024 float32 matmul on the active backend; returns a function timing one (ms), and one to free it. */
function matmulFloor(tf: Tf): { once: () => Promise<number>; dispose: () => void } {
  const a = tf.randomUniform([MATMUL_N, MATMUL_N], -1, 1, 'float32', 1);
  const b = tf.randomUniform([MATMUL_N, MATMUL_N], -1, 1, 'float32', 2);
  return {
    once: async () => {
      const t0 = performance.now();
      const c = tf.matMul(a, b);
      await c.data();
      const ms = performance.now() - t0;
      c.dispose();
      return ms;
    },
    dispose: () => {
      a.dispose();
      b.dispose();
    },
  };
}

const gflopsOf = (flops: number, ms: number) => flops / (ms / 1000) / 1e9;

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

/**
 * Trains one architecture, interleaved with the floor (and on wasm with the backend's own kernels): each repeat times
 * a training call with the SDK's kernels, one without them, and three matmuls, so that every figure sees the same
 * drift of this shared machine; ratios are medians of per-repeat ratios.
 */
async function measureArchitecture(tf: Tf, backend: string, arch: ArchitectureName, opts: SectionOptions): Promise<{ result: Record<string, unknown>; floorGflops: number[] }> {
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
  const trainMs = async () => {
    const t0 = performance.now();
    await trainer.train(def.topologyJson, def.initial.values, data, { learningRate: 0.01, batchSize: BATCH, epochs: 1, seed: seed++ });
    return performance.now() - t0;
  };
  const floor = matmulFloor(tf);
  const onWasm = backend === 'wasm';
  const repeats = opts.quick ? 2 : arch === 'cnn' ? 5 : 7;
  const withMs: number[] = [];
  const withoutMs: number[] = [];
  const floorMs: number[] = [];
  const ratios: number[] = [];
  const speedups: number[] = [];
  try {
    for (let i = 0; i < repeats + 1; i++) {
      if (onWasm) registerWasmTrainingKernels(tf);
      const w = await trainMs();
      let wo = NaN;
      if (onWasm) {
        restoreWasmKernels(tf);
        wo = await trainMs();
        registerWasmTrainingKernels(tf);
      }
      const f = Math.min(await floor.once(), await floor.once(), await floor.once());
      if (i === 0) continue; // warm-up: model build, XNNPACK packing, first-touch pages
      withMs.push(w);
      withoutMs.push(wo);
      floorMs.push(f);
      ratios.push(gflopsOf(examples * flops, w) / gflopsOf(2 * MATMUL_N ** 3, f));
      speedups.push(wo / w);
    }
    const withSpread = spreadOf(withMs);
    const examplesPerSecond = examples / (withSpread.median / 1000);
    const floorGflops = floorMs.map((ms) => gflopsOf(2 * MATMUL_N ** 3, ms));
    const result: Record<string, unknown> = {
      examplesPerSecond: round(examplesPerSecond, 1),
      flopsPerExample: Math.round(flops),
      gflops: round((examplesPerSecond * flops) / 1e9, 2),
      ratioToMatmulFloor: round(spreadOf(ratios).median, 4),
      matmulFloorGflops: round(spreadOf(floorGflops).median, 2),
      examplesPerCall: examples,
      parameters: def.initial.layout.totalSize,
      detail: { trainMs: spreadOf(withMs), floorMs: spreadOf(floorMs), ratios: spreadOf(ratios), repeats },
    };
    if (onWasm) {
      const speedup = spreadOf(speedups);
      result.kernels = {
        // time with the backend's own kernels / time with ours, per repeat, median: the speed-up the kernels bring.
        speedup: round(speedup.median, 3),
        examplesPerSecondWithout: round(examples / (spreadOf(withoutMs).median / 1000), 1),
        detail: { ours: activeWasmTrainingKernels(tf), withoutMs: spreadOf(withoutMs), speedups: speedup },
      };
    }
    opts.log(
      `training: ${arch} ${examplesPerSecond.toFixed(0)} examples/s x ${(flops / 1e6).toFixed(2)} MFLOP = ${((examplesPerSecond * flops) / 1e9).toFixed(1)} GFLOP/s, ` +
        `${spreadOf(ratios).median.toFixed(2)} of the ${MATMUL_N}x${MATMUL_N} matmul (${spreadOf(floorGflops).median.toFixed(1)} GFLOP/s)` +
        (onWasm ? `; x${spreadOf(speedups).median.toFixed(2)} over the backend's own kernels (${(examples / (spreadOf(withoutMs).median / 1000)).toFixed(0)} examples/s)` : ''),
    );
    return { result, floorGflops };
  } finally {
    if (onWasm) registerWasmTrainingKernels(tf);
    floor.dispose();
    trainer.dispose();
  }
}
