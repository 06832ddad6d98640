import seedrandom from 'seedrandom';
import { HistoryError, type RoundRecord } from '../history/store.js';
import type { HyperParameters } from '../rounds/dispatcher.js';
import { TaskKind } from '../rounds/dispatcher.js';
import { addCost, zeroCost } from '../rounds/federated-step.js';
import { remaining, type MethodContext, type MethodParams, type MethodResult, type ReplayedRound, SIFU_DEFAULT_PARAMS, type SifuCertificate, type UnlearningMethod } from './method.js';

/**
 * SIFU: Sequential Informed Federated Unlearning (Fraboni, Van Waerebeke, Scaman, Vidal, Kameni, Lorenzi, AISTATS
 * 2024, arXiv 2211.11656). During training the coordinator keeps, per client c and round t, ζ(t, c) >= ||agg_t -
 * agg_t,{-c}|| (rounds/sensitivity.ts). To forget a set of clients W:
 *
 * 1. Bound. Over the head lineage, Ψ(0, c) = 0 and Ψ(n+1, c) = B_n Ψ(n, c) + ζ(n, c) (ζ = 0 when c did not take part
 *    in round n). If the map a round applies to the global model (every participant's local training, then the
 *    weighted mean) is B_n-Lipschitz, and the two runs share their randomness (client selection and each client's
 *    batch order, which are seeded here), then by induction ||θ^n - θ^n_{-c}|| <= Ψ(n, c), where θ^n_{-c} is the model
 *    the same training reaches without c: the step without c moves a model by at most ζ, and a B_n-Lipschitz map moves
 *    two models apart by at most B_n times their distance. B_n is `lipschitz` (default 1), or (1 + η L)^K with
 *    `smoothness` L, the learning rate η and K the most local steps a participant of round n took (K steps of gradient
 *    descent on an L-smooth loss are (1 + ηL)^K-Lipschitz, without convexity). A round without participants (the
 *    perturbation below) applies the identity: B = 1, ζ = 0. A participant without a kept ζ (rounds from before it
 *    was kept, median and trimmed-mean rounds) makes Ψ infinite from that round on: nothing past it can be certified.
 *    The paper's theorem text was not available offline: this bound is derived here from first principles. It has the
 *    shape of the paper's Ψ: its authors' public experiment code accumulates, per client, (1 - η λ)^K Ψ + p/(1-p)
 *    ||θ_c - θ_agg|| (λ a regularisation, 0 by default, so B = 1), which is our recursion with B = (1 - η λ)^K
 *    (pass it as `lipschitz`) and with the exact removal distance where we keep its upper bound.
 * 2. Budget. The Gaussian mechanism (Dwork & Roth 2014, Theorem A.1): for ε in (0, 1), releasing θ^n + N(0, σ² I)
 *    is (ε, δ)-indistinguishable from releasing θ^n_{-c} + N(0, σ² I) when Ψ(n, c) <= Ψ* = ε σ / sqrt(2 ln(1.25 / δ)).
 * 3. Roll back to the latest round n whose model keeps max_{c in W} Ψ(n, c) <= Ψ* and still has its weights (a model
 *    the retention pruned is passed over for the latest kept one before it, which the check accepts on its own
 *    merits; the model before t0, Ψ = 0, is always kept: model-retention.ts), add N(0, σ² I) (seeded: the same
 *    history and seed give the same noise), unless Ψ(n) = 0 (an exact rollback needs no noise).
 * 4. Continue training with the remaining clients from there: the original rounds after n, each with its remaining
 *    participants (at least one round, so that the noise is trained off). Everything after the noise is a function of
 *    the noisy model and the remaining clients' data, so the guarantee holds for the final model (post-processing).
 *
 * Sequential requests: the new lineage keeps rounds 1..n (the forgotten clients' rows purged, the others' ζ kept),
 * the perturbation as a round without participants, then the continued rounds, whose ζ are kept as they commit. A
 * later request accumulates Ψ over that lineage, through the perturbation (coupled noise: the same noise is added in
 * both runs, so the distance carries over unchanged), which bounds the distance to the run without its clients; the
 * models between an earlier SIFU job's t0 and its perturbation carry the earlier clients' contribution without noise
 * and are never rolled back to.
 */
export class Sifu implements UnlearningMethod {
  readonly name = 'sifu' as const;
  readonly exact = false;

