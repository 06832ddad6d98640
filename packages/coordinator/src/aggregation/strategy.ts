import type { WeightLayout } from '@fedunlearn/protocol';

/**
 * How client updates become one global step. An aggregation is streaming: updates are added one at a time as they
 * arrive and released by the caller, so the coordinator never holds all K updates of a round.
 */
export interface AggregationStrategy {
  readonly name: string;
  /**
   * Whether aggregations of this strategy merge exactly from partial aggregates: several replicas each fold their own
   * clients' updates (`Aggregation.partial`), and one merges the partials (`Aggregation.merge`) into the same model one
   * aggregator would have made. True for sums (FedAvg, clipped FedAvg); false for the coordinate-wise median and
   * trimmed mean, which need every update of a round in one place.
   */
  readonly mergeable: boolean;
  begin(layout: WeightLayout): Aggregation;
  /**
   * Reads the bytes of `PartialAggregate.encode` for `Aggregation.merge` (mergeable strategies only). Throws RangeError
   * on bytes of another strategy or other parameters, of another layout, truncated or damaged.
   */
  decodePartial?(bytes: Uint8Array, layout: WeightLayout): PartialAggregate;
  /**
   * Hands back a buffer that an earlier `apply` of this strategy returned, once nothing references it any more (the
   * round engine gives back the model a committed round replaced, and the model of a round that was not committed):
   * a later `begin` may write over it. A buffer this strategy did not return is ignored, so a caller's own arrays are
   * never written. Optional: a strategy without it allocates per aggregation.
   */
  recycle?(buffer: Float32Array): void;
}

export interface Aggregation {
  /** Folds one client's update (a flat delta) in; the caller may reuse the buffer afterwards. */
  add(update: Float32Array, numExamples: number): void;
  readonly count: number;
  readonly totalExamples: number;
  /** The new global model: `base` plus the aggregated step, as a buffer `base` does not share. Ends the aggregation:
   *  add and apply throw afterwards. Throws if nothing was added. */
  apply(base: Float32Array): Float32Array;
  /**
   * Mergeable strategies: ends the aggregation (add, merge, apply and partial throw afterwards) and returns what was
   * folded, to be sent to the aggregation that applies (an empty partial, count 0, is valid: a replica none of whose
   * clients answered).
   */
  partial?(): PartialAggregate;
  /**
   * Mergeable strategies: folds in a partial of the same strategy, parameters and layout; afterwards this aggregation
   * is as if it had added that partial's updates itself (count and totalExamples included). Throws RangeError on a
   * partial of another strategy, parameters or layout.
   */
  merge?(partial: PartialAggregate): void;
}

/** What a replica's aggregation folded, as it travels to the leader: `encode()` gives bytes `decodePartial` reads. */
export interface PartialAggregate {
  /** The strategy's name. */
  readonly strategy: string;
  /** Updates folded in. */
  readonly count: number;
  /** Their example counts, summed. */
  readonly totalExamples: number;
  encode(): Uint8Array;
}
