import { TaskKind } from '../rounds/dispatcher.js';
import { addCost, zeroCost } from '../rounds/federated-step.js';
import { ModelPrunedError, type RoundRecord } from '../history/store.js';
import { remaining, type MethodContext, type MethodParams, type MethodResult, type ReplayedRound, type UnlearningMethod } from './method.js';

/**
 * Exact unlearning by federated training again without the forgotten clients, with the same schedule: round t asks
 * the remaining participants of the original round t. `retrain` starts from the initial model; `rollback` starts
 * from the stored global model of the first round in which a forgotten client took part, and keeps the rounds
 * before it as they were (they never saw the forgotten clients).
 */
export class Retrain implements UnlearningMethod {
  readonly exact = true;

  constructor(readonly name: 'retrain' | 'rollback') {}

  async run(ctx: MethodContext, _params: MethodParams): Promise<MethodResult> {
    const rounds = ctx.rounds;
    if (rounds.length === 0) throw new Error('the history holds no round');
    let from = 0;
    if (this.name === 'rollback') {
      from = rounds.findIndex((r) => r.participants.some((p) => ctx.forgotten.has(p.clientId)));
      if (from < 0) from = rounds.length;
    }
    // Rollback restarts from M^{t0}; when the model retention policy pruned it (or a model of a round before it, which
    // the new lineage carries over), it restarts from the latest point before t0 whose models are all kept: every
    // model before t0 is clean of the forgotten clients, so the result is still exact, only with more rounds to redo.
    // Computed on a resumed job too, so that it goes on from the same point (no round is pruned while a job waits:
    // pruning follows training rounds, which wait for pending jobs).
    const kept = this.name === 'rollback' ? await keptPrefix(ctx, rounds, from) : null;
    const wanted = from;
    if (kept) from = kept.from;
    const done: ReplayedRound[] = [...(ctx.resume?.rounds ?? [])];
    let cost = ctx.resume?.cost ?? zeroCost();
    const notes: string[] = [];
    if (this.name === 'rollback') notes.push(from < rounds.length ? `rolled back to the model before round ${rounds[from]!.round}` : 'no forgotten client took part: nothing to roll back');
    if (from < wanted) notes.push(`the model before round ${rounds[wanted]?.round ?? rounds.length + 1} was pruned by the model retention policy: rolled back further, to the latest kept model before it`);
    let model: Float32Array;
    if (done.length > 0) {
      model = done[done.length - 1]!.weights;
    } else {
      // Kept rounds carry over into the new lineage as they were, with their stored updates.
      for (let t = 0; t < from; t++) {
        const src = rounds[t]!;
        const roundId = ctx.newRoundId();
        for (const p of src.participants) {
          const u = p.hasUpdate ? await ctx.readUpdate(src.roundId, p.clientId) : null;
          if (u) await ctx.stage(roundId, p.clientId, u);
        }
        done.push({
          sourceRound: src.round,
          roundId,
          participants: src.participants.map((p) => ({ clientId: p.clientId, numExamples: p.numExamples, norms: p.norms, ...(p.metrics ? { metrics: p.metrics } : {}) })),
          missing: [],
          uncalibrated: [],
          metrics: src.metrics,
          startedAt: src.startedAt,
          closedAt: src.closedAt,
          weights: kept?.weights[t] ?? (await ctx.readModel(src.modelAfter)),
        });
      }
      model = kept?.start ?? (await ctx.readModel(from < rounds.length ? rounds[from]!.modelBefore : rounds[rounds.length - 1]!.modelAfter));
    }
    const start = Math.max(from, done.length);
    for (let t = start; t < rounds.length; t++) {
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
    return { weights: model, rounds: done, cost, notes };
  }
}

/**
 * The longest start of the history, up to round index `to`, whose models are all kept: the models after rounds
 * 0..from-1 (carried over as they were) and the model round `from` starts from (the model after round from-1, or the
 * lineage's first model, which the retention policy never prunes: history/model-retention.ts). from = to when nothing
 * it needs was pruned.
 */
async function keptPrefix(ctx: MethodContext, rounds: readonly RoundRecord[], to: number): Promise<{ from: number; weights: Float32Array[]; start: Float32Array }> {
  const read = async (version: string): Promise<Float32Array | null> => {
    try {
      return await ctx.readModel(version);
    } catch (e) {
      if (e instanceof ModelPrunedError) return null;
      throw e;
    }
  };
  const weights: Float32Array[] = [];
  for (let t = 0; t < to; t++) {
    const w = await read(rounds[t]!.modelAfter);
    if (!w) break;
    weights.push(w);
  }
  const from = weights.length;
  if (from === to && to < rounds.length) {
    const start = await read(rounds[to]!.modelBefore);
    if (start) return { from, weights, start };
  }
  return { from, weights, start: from > 0 ? weights[from - 1]! : await ctx.readModel(rounds[0]!.modelBefore) };
}
