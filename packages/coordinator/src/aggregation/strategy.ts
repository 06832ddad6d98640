import type { WeightLayout } from '@fedunlearn/protocol';

/**
 * How client updates become one global step. An aggregation is streaming: updates are added one at a time as they
 * arrive and released by the caller, so the coordinator never holds all K updates of a round.
 */
export interface AggregationStrategy {
  readonly name: string;
  begin(layout: WeightLayout): Aggregation;
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
}