  async run(ctx: MethodContext, params: MethodParams): Promise<MethodResult> {
    const rounds = ctx.rounds;
    if (rounds.length === 0) throw new Error('the history holds no round');
    const c = sifuConstants(params);
    const multiplier = gaussianMultiplier(c.epsilon, c.delta);
    const budget = c.sigma / multiplier;
    const forgotten = [...ctx.forgotten].sort();
    const bounds = accumulateBounds(rounds, forgotten, c, ctx.hyper);
    const worst = bounds.map((b) => Math.max(0, ...forgotten.map((id) => b.get(id) ?? 0)));
    const blocked = unreleasedPrefixes(rounds);
    const notes: string[] = [];
    // Candidates, latest first: the model after j rounds, from the head down to the model before t0 (Ψ = 0 there).
    let chosen: { j: number; weights: Float32Array; version: string } | null = null;
    for (const j of rollbackCandidates(worst, budget, ctx.firstContribution)) {
      if (blocked(j)) continue;
      const version = j === 0 ? rounds[0]!.modelBefore : rounds[j - 1]!.modelAfter;
      if (!version) continue;
      try {
        chosen = { j, weights: await ctx.readModel(version), version };
        break;
      } catch (e) {
        if (!(e instanceof HistoryError)) throw e;
        notes.push(`the model after round ${j === 0 ? 0 : rounds[j - 1]!.round} keeps the budget but its weights are gone (${e.name}); an earlier one is used`);
      }
    }
    if (!chosen) throw new Error(`no model at or before round ${rounds[ctx.firstContribution]!.round - 1} has its weights: SIFU cannot roll back`);
    const { j } = chosen;
    const bound = worst[j]!;
    const rollbackRound = j === 0 ? 0 : rounds[j - 1]!.round;
    const headBound = worst[rounds.length]!;
    const noisy = bound > 0;
    const done: ReplayedRound[] = [...(ctx.resume?.rounds ?? [])];
    let cost = ctx.resume?.cost ?? zeroCost();
    let model: Float32Array;
    if (done.length > 0) model = done[done.length - 1]!.weights;
    else if (noisy) {
      model = addGaussianNoise(chosen.weights, c.sigma, noiseKey(ctx.seed, rounds.length, rollbackRound, forgotten));
      const now = Date.now();
      done.push({
        sourceRound: rollbackRound,
        roundId: ctx.newRoundId(),
        participants: [],
        missing: [],
        uncalibrated: [],
        metrics: { [SIFU_NOISE_METRIC]: c.sigma, [SIFU_SEGMENT_METRIC]: rounds[ctx.firstContribution]!.round },
        startedAt: now,
        closedAt: now,
        weights: model,
      });
      await ctx.checkpoint(done, cost);
    } else model = chosen.weights;
    // The rounds to continue with: the original schedule after the rollback, or the last round again when the head
    // itself keeps the budget (the noise is still trained off).
    // (An earlier job's perturbation, a round without participants, is not a round to train again.)
    const trained = rounds.slice(j).filter((r) => r.participants.length > 0);
    const last = rounds.findLast((r) => r.participants.length > 0)!;
    const schedule = trained.length > 0 ? trained : [last];
    const offset = noisy ? 1 : 0;
    for (let k = done.length - offset; k < schedule.length; k++) {
      const src = schedule[k]!;
      const clients = remaining(src.participants, ctx.forgotten);
      ctx.progress(k, schedule.length, `continuing with round ${src.round}'s ${clients.length} remaining clients`);
      const startedAt = Date.now();
      const res = await ctx.step({
        clientIds: clients,
        model: { layout: ctx.layout, values: model },
        round: src.round,
        kind: TaskKind.TRAIN,
        seed: ctx.seed * 1_000_003 + src.round * 101 + 1,
      });
      cost = addCost(cost, res.cost);
      if (!res.weights) notes.push(`round ${src.round}: no client answered; the round was skipped`);
      model = res.weights ?? model;
      done.push({ sourceRound: src.round, roundId: res.roundId, participants: res.participants, missing: res.missing, uncalibrated: [], metrics: res.metrics, startedAt, closedAt: Date.now(), weights: model });
      await ctx.checkpoint(done, cost);
    }
    const certificate: SifuCertificate = {
      epsilon: c.epsilon,
      delta: c.delta,
      sigma: noisy ? c.sigma : 0,
      noiseMultiplier: multiplier,
      budget,
      rollbackRound,
      rollbackModel: chosen.version,
      bound,
      boundByClient: Object.fromEntries(forgotten.map((id) => [id, bounds[j]!.get(id) ?? 0])),
      headBound,
      sigmaToKeepHead: Number.isFinite(headBound) ? headBound * multiplier : null,
      constants: c.smoothness !== undefined ? { smoothness: c.smoothness, learningRate: ctx.hyper.learningRate } : { lipschitz: c.lipschitz },
      assumptions: assumptions(c, noisy),
    };
    notes.unshift(
      noisy
        ? `rolled back to the model after round ${rollbackRound} (bound ${fmt(bound)} <= budget ${fmt(budget)}), added Gaussian noise (sigma ${c.sigma}), then continued from round ${schedule[0]!.round}`
        : `rolled back to the model after round ${rollbackRound}, which no forgotten client shaped (bound 0): no noise needed`,
    );
    return { weights: model, kept: j, startedFrom: chosen.version, rounds: done, cost, notes, certificate };
  }
}

