import { layerNorms } from '@fedunlearn/protocol';
import type { ParticipantInput, RoundRecord } from '../history/store.js';
import { TaskKind, type Missing } from '../rounds/dispatcher.js';
import { addCost, zeroCost } from '../rounds/federated-step.js';
import { trainingRoundSeed } from '../rounds/round-engine.js';
import { FedAvg } from '../aggregation/fedavg.js';
import { LbfgsMemory } from './lbfgs.js';
import { replayStart } from './replay.js';
import { FEDRECOVER_DEFAULTS, remaining, type MethodContext, type MethodParams, type MethodResult, type ReplayedRound, type UnlearningMethod } from './method.js';

/** FedRecover's parameters with the defaults filled in (MethodParams documents each). */
export interface FedRecoverParams {
  warmupRounds: number;
  correctionPeriod: number;
  finalTuningRounds: number;
  abnormalityThreshold: number;
  lbfgsMemory: number;
}

export function fedRecoverParams(p: MethodParams): FedRecoverParams {
  return {
    warmupRounds: p.warmupRounds ?? FEDRECOVER_DEFAULTS.warmupRounds,
    correctionPeriod: p.correctionPeriod ?? FEDRECOVER_DEFAULTS.correctionPeriod,
    finalTuningRounds: p.finalTuningRounds ?? FEDRECOVER_DEFAULTS.finalTuningRounds,
    abnormalityThreshold: p.abnormalityThreshold ?? FEDRECOVER_DEFAULTS.abnormalityThreshold,
    lbfgsMemory: p.lbfgsMemory ?? FEDRECOVER_DEFAULTS.lbfgsMemory,
  };
}

/**
 * Why replayed round j (0-based) of n asks every client for its exact update, or null when updates are estimated:
 * the first T_w rounds (warm-up), the last T_f (final tuning), and after the warm-up every T_c-th round (periodic
 * correction: rounds T_w + T_c − 1, T_w + 2T_c − 1, ...). Cao et al. 2023, section 4.
 */
export function exactRoundReason(j: number, n: number, p: Pick<FedRecoverParams, 'warmupRounds' | 'correctionPeriod' | 'finalTuningRounds'>): 'warm-up' | 'final tuning' | 'correction' | null {
  if (j < p.warmupRounds) return 'warm-up';
  if (j >= n - p.finalTuningRounds) return 'final tuning';
  if ((j - p.warmupRounds + 1) % p.correctionPeriod === 0) return 'correction';
  return null;
}

/**
 * The estimated update of one client: Û = Ū − B Δw, Δw = ŵ − w̄ (the replay's model minus the model the stored
 * update Ū was computed from), B the L-BFGS matrix of the client's pairs (lbfgs.ts).
 *
 * How the paper's gradients map to our updates: the paper estimates a client's gradient at the new model as
 * ĝ = ḡ + H̃ Δw, H̃ the integrated Hessian (Cauchy's mean value theorem), from pairs (Δw, Δg). Our stored update is
 * the client's trained model minus the round's start model, U ≈ −η Σ∇ (a negative, scaled gradient sum), so
 * −U plays the gradient's part: pairs are (Δw, Ū − U_exact) (= Δ(−U), positive curvature as BFGS needs), B
 * approximates −∂U/∂w, and −Û = −Ū + B Δw, i.e. Û = Ū − B Δw. The learning rate and local steps are absorbed in B.
 */
export function estimateUpdate(stored: Float32Array, memory: LbfgsMemory, dw: Float32Array): Float32Array {
  const out = memory.hvp(dw);
  for (let i = 0; i < out.length; i++) out[i] = stored[i]! - out[i]!;
  return out;
}

/** The L-BFGS pair of a client that computed its exact update U at a model Δw away from its stored update's model:
 *  (Δw, Ū − U). See estimateUpdate for the sign. */
export function curvaturePair(stored: Float32Array, exact: Float32Array): Float32Array {
  const y = new Float32Array(stored.length);
  for (let i = 0; i < y.length; i++) y[i] = stored[i]! - exact[i]!;
  return y;
}

function maxAbs(v: Float32Array): number {
  let m = 0;
  for (let i = 0; i < v.length; i++) {
    const a = Math.abs(v[i]!);
    if (!(a <= m)) m = a; // NaN wins, so a non-finite estimate is abnormal too
  }
  return m;
}

