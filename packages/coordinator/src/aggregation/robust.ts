import { l2Norm, type WeightLayout } from '@fedunlearn/protocol';
import { FedAvg } from './fedavg.js';
import type { Aggregation, AggregationStrategy, PartialAggregate } from './strategy.js';
import { mergeSum, WeightedSumPartial } from './weighted-sum-partial.js';

/**
 * Robust aggregation strategies, selectable instead of plain FedAvg (config `aggregation`).
 *
 * - `ClippedFedAvg`: FedAvg of the updates each scaled down to an L2 norm of at most `clipNorm` (norm clipping as in
 *   DP-FedAvg, McMahan et al. 2018, and "Can you really backdoor FL?", Sun et al. 2019). Streaming: one buffer.
 * - `TrimmedMean`: per coordinate, the mean of the values left after dropping the `trimFraction` largest and smallest
 *   (Yin et al. 2018, "Byzantine-robust distributed learning", coordinate-wise trimmed mean). Unweighted: example
 *   counts do not weigh in, so an inflated count buys nothing.
 * - `CoordinateMedian`: per coordinate, the median of the updates (Yin et al. 2018). Unweighted.
 *
 * The trimmed mean and the median need every update of a round at once: they keep a float32 copy of each (K x the
 * model's size; 1,000 updates of a 1M-parameter model hold 4 GB), so they suit rounds of tens of clients, not
 * thousands. They compute in float64.
 *
 * Clipped FedAvg is a sum, and merges from partial aggregates exactly as FedAvg does (its clip norm travels with the
 * partial: replicas clipping differently are refused). The trimmed mean and the median are not mergeable: an order
 * statistic of the union is not a function of the parts' order statistics (the median of medians is not the median),
 * and sending every update to the leader would undo what replicas are for.
 */

/** FedAvg over updates clipped to `clipNorm` (L2): an update above it is scaled by clipNorm / norm. */
export class ClippedFedAvg implements AggregationStrategy {
  readonly name = 'clipped-fedavg';
  readonly mergeable = true;

  constructor(readonly clipNorm: number) {
    if (!(clipNorm > 0)) throw new RangeError(`clipNorm must be positive, got ${clipNorm}`);
  }

  decodePartial(bytes: Uint8Array, layout: WeightLayout): PartialAggregate {
    return WeightedSumPartial.decode(bytes, this.name, [this.clipNorm], layout);
  }

  begin(layout: WeightLayout): Aggregation {
    const clip = this.clipNorm;
    const params = [clip];
    const sum = new Float64Array(layout.totalSize);
    let count = 0;
    let totalExamples = 0;
    let applied = false;
    return {
      get count() {
        return count;
      },
      get totalExamples() {
        return totalExamples;
      },
      add(update: Float32Array, numExamples: number) {
        guardAdd(applied, update, sum.length, numExamples);
        const norm = l2Norm(update);
        const w = numExamples * (norm > clip ? clip / norm : 1);
        for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! + w * update[i]!;
        count++;
        totalExamples += numExamples;
      },
      merge(partial: PartialAggregate) {
        if (applied) throw new Error('this aggregation was already applied');
        // Partials carry sums of updates their replica already clipped: merging adds, it never clips again.
        mergeSum(sum, count, partial, 'clipped-fedavg', params);
        count += partial.count;
        totalExamples += partial.totalExamples;
      },
      partial() {
        if (applied) throw new Error('this aggregation was already applied');
        applied = true;
        return new WeightedSumPartial('clipped-fedavg', params, count, totalExamples, count > 0 ? sum : null);
      },
      apply(base: Float32Array) {
        guardApply(applied, count, base, sum.length);
        applied = true;
        const out = new Float32Array(sum.length);
        for (let i = 0; i < sum.length; i++) out[i] = base[i]! + sum[i]! / totalExamples;
        return out;
      },
    };
  }
}

