import type { WeightLayout } from '@fedunlearn/protocol';
import type { Aggregation, AggregationStrategy, PartialAggregate } from './strategy.js';
import { mergeSum, WeightedSumPartial } from './weighted-sum-partial.js';

/** Idle model-sized buffers kept for reuse: the model a round replaced and one spare (a retried round's). */
const KEEP_IDLE = 2;

/**
 * FedAvg (McMahan et al. 2017, Algorithm 1): the example-weighted mean of the updates, as a running weighted sum.
 *
 * Updates arrive in whatever order clients finish, so the sum is kept in float64: each term n_k·Δ_k (a float32 times
 * an integer below 2^29) is exact in float64, and a float64 sum of K such terms is exact, whatever the order, unless
 * their binary exponents span more than about 53 − 24 − log2(n_k·K) bits; then it differs between orders by at most
 * (K − 1)·2^-53·Σ|n_k·Δ_k|. The new model is rounded to float32 once, at the end, so two orders give bit-identical
 * models except where an element's exact value lies within that distance of a float32 rounding boundary (an error of
 * one float32 ulp; none in 40 random orders of 15 realistic updates × 200,000 values, fedavg.test.ts). A float32 sum,
 * as before, differed between orders in about a quarter of the elements.
 *
 * Mergeable: replicas of a cluster each fold their clients' updates and send the float64 sum (`partial`); the leader
 * adds the sums (`merge`). Exact sums added in any grouping are the same exact sum, so the merged model is
 * bit-identical to one aggregator's under the same condition as above, and within the same bound otherwise.
 */
export class FedAvg implements AggregationStrategy {
  readonly name = 'fedavg';
  readonly mergeable = true;
  /** Buffers this strategy returned from apply: only these are taken back by recycle. */
  private readonly issued = new WeakSet<Float32Array>();
  private readonly idle: Float32Array[] = [];
  /** float64 running sums of finished aggregations, reused by the next (a sum is not needed after apply). */
  private readonly idleSums: Float64Array[] = [];

  begin(layout: WeightLayout): Aggregation {
    const size = layout.totalSize;
    // A fresh 40 MB buffer costs more in first-touch page faults than the arithmetic of a round; a recycled one does not.
    const i = this.idle.findIndex((b) => b.length === size);
    const out = i >= 0 ? this.idle.splice(i, 1)[0]! : null;
    const j = this.idleSums.findIndex((b) => b.length === size);
    const sum = j >= 0 ? this.idleSums.splice(j, 1)[0]! : new Float64Array(size);
    return new FedAvgAggregation(sum, out, (o, s) => {
      this.issued.add(o);
      this.idleSums.push(s);
      if (this.idleSums.length > KEEP_IDLE) this.idleSums.shift();
    });
  }

  decodePartial(bytes: Uint8Array, layout: WeightLayout): PartialAggregate {
    return WeightedSumPartial.decode(bytes, this.name, [], layout);
  }

  recycle(buffer: Float32Array): void {
    // Taken back once: a second recycle of the same buffer must not put it in the pool twice (two aggregations would
    // then share a sum).
    if (!this.issued.delete(buffer)) return;
    this.idle.push(buffer);
    if (this.idle.length > KEEP_IDLE) this.idle.shift();
  }
}

class FedAvgAggregation implements Aggregation {
  count = 0;
  totalExamples = 0;
  private applied = false;

  /** `sum` and `out` may hold anything: the first add overwrites the sum and apply overwrites out, so recycled
   *  buffers need no clearing pass. `out` null: apply allocates the model. */
  constructor(
    private readonly sum: Float64Array,
    private readonly out: Float32Array | null,
    private readonly onApplied: (out: Float32Array, sum: Float64Array) => void,
  ) {}

  add(update: Float32Array, numExamples: number): void {
    if (this.applied) throw new Error('this aggregation was already applied');
    if (update.length !== this.sum.length) throw new RangeError(`update of ${update.length} values, model has ${this.sum.length}`);
    if (!(numExamples > 0)) throw new RangeError(`numExamples must be positive, got ${numExamples}`);
    const sum = this.sum;
    const n = sum.length;
    const w = numExamples;
    if (this.count === 0) {
      for (let i = 0; i < n; i++) sum[i] = w * update[i]!;
    } else {
      for (let i = 0; i < n; i++) sum[i] = sum[i]! + w * update[i]!;
    }
    this.count++;
    this.totalExamples += numExamples;
  }

  merge(partial: PartialAggregate): void {
    if (this.applied) throw new Error('this aggregation was already applied');
    mergeSum(this.sum, this.count, partial, 'fedavg', []);
    this.count += partial.count;
    this.totalExamples += partial.totalExamples;
  }

  partial(): PartialAggregate {
    if (this.applied) throw new Error('this aggregation was already applied');
    this.applied = true;
    // The sum is handed over (not recycled): the partial owns it until it is encoded.
    return new WeightedSumPartial('fedavg', [], this.count, this.totalExamples, this.count > 0 ? this.sum : null);
  }

  apply(base: Float32Array): Float32Array {
    if (this.applied) throw new Error('this aggregation was already applied');
    if (this.count === 0) throw new Error('no update to aggregate');
    if (base.length !== this.sum.length) throw new RangeError(`base of ${base.length} values, model has ${this.sum.length}`);
    const inv = 1 / this.totalExamples;
    const sum = this.sum;
    const n = sum.length;
    const out = this.out ?? new Float32Array(n);
    // Computed in float64, rounded to float32 once, on the store.
    for (let i = 0; i < n; i++) out[i] = base[i]! + sum[i]! * inv;
    this.applied = true;
    this.onApplied(out, sum);
    return out;
  }
}