/** The round metric of a SIFU perturbation (a round without participants): the noise's standard deviation. */
export const SIFU_NOISE_METRIC = 'sifuNoiseSigma';
/** The round metric of a SIFU perturbation: the first round (t0) of the rounds before it that carry a forgotten
 *  client's contribution without noise (their models are never rolled back to). */
export const SIFU_SEGMENT_METRIC = 'sifuSegmentStart';


export interface SifuConstants {
  epsilon: number;
  delta: number;
  sigma: number;
  lipschitz: number;
  smoothness?: number;
}

/** The constants a SIFU job applies: `params` with the defaults (method.ts SIFU_DEFAULT_PARAMS) filled in. */
export function sifuConstants(params: MethodParams): SifuConstants {
  const out: SifuConstants = {
    epsilon: params.epsilon ?? SIFU_DEFAULT_PARAMS.epsilon,
    delta: params.delta ?? SIFU_DEFAULT_PARAMS.delta,
    sigma: params.sigma ?? SIFU_DEFAULT_PARAMS.sigma,
    lipschitz: params.lipschitz ?? SIFU_DEFAULT_PARAMS.lipschitz,
  };
  if (params.smoothness !== undefined) out.smoothness = params.smoothness;
  return out;
}

/**
 * sqrt(2 ln(1.25 / δ)) / ε: the Gaussian mechanism's σ per unit of L2 sensitivity (Dwork & Roth 2014, Theorem A.1,
 * which holds for ε in (0, 1)). σ = bound · this keeps (ε, δ); the budget for a given σ is σ / this.
 * @throws RangeError unless 0 < ε < 1 and 0 < δ < 1
 */
export function gaussianMultiplier(epsilon: number, delta: number): number {
  if (!(epsilon > 0 && epsilon < 1)) throw new RangeError(`epsilon must be in (0, 1) (the Gaussian mechanism's bound, Dwork & Roth Theorem A.1), got ${epsilon}`);
  if (!(delta > 0 && delta < 1)) throw new RangeError(`delta must be in (0, 1), got ${delta}`);
  return Math.sqrt(2 * Math.log(1.25 / delta)) / epsilon;
}

/**
 * B_n, the Lipschitz constant assumed for the map round `r` applies to the global model: 1 for a round without
 * participants (the identity); with `smoothness` L, (1 + η L)^K, K the most local steps a participant took (its
 * `steps` metric, else ceil(localEpochs · examples / batchSize)); otherwise `lipschitz`.
 */
export function roundLipschitz(r: Pick<RoundRecord, 'participants'>, c: Pick<SifuConstants, 'lipschitz' | 'smoothness'>, hyper: HyperParameters): number {
  if (r.participants.length === 0) return 1;
  if (c.smoothness === undefined) return c.lipschitz;
  let k = 0;
  for (const p of r.participants) {
    const steps = p.metrics?.steps ?? Math.ceil((hyper.localEpochs * p.numExamples) / hyper.batchSize);
    k = Math.max(k, steps);
  }
  return Math.pow(1 + hyper.learningRate * c.smoothness, k);
}

/**
 * Ψ(n, c) for n = 0..rounds.length (the model after n rounds) and every client of `clients`: Ψ(0) = 0,
 * Ψ(n+1) = B_n Ψ(n) + ζ(n, c), with ζ = 0 for a round c did not take part in and Infinity for one it took part in
 * without a kept sensitivity.
 */
export function accumulateBounds(rounds: readonly Pick<RoundRecord, 'participants'>[], clients: readonly string[], c: Pick<SifuConstants, 'lipschitz' | 'smoothness'>, hyper: HyperParameters): Map<string, number>[] {
  let psi = new Map(clients.map((id) => [id, 0]));
  const out = [psi];
  for (const r of rounds) {
    const b = roundLipschitz(r, c, hyper);
    const next = new Map<string, number>();
    for (const id of clients) {
      const p = r.participants.find((q) => q.clientId === id);
      const zeta = p ? (p.sensitivity ?? Infinity) : 0;
      // 0 * Infinity is NaN; a client at Ψ = 0 stays at 0 through any B.
      const carried = psi.get(id)! === 0 ? 0 : b * psi.get(id)!;
      next.set(id, carried + zeta);
    }
    out.push(next);
    psi = next;
  }
  return out;
}

/** The rollback candidates j (the model after j rounds), latest first: those from `firstContribution` (Ψ = 0 there)
 *  to the head whose bound keeps the budget. */
