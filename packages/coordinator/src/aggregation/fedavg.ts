import type { WeightLayout } from '@fedunlearn/protocol';
import type { Aggregation, AggregationStrategy } from './strategy.js';

/** Idle model-sized buffers kept for reuse: the model a round replaced and one spare (a retried round's). */
const KEEP_IDLE = 2;

/** FedAvg (McMahan et al. 2017): the example-weighted mean of the updates, as a running weighted sum. */
export class FedAvg implements AggregationStrategy {
  readonly name = 'fedavg';
  /** Buffers this strategy returned from apply: only these are taken back by recycle. */
  private readonly issued = new WeakSet<Float32Array>();
  private readonly idle: Float32Array[] = [];

  begin(layout: WeightLayout): Aggregation {
    const size = layout.totalSize;
    const i = this.idle.findIndex((b) => b.length === size);
    // A fresh 40 MB sum costs more in first-touch page faults than the arithmetic of a round; a recycled one does not.
    const sum = i >= 0 ? this.idle.splice(i, 1)[0]! : new Float32Array(size);
    return new FedAvgAggregation(sum, (out) => this.issued.add(out));
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

  /** `sum` may hold anything: the first add overwrites it, so a recycled buffer needs no clearing pass. */
  constructor(
    private readonly sum: Float32Array,
    private readonly onApplied: (out: Float32Array) => void,
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

  apply(base: Float32Array): Float32Array {
    if (this.applied) throw new Error('this aggregation was already applied');
    if (this.count === 0) throw new Error('no update to aggregate');
    if (base.length !== this.sum.length) throw new RangeError(`base of ${base.length} values, model has ${this.sum.length}`);
    // The new model is written over the running sum, which is not needed afterwards: a round needs one buffer of the
    // model's size, not two.
    const inv = 1 / this.totalExamples;
    const sum = this.sum;
    const n = sum.length;
    for (let i = 0; i < n; i++) sum[i] = base[i]! + sum[i]! * inv;
    this.applied = true;
    this.onApplied(sum);
    return sum;
  }
}