/** Keeps a copy of every update and reduces each coordinate's K values with `reduce` (given sorted, float64). */
abstract class CoordinateWise implements AggregationStrategy {
  abstract readonly name: string;
  readonly mergeable = false;
  protected abstract reduce(sorted: Float64Array): number;

  begin(layout: WeightLayout): Aggregation {
    const n = layout.totalSize;
    const held: Float32Array[] = [];
    let totalExamples = 0;
    let applied = false;
    return {
      get count() {
        return held.length;
      },
      get totalExamples() {
        return totalExamples;
      },
      add: (update: Float32Array, numExamples: number) => {
        guardAdd(applied, update, n, numExamples);
        // The caller reuses its buffer after add: a copy is the price of looking at every update at once.
        held.push(Float32Array.from(update));
        totalExamples += numExamples;
      },
      apply: (base: Float32Array) => {
        guardApply(applied, held.length, base, n);
        applied = true;
        const k = held.length;
        const column = new Float64Array(k);
        const out = new Float32Array(n);
        for (let i = 0; i < n; i++) {
          for (let j = 0; j < k; j++) column[j] = held[j]![i]!;
          column.sort();
          out[i] = base[i]! + this.reduce(column);
        }
        held.length = 0;
        return out;
      },
    };
  }
}

/** Coordinate-wise trimmed mean: drops floor(trimFraction x K) values at each end of every coordinate. */
export class TrimmedMean extends CoordinateWise {
  readonly name = 'trimmed-mean';

  constructor(readonly trimFraction: number) {
    super();
    if (!(trimFraction >= 0 && trimFraction < 0.5)) throw new RangeError(`trimFraction must be in [0, 0.5), got ${trimFraction}`);
  }

  protected reduce(sorted: Float64Array): number {
    const t = Math.floor(this.trimFraction * sorted.length);
    let s = 0;
    for (let j = t; j < sorted.length - t; j++) s += sorted[j]!;
    return s / (sorted.length - 2 * t);
  }
}

/** Coordinate-wise median (the mean of the two middle values for an even count). */
export class CoordinateMedian extends CoordinateWise {
  readonly name = 'median';

  protected reduce(sorted: Float64Array): number {
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  }
}

function guardAdd(applied: boolean, update: Float32Array, size: number, numExamples: number): void {
  if (applied) throw new Error('this aggregation was already applied');
  if (update.length !== size) throw new RangeError(`update of ${update.length} values, model has ${size}`);
  if (!(numExamples > 0)) throw new RangeError(`numExamples must be positive, got ${numExamples}`);
}

function guardApply(applied: boolean, count: number, base: Float32Array, size: number): void {
  if (applied) throw new Error('this aggregation was already applied');
  if (count === 0) throw new Error('no update to aggregate');
  if (base.length !== size) throw new RangeError(`base of ${base.length} values, model has ${size}`);
}

export const AGGREGATIONS = ['fedavg', 'clipped-fedavg', 'trimmed-mean', 'median'] as const;
export type AggregationName = (typeof AGGREGATIONS)[number];

export interface AggregationConfig {
  strategy: AggregationName;
  /** clipped-fedavg: the L2 norm each update is clipped to. */
  clipNorm?: number;
  /** trimmed-mean: the fraction of values dropped at each end of every coordinate (default 0.1). */
  trimFraction?: number;
}

/** The strategy a configuration names. Throws RangeError on a missing or out-of-range parameter. */
export function strategyOf(cfg: AggregationConfig): AggregationStrategy {
  switch (cfg.strategy) {
    case 'fedavg':
      return new FedAvg();
    case 'clipped-fedavg':
      if (cfg.clipNorm === undefined) throw new RangeError('clipped-fedavg needs clipNorm');
      return new ClippedFedAvg(cfg.clipNorm);
    case 'trimmed-mean':
      return new TrimmedMean(cfg.trimFraction ?? 0.1);
    case 'median':
      return new CoordinateMedian();
  }
}
