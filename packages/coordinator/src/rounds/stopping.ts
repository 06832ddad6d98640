/**
 * When the round loop stops training. Flower's `num_rounds` and FedML's `comm_round` bound the number of rounds; an
 * early-stopping rule on the training loss (Keras' `patience` and `min_delta`) stops a federation that no longer
 * learns. After a stop the coordinator keeps serving its API, its clients and forget jobs; only new training rounds
 * stop (a restart with a higher limit resumes training).
 */
export interface StoppingRule {
  /** Training rounds the federation commits in all (every lineage; a forget job's replayed rounds do not count). 0: no limit. */
  maxRounds: number;
  /** Stop when the last `patienceRounds` rounds' training loss did not improve on the best loss before them by more
   *  than `minDelta`. 0: off. */
  patienceRounds: number;
  /** Smallest decrease of the training loss (the round's example-weighted mean `loss` metric) that counts as one. */
  minDelta: number;
}

export const NO_STOPPING: StoppingRule = { maxRounds: 0, patienceRounds: 0, minDelta: 0 };

/**
 * Why training should stop now, or null to go on. `trainingRounds`: training rounds committed so far (all lineages);
 * `losses`: the head lineage's rounds' training loss, oldest first (non-finite or absent ones are skipped).
 */
export function stopReason(rule: StoppingRule, trainingRounds: number, losses: readonly number[]): string | null {
  if (rule.maxRounds > 0 && trainingRounds >= rule.maxRounds) return `max rounds reached (${trainingRounds} of ${rule.maxRounds})`;
  if (rule.patienceRounds > 0) {
    const finite = losses.filter((l) => Number.isFinite(l));
    if (finite.length > rule.patienceRounds) {
      const before = Math.min(...finite.slice(0, -rule.patienceRounds));
      const recent = Math.min(...finite.slice(-rule.patienceRounds));
      if (recent > before - rule.minDelta) {
        return `training loss plateaued: no improvement above ${rule.minDelta} in the last ${rule.patienceRounds} rounds (best ${before.toPrecision(4)}, recent best ${recent.toPrecision(4)})`;
      }
    }
  }
  return null;
}
