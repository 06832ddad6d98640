import { TaskKind } from '../rounds/dispatcher.js';
import { addCost, zeroCost } from '../rounds/federated-step.js';
import { remaining, type MethodContext, type MethodParams, type MethodResult, type ReplayedRound, type UnlearningMethod } from './method.js';

/**
 * Exact unlearning by federated training again without the forgotten clients, with the same schedule: round t asks
 * the remaining participants of the original round t. `retrain` starts from the initial model; `rollback` starts
 * from the stored global model before t0, the first round in which a forgotten client took part, and keeps the
 * rounds before it as they were (they never saw the forgotten clients; MethodResult.kept).
 */
export class Retrain implements UnlearningMethod {
  readonly exact = true;

  constructor(readonly name: 'retrain' | 'rollback') {}

  async run(ctx: MethodContext, _params: MethodParams): Promise<MethodResult> {
    const rounds = ctx.rounds;
    if (rounds.length === 0) throw new Error('the history holds no round');
    const from = this.name === 'rollback' ? ctx.firstContribution : 0;
    const start = rounds[from]!;
    if (!start.modelBefore) throw new Error(`the model before round ${start.round} is not known; the job cannot start there`);
    const done: ReplayedRound[] = [...(ctx.resume?.rounds ?? [])];
    let cost = ctx.resume?.cost ?? zeroCost();
    const notes: string[] = [];
    if (this.name === 'rollback') notes.push(from > 0 ? `rolled back to the model before round ${start.round}; rounds 1-${rounds[from - 1]!.round} are kept as they were` : 'a forgotten client took part in the first round: nothing to keep');
    let model = done.length > 0 ? done[done.length - 1]!.weights : await ctx.readModel(start.modelBefore);
    for (let t = from + done.length; t < rounds.length; t++) {
      const src = rounds[t]!;
      const clients = remaining(src.participants, ctx.forgotten);
      ctx.progress(t - from, rounds.length - from, `retraining round ${src.round} with ${clients.length} clients`);
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
      done.push({
        sourceRound: src.round,
        roundId: res.roundId,
        participants: res.participants,
        missing: res.missing,
        uncalibrated: [],
        metrics: res.metrics,
        startedAt,
        closedAt: Date.now(),
        weights: model,
      });
      await ctx.checkpoint(done, cost);
    }
    return { weights: model, kept: from, startedFrom: start.modelBefore, rounds: done, cost, notes };
  }
}
