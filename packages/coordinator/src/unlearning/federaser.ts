import { TaskKind } from '../rounds/dispatcher.js';
import { addCost, zeroCost } from '../rounds/federated-step.js';
import { applyStoredUpdates, replayStart } from './replay.js';
import { DEFAULT_CALIBRATION_RATIO, remaining, type MethodContext, type MethodParams, type MethodResult, type ReplayedRound, type UnlearningMethod } from './method.js';

/**
 * FedEraser (Liu et al., IWQoS 2021): calibrated replay. For each stored round t_j, every remaining participant
 * trains r*E epochs from M~_j; per client and per layer, the calibrated update takes its length from the stored
 * update (measured against the model that client started round t_j from) and its direction from the fresh one; the
 * example-weighted mean over those who answered gives M~_{j+1}.
 *
 * The paper starts from the initial model M~_1 = M^1. Every global model before t0, the first round a forgotten
 * client took part in, never saw them and is exact, so this starts from M^{t0} (the model before round t0) and
 * replays only the stored rounds from t0 on; the rounds before t0 are kept as they are (MethodResult.kept).
 * `fullHistory` restores the paper's start, for comparisons.
 *
 * Clients that do not answer before the deadline are left out of that step and the weights renormalised over those
 * who did (the report lists them); clients offline when the step starts are handled by the engine's offline policy
 * (left out, or completed from their stored update, uncalibrated); if nobody answers, the step is skipped and the
 * model carries over.
 */
export class FedEraser implements UnlearningMethod {
  readonly name = 'federaser' as const;
  readonly exact = false;

  async run(ctx: MethodContext, params: MethodParams): Promise<MethodResult> {
    const ratio = params.calibrationRatio ?? DEFAULT_CALIBRATION_RATIO;
    if (!(ratio > 0)) throw new RangeError(`calibrationRatio must be positive, got ${ratio}`);
    if (ctx.storedRounds.length === 0) throw new Error('the history holds no stored round to replay');
    const { kept, startedFrom, stored, notes } = replayStart(ctx, params);
    const done: ReplayedRound[] = [...(ctx.resume?.rounds ?? [])];
    let cost = ctx.resume?.cost ?? zeroCost();
    let model = done.length > 0 ? done[done.length - 1]!.weights : await ctx.readModel(startedFrom);
    for (let j = done.length; j < stored.length; j++) {
      const src = stored[j]!;
      const clients = remaining(src.participants, ctx.forgotten);
      ctx.progress(j, stored.length, `calibrating stored round ${src.round} (${j + 1} of ${stored.length}) with ${clients.length} clients`);
      const startedAt = Date.now();
      if (j === 0 && params.reuseFirstRound) {
        // The first replayed round's updates were computed from the model this replay starts from (M^1, or M^{t0}
        // when t0 is a stored round), which carries nothing of the forgotten clients: exact as stored.
        if (src.modelBefore !== startedFrom) notes.push(`reuseFirstRound: stored round ${src.round} did not start from the replay's start model; applied as stored, approximately`);
        const r = await applyStoredUpdates(ctx, src, model);
        done.push({ ...r, sourceRound: src.round, startedAt, closedAt: Date.now() });
        model = r.weights;
        await ctx.checkpoint(done, cost);
        continue;
      }
      const norms = new Map(src.participants.map((p) => [p.clientId, p.norms]));
      const res = await ctx.step({
        clientIds: clients,
        model: { layout: ctx.layout, values: model },
        round: j + 1,
        kind: TaskKind.CALIBRATE,
        hyper: { ...ctx.hyper, localEpochs: ratio * ctx.hyper.localEpochs },
        seed: ctx.seed * 7919 + src.round,
        source: src,
        calibrateTo: norms,
      });
      cost = addCost(cost, res.cost);
      if (!res.weights) notes.push(`stored round ${src.round}: no client answered; the step was skipped`);
      model = res.weights ?? model;
      done.push({
        sourceRound: src.round,
        roundId: res.roundId,
        participants: res.participants,
        missing: res.missing,
        uncalibrated: res.serverSide,
        metrics: res.metrics,
        startedAt,
        closedAt: Date.now(),
        weights: model,
      });
      await ctx.checkpoint(done, cost);
    }
    return { weights: model, kept, startedFrom, rounds: done, cost, notes };
  }
}
