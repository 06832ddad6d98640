import type { WeightLayout } from '@fedunlearn/protocol';

/**
 * How client updates become one global step. An aggregation is streaming: updates are added one at a time as they
 * arrive and released by the caller, so the coordinator never holds all K updates of a round.
 */
export interface AggregationStrategy {
  readonly name: string;
  begin(layout: WeightLayout): Aggregation;
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