/**
 * FedRecover (Cao, Jia, Zhang and Gong, "FedRecover: Recovering from Poisoning Attacks in Federated Learning using
 * Historical Information", IEEE S&P 2023): replays every round from t0 (the first round a forgotten client took part
 * in) without the forgotten clients, starting from the model before t0 (replayStart). Each remaining participant's
 * update in a replayed round is either
 * - exact: a fresh TRAIN task on the replay's model, in the warm-up (T_w), periodic-correction (every T_c) and
 *   final-tuning (T_f) rounds, and for a client whose estimate is abnormal (a coordinate above τ) or who has no
 *   usable L-BFGS pair yet; each exact update adds the pair (Δw, Ū − U) to that client's memory (s pairs); or
 * - estimated on the server from its stored update (estimateUpdate), with no client work.
 * The round's update is the example-weighted mean (FedAvg) over both kinds.
 *
 * Needs the full update of every participant of every replayed round (history interval Δt = 1, retention fp32 or
 * fp16): the engine refuses the job at submission otherwise. The stored updates' start models w̄ are read from the
 * history, or, where the model retention pruned them, rebuilt as w̄_{t+1} = w̄_t + FedAvg(round t's stored updates,
 * the forgotten clients' included), which is what a FedAvg round committed (exact for fp32, to fp16 precision else).
 *
 * Clients offline (or not answering) when their exact update is wanted keep their estimate (ReplayedRound.keptEstimate);
 * one that has no estimate (no pair yet) is applied from its stored update as is (uncalibrated, like server-side
 * replay), or is missing when it has none. The first replayed round starts from the stored model itself (Δw = 0): its
 * exact updates give no pair, so a warm-up of one round leaves the second round exact too. The L-BFGS memories live in memory: after a restart the job resumes from its
 * last checkpointed step with empty memories, so clients take exact updates until they have a pair again.
 *
 * APPROXIMATE: estimated updates carry the stored updates' error, and those were computed from models that had seen
 * the forgotten clients; the exact rounds pull the replay back toward retraining.
 */
export class FedRecover implements UnlearningMethod {
  readonly name = 'fedrecover' as const;
  readonly exact = false;

