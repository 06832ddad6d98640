/**
 * The removal sensitivity of one client in one round: how far the round's aggregated step moves when that client is
 * left out of it, ζ(t, c) = ||agg - agg_{-c}|| (L2 over the whole flat model, in weight units). SIFU (Fraboni et al.,
 * "Sequential Informed Federated Unlearning", AISTATS 2024, section 4: the per-round, per-client quantity the server
 * accumulates into its bound Ψ) needs one such number per client and round; unlearning/sifu.ts accumulates them.
 *
 * For a weighted mean agg = Σ_k p_k U_k with p_k = n_k / N (FedAvg), leaving c out gives
 * agg_{-c} = (agg - p_c U_c) / (1 - p_c), hence exactly
 *     agg - agg_{-c} = p_c / (1 - p_c) · (U_c - agg),   ||agg - agg_{-c}|| = p_c / (1 - p_c) · ||U_c - agg||.
 * The streaming aggregation does not keep U_c once it is folded in, and <U_c, agg> needs every pair of updates, so the
 * value kept is the upper bound from the triangle inequality, computable at commit from the norms already kept:
 *     ζ(t, c) <= p_c / (1 - p_c) · (||U_c|| + ||agg||).
 * Clipped FedAvg (each U_k scaled to at most the clip norm, divided by N as well) satisfies the same identity with the
 * clipped update, whose norm is at most ||U_c||: the same bound holds. A round whose only participant is c would not
 * have happened without it (the model stays as it was): ζ = ||agg|| = ||U_c||. The coordinate-wise median and trimmed
 * mean are not weighted means: no bound is kept for them (undefined), and SIFU cannot certify past such a round.
 */

/** Aggregations the bound above holds for, by `AggregationStrategy.name`. */
const WEIGHTED_MEANS = new Set(['fedavg', 'clipped-fedavg']);

export function boundsSensitivity(strategyName: string): boolean {
  return WEIGHTED_MEANS.has(strategyName);
}

/** The L2 norm of a whole update from its per-layer L2 norms (exact: the sum of the layers' squared norms). */
export function totalNorm(layerNorms: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < layerNorms.length; i++) s += layerNorms[i]! * layerNorms[i]!;
  return Math.sqrt(s);
}

/**
 * ζ(t, c) for every participant of a round, in their order: p_c / (1 - p_c) · (||U_c|| + ||agg||), with
 * p_c = numExamples_c / Σ numExamples, and ||U_c|| for a sole participant.
 *
 * @param participants each client's example count (> 0) and the L2 norm of its update as aggregated
 * @param aggNorm ||agg||, the L2 norm of the aggregated step (new model minus the model the round started from)
 * @throws RangeError on a non-positive example count or a negative or non-finite norm
 */
export function removalSensitivities(participants: readonly { numExamples: number; updateNorm: number }[], aggNorm: number): number[] {
  if (!(aggNorm >= 0 && Number.isFinite(aggNorm))) throw new RangeError(`aggregate norm must be finite and >= 0, got ${aggNorm}`);
  let total = 0;
  for (const p of participants) {
    if (!(p.numExamples > 0)) throw new RangeError(`numExamples must be positive, got ${p.numExamples}`);
    if (!(p.updateNorm >= 0 && Number.isFinite(p.updateNorm))) throw new RangeError(`update norm must be finite and >= 0, got ${p.updateNorm}`);
    total += p.numExamples;
  }
  if (participants.length === 1) return [participants[0]!.updateNorm];
  return participants.map((p) => {
    const share = p.numExamples / total;
    return (share / (1 - share)) * (p.updateNorm + aggNorm);
  });
}

/** ||after - before|| in float64 (the aggregated step a round applied). */
export function stepNorm(after: Float32Array, before: Float32Array): number {
  if (after.length !== before.length) throw new RangeError(`models of ${after.length} and ${before.length} values`);
  let s = 0;
  for (let i = 0; i < after.length; i++) {
    const d = after[i]! - before[i]!;
    s += d * d;
  }
  return Math.sqrt(s);
}

/**
 * `participants` with `sensitivity` set from their kept per-layer norms and the step the round applied
 * (`after` - `before`), for a round aggregated by a weighted mean (see above). Returns new objects.
 */
export function withSensitivities<P extends { numExamples: number; norms: ArrayLike<number> }>(participants: readonly P[], before: Float32Array, after: Float32Array): (P & { sensitivity: number })[] {
  const z = removalSensitivities(
    participants.map((p) => ({ numExamples: p.numExamples, updateNorm: totalNorm(p.norms) })),
    stepNorm(after, before),
  );
  return participants.map((p, i) => ({ ...p, sensitivity: z[i]! }));
}
