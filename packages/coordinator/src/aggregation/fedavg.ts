import type { WeightLayout } from '@fedunlearn/protocol';
import type { Aggregation, AggregationStrategy } from './strategy.js';

/** FedAvg (McMahan et al. 2017): the example-weighted mean of the updates, as a running weighted sum. */
export class FedAvg implements AggregationStrategy {
  readonly name = 'fedavg';

  begin(layout: WeightLayout): Aggregation {
    return new FedAvgAggregation(layout.totalSize);
  }
}

class FedAvgAggregation implements Aggregation {
  private readonly sum: Float32Array;
  count = 0;
  totalExamples = 0;
  private applied = false;

  constructor(size: number) {
    this.sum = new Float32Array(size);
  }

  add(update: Float32Array, numExamples: number): void {
    if (this.applied) throw new Error('this aggregation was already applied');
    if (update.length !== this.sum.length) throw new RangeError(`update of ${update.length} values, model has ${this.sum.length}`);
    if (!(numExamples > 0)) throw new RangeError(`numExamples must be positive, got ${numExamples}`);
    const sum = this.sum;
    const w = numExamples;
    for (let i = 0; i < sum.length; i++) sum[i]! += w * update[i]!;
    this.count++;
    this.totalExamples += numExamples;
  }

  apply(base: Float32Array): Float32Array {
    if (this.applied) throw new Error('this aggregation was already applied');
    if (this.count === 0) throw new Error('no update to aggregate');
    if (base.length !== this.sum.length) throw new RangeError(`base of ${base.length} values, model has ${this.sum.length}`);
    // The new model is written over the running sum, which is not needed afterwards: a round allocates one buffer of
    // the model's size, not two (at 40 MB a fresh buffer costs more in page faults than the arithmetic).
    const inv = 1 / this.totalExamples;
    const sum = this.sum;
    for (let i = 0; i < sum.length; i++) sum[i] = base[i]! + sum[i]! * inv;
    this.applied = true;
    return sum;
  }
}