  async run(ctx: MethodContext, params: MethodParams): Promise<MethodResult> {
    const p = fedRecoverParams(params);
    const { kept, startedFrom, notes } = replayStart(ctx, {});
    const replayed = ctx.rounds.slice(kept);
    const unstored = replayed.filter((r) => !r.updatesStored);
    if (unstored.length > 0) {
      throw new Error(`fedrecover needs the full updates of every replayed round (history interval 1); rounds ${unstored.map((r) => r.round).join(', ')} kept none`);
    }
    const n = replayed.length;
    const done: ReplayedRound[] = [...(ctx.resume?.rounds ?? [])];
    let cost = ctx.resume?.cost ?? zeroCost();
    const start = await ctx.readModel(startedFrom);
    let model = done.length > 0 ? done[done.length - 1]!.weights : start;
    const memories = new Map<string, LbfgsMemory>();
    const originals = new OriginalModels(ctx, replayed, start);
    if (done.length > 0) notes.push(`resumed at replayed round ${done.length + 1} of ${n}: the L-BFGS memories restarted empty`);
    for (let j = done.length; j < n; j++) {
      // Estimated rounds send no task (the step's own check): stop here, between checkpointed rounds, on shutdown.
      if (ctx.signal.aborted) throw new Error('the coordinator is stopping; the job resumes from its last completed step');
      const src = replayed[j]!;
      const clients = remaining(src.participants, ctx.forgotten);
      const reason = exactRoundReason(j, n, p);
      ctx.progress(j, n, `replaying round ${src.round} (${j + 1} of ${n}) with ${clients.length} clients${reason ? `: exact updates (${reason})` : ': estimated updates'}`);
      const startedAt = Date.now();
      const wbar = await originals.at(j);
      const dw = new Float32Array(model.length);
      for (let i = 0; i < dw.length; i++) dw[i] = model[i]! - wbar[i]!;

      const stored = new Map<string, Float32Array>();
      const estimates = new Map<string, Float32Array>();
      const wantExact: string[] = [];
      let abnormal = 0;
      for (const id of clients) {
        const u = src.participants.find((q) => q.clientId === id)!.hasUpdate ? await ctx.readUpdate(src.roundId, id) : null;
        if (u) stored.set(id, u);
        const mem = memories.get(id);
        if (u && mem && mem.length > 0) {
          const est = estimateUpdate(u, mem, dw);
          estimates.set(id, est);
          if (!reason && !(maxAbs(est) <= p.abnormalityThreshold)) {
            abnormal++;
            wantExact.push(id);
          }
        }
        if (reason || !estimates.has(id)) {
          if (!wantExact.includes(id)) wantExact.push(id);
        }
      }

      const online = ctx.connected(wantExact);
      const exact = new Map<string, Float32Array>();
      let roundId = ctx.newRoundId();
      let participants: ParticipantInput[] = [];
      let missing: Missing[] = [];
      let metrics: Record<string, number> = {};
      if (online.length > 0) {
        const res = await ctx.step({
          clientIds: online,
          model: { layout: ctx.layout, values: model },
          round: j + 1,
          kind: TaskKind.TRAIN,
          // The seed of the stored round's first attempt: each client then sees its examples in the order its stored
          // update did, so that a pair's Δg is the effect of Δw, not of another shuffle.
          seed: trainingRoundSeed(ctx.seed, src.round, 1),
          // The answer's buffer may be recycled once the step has folded it: keep a copy for the pairs and the mean.
          transform: (a) => {
            exact.set(a.clientId, new Float32Array(a.delta));
            return a.delta;
          },
        });
        cost = addCost(cost, res.cost);
        roundId = res.roundId;
        participants = [...res.participants];
        missing = res.missing.filter((m) => !estimates.has(m.clientId) && !stored.has(m.clientId));
        metrics = res.metrics;
      }

      const agg = new FedAvg().begin(ctx.layout);
      const estimated: string[] = [];
      const keptEstimate: string[] = [];
      const uncalibrated: string[] = [];
      for (const id of clients) {
        const numExamples = src.participants.find((q) => q.clientId === id)!.numExamples;
        const fresh = exact.get(id);
        if (fresh) {
          agg.add(fresh, participants.find((q) => q.clientId === id)!.numExamples);
          const u = stored.get(id);
          if (u) {
            let mem = memories.get(id);
            if (!mem) memories.set(id, (mem = new LbfgsMemory(model.length, p.lbfgsMemory)));
            // dw is shared by this round's pairs: a memory never writes to what it holds.
            mem.push(dw, curvaturePair(u, fresh));
          }
          continue;
        }
        const est = estimates.get(id);
        const u = est ?? stored.get(id);
        if (!u) {
          if (!missing.some((m) => m.clientId === id)) missing.push({ clientId: id, reason: 'offline', detail: 'offline when its exact update was wanted, with no estimate and no stored update' });
          continue;
        }
        if (est) {
          estimated.push(id);
          if (wantExact.includes(id)) keptEstimate.push(id);
        } else {
          uncalibrated.push(id);
        }
        agg.add(u, numExamples);
        await ctx.stage(roundId, id, u);
        participants.push({ clientId: id, numExamples, norms: Array.from(layerNorms(ctx.layout, u)) });
      }
      participants.sort((a, b) => (a.clientId < b.clientId ? -1 : a.clientId > b.clientId ? 1 : 0));
      model = agg.count > 0 ? agg.apply(model) : model;
      if (agg.count === 0) notes.push(`round ${src.round}: no update, exact or estimated; the step was skipped`);
      if (abnormal > 0) metrics = { ...metrics, abnormalEstimates: abnormal };
      done.push({ sourceRound: src.round, roundId, participants, missing, uncalibrated, estimated, keptEstimate, metrics, startedAt, closedAt: Date.now(), weights: model });
      await ctx.checkpoint(done, cost);
    }
    if (originals.rebuilt > 0) notes.push(`${originals.rebuilt} of the original rounds' start models were pruned and rebuilt from the stored updates (FedAvg)`);
    notes.push('approximate: estimated updates start from stored updates computed from models that had seen the forgotten clients');
    return { weights: model, kept, startedFrom, rounds: done, cost, notes };
  }
}

/**
 * w̄_j, the model replayed round j's stored updates were computed from: read from the history, or rebuilt from the
 * previous one and its round's stored updates when the model retention pruned it (see FedRecover).
 */
class OriginalModels {
  private at_ = -1;
  private current: Float32Array;
  rebuilt = 0;

  constructor(
    private readonly ctx: MethodContext,
    private readonly rounds: readonly RoundRecord[],
    start: Float32Array,
  ) {
    this.current = start;
    this.at_ = 0;
  }

  async at(j: number): Promise<Float32Array> {
    if (j < this.at_) throw new Error(`original models are read in order (asked ${j} after ${this.at_})`);
    while (this.at_ < j) {
      const prev = this.rounds[this.at_]!;
      const next = this.rounds[this.at_ + 1]!;
      this.at_++;
      const version = next.modelBefore || prev.modelAfter;
      const read = version ? await this.ctx.readModel(version).catch(() => null) : null;
      this.current = read ?? (await this.rebuild(prev));
    }
    return this.current;
  }

  private async rebuild(r: RoundRecord): Promise<Float32Array> {
    const agg = new FedAvg().begin(this.ctx.layout);
    for (const p of r.participants) {
      const u = p.hasUpdate ? await this.ctx.readUpdate(r.roundId, p.clientId) : null;
      if (!u) throw new Error(`the model after round ${r.round} was pruned and cannot be rebuilt: ${p.clientId}'s update of that round is not stored`);
      agg.add(u, p.numExamples);
    }
    this.rebuilt++;
    return agg.apply(this.current);
  }
}