export function rollbackCandidates(worst: readonly number[], budget: number, firstContribution: number): number[] {
  const out: number[] = [];
  for (let j = worst.length - 1; j >= 0; j--) if (j <= firstContribution || worst[j]! <= budget) out.push(j);
  return out;
}

/**
 * Where a forget job may start so that it releases no earlier SIFU job's unperturbed model: index `first` (t0 of the
 * new request) moved back to the start of an earlier SIFU segment it falls into (after that segment's t0, at or
 * before its perturbation). The models of such a segment carry the earlier job's forgotten clients' contribution,
 * bounded but without noise; starting before the segment keeps every method's result free of them.
 */
export function startOutsideSegments(rounds: readonly Pick<RoundRecord, 'round' | 'participants' | 'metrics'>[], first: number): number {
  if (first < 0) return first;
  let out = first;
  // Latest first, so that a segment that starts inside an earlier one (not possible today) still moves the start back.
  for (let i = rounds.length - 1; i >= 0; i--) {
    const r = rounds[i]!;
    const start = r.metrics[SIFU_SEGMENT_METRIC];
    if (r.participants.length > 0 || !Number.isFinite(start)) continue;
    const s = rounds.findIndex((q) => q.round >= start!);
    if (s >= 0 && out > s && out <= i) out = s;
  }
  return out;
}

/** Whether the model after j rounds lies between an earlier SIFU job's t0 and its perturbation: it carries that job's
 *  forgotten clients' contribution without noise and must not be released. */
function unreleasedPrefixes(rounds: readonly RoundRecord[]): (j: number) => boolean {
  const spans: [number, number][] = [];
  rounds.forEach((r, i) => {
    const start = r.metrics[SIFU_SEGMENT_METRIC];
    if (r.participants.length === 0 && Number.isFinite(start)) spans.push([start!, i]);
  });
  // The model after j rounds (j >= 1) is rounds[j-1]'s result: unreleased when that round is at or after a segment's
  // t0 and before its perturbation round (index i: the perturbation itself, j = i + 1, is released).
  return (j) => j >= 1 && spans.some(([start, i]) => rounds[j - 1]!.round >= start && j - 1 < i);
}

/** The seeded noise's key: the federation seed, the history's length, the rollback round and the forgotten clients,
 *  so that the same history and request give the same noise (nothing random or time-dependent enters it). */
export function noiseKey(seed: number, historyLength: number, rollbackRound: number, forgotten: readonly string[]): string {
  return `${seed}/sifu/${historyLength}/${rollbackRound}/${forgotten.join(',')}`;
}

/** `weights` + N(0, σ² I), from a seeded generator (Box-Muller over seedrandom's 53-bit doubles), as a new array. */
export function addGaussianNoise(weights: Float32Array, sigma: number, key: string): Float32Array {
  const rng = seedrandom(key);
  const out = new Float32Array(weights.length);
  for (let i = 0; i < weights.length; i += 2) {
    let u = rng.double();
    while (u <= 0) u = rng.double();
    const v = rng.double();
    const r = sigma * Math.sqrt(-2 * Math.log(u));
    out[i] = weights[i]! + r * Math.cos(2 * Math.PI * v);
    if (i + 1 < weights.length) out[i + 1] = weights[i + 1]! + r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

function assumptions(c: SifuConstants, noisy: boolean): string[] {
  const out = [
    'the per-round sensitivity is the triangle-inequality upper bound p/(1-p) (||U_c|| + ||agg||) of the exact ||agg - agg_-c|| (rounds/sensitivity.ts), valid for FedAvg and clipped FedAvg',
    'the run without the forgotten clients is coupled with this one: the same client selection and the same local batch orders (both seeded), and the same noise',
    c.smoothness !== undefined
      ? `each round's map is (1 + eta L)^K-Lipschitz with L = ${c.smoothness}: every client's minibatch loss is L-smooth (gradients L-Lipschitz) — not true of ReLU networks (MLP/CNN), whose gradients jump at the kinks; L is then an assumption, not a property`
      : `each round's map (local training, then the weighted mean) is ${c.lipschitz}-Lipschitz in the global model${c.lipschitz <= 1 ? ' (non-expansive): true for gradient descent on a convex L-smooth loss with a step <= 2/L, NOT guaranteed for our non-convex MLP/CNN, where two nearby models can drift apart' : ''}`,
    'the Gaussian mechanism bound (Dwork & Roth 2014, Theorem A.1) for epsilon < 1',
    'clients report their example counts truthfully (the weights p_c come from them)',
  ];
  if (!noisy) out.push('no noise was needed: the model rolled back to predates every forgotten client (exact, like rollback)');
  return out;
}

function fmt(x: number): string {
  return Number.isFinite(x) ? x.toPrecision(4) : 'infinite';
}
