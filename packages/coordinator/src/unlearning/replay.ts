import type { FlatWeights } from '@fedunlearn/protocol';
import { layerNorms } from '@fedunlearn/protocol';
import type { ParticipantInput, RoundRecord } from '../history/store.js';
import type { Missing } from '../rounds/dispatcher.js';
import { zeroCost } from '../rounds/federated-step.js';
import { FedAvg } from '../aggregation/fedavg.js';
import { withSensitivities } from '../rounds/sensitivity.js';
import { remaining, type MethodContext, type MethodParams, type MethodResult, type ReplayedRound, type UnlearningMethod } from './method.js';

/**
 * Where an approximate replay starts: from the model before t0 (MethodContext.firstContribution) with the stored
 * rounds from t0 on, keeping the rounds before t0 (exact: they never saw the forgotten clients); or, with
 * `fullHistory`, from the initial model over every stored round.
 */
export function replayStart(ctx: MethodContext, params: MethodParams): { kept: number; startedFrom: string; stored: RoundRecord[]; notes: string[] } {
  const kept = params.fullHistory ? 0 : ctx.firstContribution;
  const first = ctx.rounds[kept];
  if (!first) throw new Error('the history holds no round to replay');
  if (!first.modelBefore) throw new Error(`the model before round ${first.round} is not known; the replay cannot start there`);
  const stored = ctx.storedRounds.filter((r) => r.round >= first.round);
  const notes: string[] = [];
  if (kept > 0) notes.push(`rounds 1-${ctx.rounds[kept - 1]!.round} are kept as they were: no forgotten client took part in them`);
  if (stored.length === 0) notes.push(`no stored round from round ${first.round} on: the result is the model before round ${first.round}`);
  return { kept, startedFrom: first.modelBefore, stored, notes };
}

/**
 * Re-applies one stored round's updates of the remaining clients to `model`, re-weighted by examples without the
 * forgotten clients, and stages them as the new lineage's updates. No client work.
 */
export async function applyStoredUpdates(
  ctx: MethodContext,
  src: RoundRecord,
  model: Float32Array,
): Promise<Omit<ReplayedRound, 'sourceRound' | 'startedAt' | 'closedAt'>> {
  const agg = new FedAvg().begin(ctx.layout);
  const roundId = ctx.newRoundId();
  const participants: ParticipantInput[] = [];
  const missing: Missing[] = [];
  for (const clientId of remaining(src.participants, ctx.forgotten)) {
    const p = src.participants.find((q) => q.clientId === clientId)!;
    const u = await ctx.readUpdate(src.roundId, clientId);
    if (!u) {
      missing.push({ clientId, reason: 'offline', detail: 'no stored update' });
      continue;
    }
    agg.add(u, p.numExamples);
    await ctx.stage(roundId, clientId, u);
    participants.push({ clientId, numExamples: p.numExamples, norms: Array.from(layerNorms(ctx.layout, u)), ...(p.metrics ? { metrics: p.metrics } : {}) });
  }
  const weights = agg.count > 0 ? agg.apply(model) : model;
  return { roundId, participants: agg.count > 0 ? withSensitivities(participants, model, weights) : participants, missing, uncalibrated: participants.map((p) => p.clientId), metrics: {}, weights };
}

/**
 * Server-side replay (FedAccum in the FedEraser paper): from the model before t0 (see replayStart), re-apply the
 * stored updates of the remaining participants of each stored round from t0 on, re-weighted without the forgotten
 * clients. No client computation.
 *
 * APPROXIMATE: every stored round after t0 was computed by clients from a model that had already seen the forgotten
 * clients, so some of their influence survives in those updates. Follow it with ordinary rounds (`tuneRounds`) to
 * move the model back onto data that never saw them.
 */
export class ServerReplay implements UnlearningMethod {
  readonly name = 'replay' as const;
  readonly exact = false;

  async run(ctx: MethodContext, params: MethodParams): Promise<MethodResult> {
    if (ctx.storedRounds.length === 0) throw new Error('the history holds no stored round to replay');
    const { kept, startedFrom, stored, notes } = replayStart(ctx, params);
    const done: ReplayedRound[] = [...(ctx.resume?.rounds ?? [])];
    let model: FlatWeights['values'] = done.length > 0 ? done[done.length - 1]!.weights : await ctx.readModel(startedFrom);
    for (let j = done.length; j < stored.length; j++) {
      const src = stored[j]!;
      ctx.progress(j, stored.length, `replaying stored round ${src.round} (${j + 1} of ${stored.length})`);
      const startedAt = Date.now();
      const r = await applyStoredUpdates(ctx, src, model);
      model = r.weights;
      done.push({ ...r, sourceRound: src.round, startedAt, closedAt: Date.now() });
      await ctx.checkpoint(done, zeroCost());
    }
    notes.push('approximate: stored updates after the first replayed round were computed from models that had seen the forgotten clients');
    return { weights: model, kept, startedFrom, rounds: done, cost: zeroCost(), notes };
  }
}
