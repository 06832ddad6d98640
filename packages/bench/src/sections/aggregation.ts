import { FedAvg } from '@fedunlearn/coordinator';
import { compare, summarise } from '../measure.js';
import { denseLayout, filled, round } from '../fixtures.js';
import type { SectionOptions, SectionResult } from '../section.js';

/**
 * Streaming FedAvg (the coordinator's real strategy: begin, add N updates, apply to the base) against the memory-bound
 * floor: a plain multiply-add loop over the same N updates into one preallocated Float32Array. The floor reads exactly
 * the bytes the aggregation must read; the aggregation additionally writes the new model (base plus the mean step).
 * Rounds follow each other as in the coordinator, the model a round replaced recycled as the next round's sum.
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

  // As the round engine uses it: each round's base is the previous round's model, and once a round commits the model
  // it replaced goes back to the strategy (the first base is the caller's own array, which recycle ignores).
  let model = base;
  const candidate = {
    run: () => {
      const agg = strategy.begin(layout);
      for (let k = 0; k < n; k++) agg.add(updates[k]!, counts[k]!);
      const out = agg.apply(model);
      strategy.recycle(model);
      model = out;
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
