import type { FlatWeights } from '@fedunlearn/protocol';
import { layerNorms } from '@fedunlearn/protocol';
import type { ParticipantInput, RoundRecord } from '../history/store.js';
import type { Missing } from '../rounds/dispatcher.js';
import { zeroCost } from '../rounds/federated-step.js';
import { FedAvg } from '../aggregation/fedavg.js';
import { remaining, type MethodContext, type MethodParams, type MethodResult, type ReplayedRound, type UnlearningMethod } from './method.js';

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
  return { roundId, participants, missing, uncalibrated: participants.map((p) => p.clientId), metrics: {}, weights };
}

/**
 * Server-side replay (FedAccum in the FedEraser paper): from the initial model, re-apply the stored updates of the
 * remaining participants of each stored round, re-weighted without the forgotten clients. No client computation.
 *
 * APPROXIMATE: every stored round after the first was computed by clients from a model that had already seen the
 * forgotten clients, so some of their influence survives in those updates. Follow it with ordinary rounds
 * (`tuneRounds`) to move the model back onto data that never saw them.
 */
export class ServerReplay implements UnlearningMethod {
  readonly name = 'replay' as const;
  readonly exact = false;

  async run(ctx: MethodContext, _params: MethodParams): Promise<MethodResult> {
    const stored = ctx.storedRounds;
    if (stored.length === 0) throw new Error('the history holds no stored round to replay');
    const done: ReplayedRound[] = [...(ctx.resume?.rounds ?? [])];
    let model: FlatWeights['values'] = done.length > 0 ? done[done.length - 1]!.weights : await ctx.readModel(ctx.rounds[0]!.modelBefore);
    for (let j = done.length; j < stored.length; j++) {
      const src = stored[j]!;
      ctx.progress(j, stored.length, `replaying stored round ${src.round} (${j + 1} of ${stored.length})`);
      const startedAt = Date.now();
      const r = await applyStoredUpdates(ctx, src, model);
      model = r.weights;
      done.push({ ...r, sourceRound: src.round, startedAt, closedAt: Date.now() });
      await ctx.checkpoint(done, zeroCost());
    }
    const notes = ['approximate: stored updates after the first round were computed from models that had seen the forgotten clients'];
    return { weights: model, rounds: done, cost: zeroCost(), notes };
  }
}
