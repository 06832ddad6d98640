import { FedAvg } from '@fedunlearn/coordinator';
import { compare, summarise } from '../measure.js';
import { denseLayout, filled, round } from '../fixtures.js';
import type { SectionOptions, SectionResult } from '../section.js';

/**
 * Streaming FedAvg (the coordinator's real strategy: begin, add N updates, apply to the base) against the memory-bound
 * floor: a plain multiply-add loop over the same N updates into one preallocated Float32Array. The floor reads exactly
 * the bytes the aggregation must read; the aggregation additionally allocates its sum and writes the new model.
 */
export async function run(opts: SectionOptions): Promise<SectionResult> {
  const params = opts.quick ? 2_000_000 : 10_000_000;
  const n = opts.quick ? 8 : 10;
  const layout = denseLayout(params);
  const P = layout.totalSize;
  opts.log(`aggregation: ${n} updates of ${P} float32 values`);
  const updates = Array.from({ length: n }, (_, k) => filled(P, k + 1));
  const counts = Array.from({ length: n }, (_, k) => 100 + 37 * k);
  const base = filled(P, 999, 1);
  const strategy = new FedAvg();
  let sink = 0;

  const candidate = {
    run: () => {
      const agg = strategy.begin(layout);
      for (let k = 0; k < n; k++) agg.add(updates[k]!, counts[k]!);
      const out = agg.apply(base);
      sink += out[P - 1]!;
    },
  };
  const acc = new Float32Array(P);
  const floor = {
    run: () => {
      acc.fill(0);
      for (let k = 0; k < n; k++) {
        const u = updates[k]!;
        const w = counts[k]!;
        for (let i = 0; i < P; i++) acc[i] = acc[i]! + w * u[i]!;
      }
      sink += acc[P - 1]!;
    },
  };
  const c = await compare(candidate, floor, { warmup: opts.quick ? 1 : 2, repeats: opts.quick ? 5 : 15 });
  if (!Number.isFinite(sink)) throw new Error('aggregation produced a non-finite value');
  const bytes = n * P * 4;
  return {
    ratioToFloor: round(c.ratio, 4),
    updates: n,
    params: P,
    candidateGBps: round(bytes / (c.candidate.median / 1000) / 1e9, 3),
    floorGBps: round(bytes / (c.baseline.median / 1000) / 1e9, 3),
    detail: summarise(c),
  };
}
