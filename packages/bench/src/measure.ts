/**
 * The ratio method: timings on a shared machine drift (other processes, thermal state, GC), so a figure is never an
 * absolute time but the ratio of a candidate to a baseline measured in the same run, interleaved A B A B ... so that
 * both see the same drift, repeated, medians quoted.
 */

export interface Workload {
  /** Runs once; may be async. Anything it returns is ignored. */
  run(): unknown;
}

export interface CompareOptions {
  /** Unmeasured pairs first (JIT, caches, allocator). */
  warmup: number;
  /** Measured pairs. */
  repeats: number;
  /** Clock in milliseconds; tests pass a fake one. */
  now?: () => number;
}

export interface Spread {
  median: number;
  min: number;
  max: number;
  /** Interquartile range: q1, q3 (linear interpolation). */
  q1: number;
  q3: number;
}

export interface Comparison {
  /** Candidate times, ms. */
  candidate: Spread;
  /** Baseline times, ms. */
  baseline: Spread;
  /** baseline median / candidate median: >= 1 means the candidate is as fast as the baseline or faster. */
  ratio: number;
  /** Spread of the per-pair ratios (baseline_i / candidate_i), which cancels drift between pairs. */
  pairRatios: Spread;
  repeats: number;
}

export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

export function spreadOf(values: readonly number[]): Spread {
  const s = [...values].sort((a, b) => a - b);
  return { median: quantile(s, 0.5), min: s[0] ?? NaN, max: s[s.length - 1] ?? NaN, q1: quantile(s, 0.25), q3: quantile(s, 0.75) };
}

async function timeOnce(w: Workload, now: () => number): Promise<number> {
  const t0 = now();
  const r = w.run();
  if (r instanceof Promise) await r;
  return now() - t0;
}

/** Runs candidate and baseline interleaved (A B A B ...): `warmup` unmeasured pairs, then `repeats` measured ones. */
export async function compare(candidate: Workload, baseline: Workload, opts: CompareOptions): Promise<Comparison> {
  if (!(opts.repeats >= 1) || !Number.isInteger(opts.repeats)) throw new RangeError(`repeats must be a positive integer, got ${opts.repeats}`);
  if (!(opts.warmup >= 0) || !Number.isInteger(opts.warmup)) throw new RangeError(`warmup must be a non-negative integer, got ${opts.warmup}`);
  const now = opts.now ?? (() => performance.now());
  for (let i = 0; i < opts.warmup; i++) {
    await timeOnce(candidate, now);
    await timeOnce(baseline, now);
  }
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < opts.repeats; i++) {
    a.push(await timeOnce(candidate, now));
    b.push(await timeOnce(baseline, now));
  }
  const candidateSpread = spreadOf(a);
  const baselineSpread = spreadOf(b);
  return {
    candidate: candidateSpread,
    baseline: baselineSpread,
    ratio: baselineSpread.median / candidateSpread.median,
    pairRatios: spreadOf(a.map((t, i) => b[i]! / t)),
    repeats: opts.repeats,
  };
}

/** A comparison rounded for the results file: ms to 3 decimals, ratios to 4. */
export function summarise(c: Comparison): Record<string, unknown> {
  const r = (x: number, d: number) => Math.round(x * 10 ** d) / 10 ** d;
  const ms = (s: Spread) => ({ median: r(s.median, 3), min: r(s.min, 3), max: r(s.max, 3), q1: r(s.q1, 3), q3: r(s.q3, 3) });
  return {
    ratio: r(c.ratio, 4),
    pairRatio: { median: r(c.pairRatios.median, 4), min: r(c.pairRatios.min, 4), max: r(c.pairRatios.max, 4), q1: r(c.pairRatios.q1, 4), q3: r(c.pairRatios.q3, 4) },
    candidateMs: ms(c.candidate),
    baselineMs: ms(c.baseline),
    repeats: c.repeats,
  };
}
