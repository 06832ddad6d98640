import { test } from 'node:test';
import assert from 'node:assert/strict';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import type { Participant, RoundRecord } from '../history/store.js';
import type { HyperParameters } from '../rounds/dispatcher.js';
import { addCost, zeroCost, type WorkCost } from '../rounds/federated-step.js';
import { FedAvg } from '../aggregation/fedavg.js';
import { FedEraser } from './federaser.js';
import { replayStart, ServerReplay } from './replay.js';
import type { MethodContext, ReplayedRound } from './method.js';

// ServerReplay and FedEraser run against a MethodContext held in memory: the history is three stored rounds with
// updates chosen here, so every model a method reaches is computed by hand. What these tests pin down are the paths
// the end-to-end tests (test/src/unlearning-arithmetic.e2e.test.ts, forget.e2e.test.ts) reach only slowly or not at
// all: a job resumed from its last checkpoint after a restart, a stored update that is not there, a stored round with
// no update of a remaining client. The expected models are computed here as FedAvg defines them (a float64
// example-weighted sum times 1/total, rounded to float32 once) and compared bit for bit.

const layout = layoutOf([
  { name: 'dense/kernel', shape: [2, 2] },
  { name: 'dense/bias', shape: [2] },
]);
const hyper: HyperParameters = { localEpochs: 2, batchSize: 4, learningRate: 0.125 };
/** Examples per client: once 'f' is forgotten, 'a' weighs 10/40 and 'b' 30/40. */
const EXAMPLES: Record<string, number> = { a: 10, b: 30, f: 20 };

function vec(...v: number[]): Float32Array {
  return Float32Array.from(v);
}

/** The stored update of `client` in round t: distinct per client and round. */
function stored(client: string, t: number): Float32Array {
  const k = client.charCodeAt(0) - 96;
  return vec(k / 8, -t / 16, (k * t) / 32, 1 / 64, -k / 4, t / 8);
}

function participant(clientId: string, t: number, withUpdate: boolean): Participant {
  return {
    clientId,
    numExamples: EXAMPLES[clientId]!,
    norms: Array.from(layerNorms(layout, stored(clientId, t))),
    hasUpdate: withUpdate,
    ...(clientId === 'a' ? { metrics: { loss: t / 4 } } : {}),
  };
}

function roundRecord(t: number): RoundRecord {
  return {
    round: t,
    roundId: `r${t}`,
    lineage: 'L',
    modelBefore: `v${t - 1}`,
    modelAfter: `v${t}`,
    participants: ['a', 'b', 'f'].map((c) => participant(c, t, true)),
    missing: [],
    updatesStored: true,
    metrics: {},
    startedAt: t,
    closedAt: t,
  };
}

const START = vec(1, 2, 3, 4, 5, 6);

interface Calls {
  readModel: string[];
  progress: number[];
  checkpoints: ReplayedRound[][];
  staged: string[];
  /** The model each FedEraser step started from. */
  stepModels: Float32Array[];
}

/**
 * The in-memory context: rounds 1-3, all stored, 'f' forgotten (t0 = round 1). `missingUpdates` are `round/client`
 * keys whose stored update reads as null. `step` (FedEraser) answers every client with the fresh update `fresh(c, j)`
 * and aggregates it as federatedStep does: transform, then FedAvg.
 */
function context(opts: { missingUpdates?: string[]; resume?: MethodContext['resume']; patch?: Partial<MethodContext> } = {}): { ctx: MethodContext; calls: Calls } {
  const rounds = [1, 2, 3].map(roundRecord);
  const calls: Calls = { readModel: [], progress: [], checkpoints: [], staged: [], stepModels: [] };
  let ids = 0;
  const ctx: MethodContext = {
    forgotten: new Set(['f']),
    rounds,
    storedRounds: rounds,
    firstContribution: 0,
    layout,
    topologyJson: '{}',
    hyper,
    seed: 1,
    // Every client is online: these methods never ask (FedRecover does, for its corrections).
    connected: (clientIds) => [...clientIds],
    async readModel(version) {
      calls.readModel.push(version);
      if (version !== 'v0') throw new Error(`no model ${version} in this test`);
      return START.slice();
    },
    async readUpdate(roundId, clientId) {
      const t = Number(roundId.slice(1));
      return opts.missingUpdates?.includes(`${t}/${clientId}`) ? null : stored(clientId, t);
    },
    async step(args) {
      calls.stepModels.push(args.model.values.slice());
      const agg = new FedAvg().begin(layout);
      const participants = [];
      for (const clientId of args.clientIds) {
        const fresh = stored(clientId, 3).map((x) => -4 * x);
        const delta = args.transform ? args.transform({ clientId, taskId: 't', delta: fresh, numExamples: EXAMPLES[clientId]!, metrics: {}, bytesIn: 0 }) : fresh;
        agg.add(delta, EXAMPLES[clientId]!);
        participants.push({ clientId, numExamples: EXAMPLES[clientId]!, norms: Array.from(layerNorms(layout, delta)) });
      }
      const cost: WorkCost = { clientSampleEpochs: 40, bytesOut: 100, bytesIn: 100, tasks: args.clientIds.length };
      return {
        weights: agg.apply(args.model.values),
        participants,
        missing: [],
        metrics: {},
        cost,
        timing: { sendMs: 0, decodeMs: 0, aggregateMs: 0, stageMs: 0 },
        roundId: `new-${++ids}`,
        serverSide: [],
      };
    },
    async stage(roundId, clientId) {
      calls.staged.push(`${roundId}/${clientId}`);
    },
    newRoundId: () => `new-${++ids}`,
    progress: (step) => void calls.progress.push(step),
    resume: opts.resume ?? null,
    async checkpoint(done) {
      calls.checkpoints.push([...done]);
    },
    signal: new AbortController().signal,
    ...opts.patch,
  };
  return { ctx, calls };
}

/** `model` plus the example-weighted mean of `updates` (client -> update), in float64 then float32, as FedAvg. */
function plusMean(model: Float32Array, updates: [string, Float32Array][]): Float32Array {
  const total = updates.reduce((s, [c]) => s + EXAMPLES[c]!, 0);
  return model.map((m, i) => m + updates.reduce((s, [c, u]) => s + EXAMPLES[c]! * u[i]!, 0) * (1 / total));
}

test('replay: a remaining client whose stored update is gone is listed missing, and the round is the mean of the others', async () => {
  const { ctx, calls } = context({ missingUpdates: ['2/b'] });
  const res = await new ServerReplay().run(ctx, {});
  const m1 = plusMean(START, [['a', stored('a', 1)], ['b', stored('b', 1)]]);
  const m2 = plusMean(m1, [['a', stored('a', 2)]]);
  const m3 = plusMean(m2, [['a', stored('a', 3)], ['b', stored('b', 3)]]);
  assert.deepEqual(res.weights, m3);
  assert.deepEqual(res.rounds.map((r) => r.weights), [m1, m2, m3]);
  const r2 = res.rounds[1]!;
  assert.deepEqual(r2.missing, [{ clientId: 'b', reason: 'offline', detail: 'no stored update' }]);
  // The participants are what was applied: the stored round's example counts and metrics, the applied update's norms.
  // SIFU's sensitivity (rounds/sensitivity.ts): a sole participant moves the aggregate by its whole update.
  const l2 = (v: Float32Array) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  const [p2] = r2.participants;
  assert.ok(Math.abs(p2!.sensitivity! - l2(stored('a', 2))) < 1e-6 * l2(stored('a', 2)), `sole participant: ${p2!.sensitivity} vs ${l2(stored('a', 2))}`);
  assert.deepEqual({ ...p2, sensitivity: undefined }, { clientId: 'a', numExamples: 10, norms: Array.from(layerNorms(layout, stored('a', 2))), metrics: { loss: 0.5 }, sensitivity: undefined });
  assert.deepEqual(r2.uncalibrated, ['a']);
  assert.deepEqual(res.rounds[0]!.participants.map((p) => p.clientId), ['a', 'b']);
  // b holds 30 of the 40 examples: p/(1-p) (||U_b|| + ||agg||) with p = 0.75, agg = m1 - START.
  const pb = res.rounds[0]!.participants[1]!;
  const zeta = (0.75 / 0.25) * (l2(stored('b', 1)) + l2(m1.map((x, i) => x - START[i]!)));
  assert.ok(Math.abs(pb.sensitivity! - zeta) < 1e-5 * zeta, `b's sensitivity ${pb.sensitivity} vs ${zeta}`);
  assert.deepEqual({ ...pb, sensitivity: undefined }, { clientId: 'b', numExamples: 30, norms: Array.from(layerNorms(layout, stored('b', 1))), sensitivity: undefined });
  // Only what was applied is staged under the new rounds' ids; the forgotten client's updates never are.
  const ids = res.rounds.map((r) => r.roundId);
  assert.deepEqual(calls.staged, [`${ids[0]}/a`, `${ids[0]}/b`, `${ids[1]}/a`, `${ids[2]}/a`, `${ids[2]}/b`]);
  assert.deepEqual(calls.readModel, ['v0']);
});

test('replay: a stored round with no update of any remaining client carries the model over', async () => {
  const { ctx } = context({ missingUpdates: ['2/a', '2/b'] });
  const res = await new ServerReplay().run(ctx, {});
  const m1 = plusMean(START, [['a', stored('a', 1)], ['b', stored('b', 1)]]);
  assert.deepEqual(res.rounds[1]!.weights, m1);
  assert.deepEqual(res.rounds[1]!.participants, []);
  assert.deepEqual(res.rounds[1]!.missing.map((m) => m.clientId), ['a', 'b']);
  assert.deepEqual(res.weights, plusMean(m1, [['a', stored('a', 3)], ['b', stored('b', 3)]]));
});

/** A checkpoint after the first step, whose model no replay would reach: the resumed run must start from it. */
function checkpointAfterOne(): { rounds: ReplayedRound[]; cost: WorkCost } {
  const first: ReplayedRound = {
    sourceRound: 1,
    roundId: 'before-restart',
    participants: [],
    missing: [],
    uncalibrated: [],
    metrics: {},
    startedAt: 0,
    closedAt: 0,
    weights: vec(-1, 0.5, 0.25, 8, -2, 16),
  };
  return { rounds: [first], cost: { clientSampleEpochs: 7, bytesOut: 11, bytesIn: 13, tasks: 2 } };
}

test('replay resumed after a restart continues from its last checkpoint: the steps done are kept, not redone', async () => {
  const resume = checkpointAfterOne();
  const { ctx, calls } = context({ resume });
  const res = await new ServerReplay().run(ctx, {});
  const m2 = plusMean(resume.rounds[0]!.weights, [['a', stored('a', 2)], ['b', stored('b', 2)]]);
  const m3 = plusMean(m2, [['a', stored('a', 3)], ['b', stored('b', 3)]]);
  assert.deepEqual(res.weights, m3);
  assert.equal(res.rounds.length, 3);
  assert.equal(res.rounds[0], resume.rounds[0], 'the checkpointed step is reported as it was');
  assert.deepEqual(res.rounds.map((r) => r.sourceRound), [1, 2, 3]);
  assert.deepEqual(calls.readModel, [], 'the start model is not read again');
  assert.deepEqual(calls.progress, [1, 2]);
  assert.deepEqual(calls.checkpoints.map((c) => c.length), [2, 3]);
});

test('FedEraser resumed after a restart calibrates from the checkpointed model on, and adds the cost already spent', async () => {
  const resume = checkpointAfterOne();
  const { ctx, calls } = context({ resume });
  const res = await new FedEraser().run(ctx, {});
  assert.deepEqual(calls.readModel, [], 'the start model is not read again');
  assert.equal(calls.stepModels.length, 2, 'only the two steps left are run');
  assert.deepEqual(calls.stepModels[0], resume.rounds[0]!.weights);
  assert.deepEqual(calls.stepModels[1], res.rounds[1]!.weights);
  assert.equal(res.rounds[0], resume.rounds[0]);
  assert.deepEqual(res.rounds.map((r) => r.sourceRound), [1, 2, 3]);
  assert.deepEqual(calls.progress, [1, 2]);
  const step: WorkCost = { clientSampleEpochs: 40, bytesOut: 100, bytesIn: 100, tasks: 2 };
  assert.deepEqual(res.cost, addCost(addCost(resume.cost, step), step));
  // A fresh run of the same context reads the start model and runs all three steps from it.
  const fresh = context();
  const all = await new FedEraser().run(fresh.ctx, {});
  assert.deepEqual(fresh.calls.readModel, ['v0']);
  assert.deepEqual(fresh.calls.stepModels[0], START);
  assert.equal(all.rounds.length, 3);
  assert.notDeepEqual(all.weights, res.weights);
  assert.deepEqual(all.cost, addCost(addCost(addCost(zeroCost(), step), step), step));
});

test('FedEraser refuses a calibration ratio that is not positive before it reads or trains anything', async () => {
  for (const ratio of [0, -0.5, Number.NaN]) {
    const { ctx, calls } = context();
    await assert.rejects(new FedEraser().run(ctx, { calibrationRatio: ratio }), (e: unknown) => {
      assert.ok(e instanceof RangeError);
      assert.equal(e.message, `calibrationRatio must be positive, got ${ratio}`);
      return true;
    });
    assert.deepEqual([calls.readModel, calls.stepModels], [[], []]);
  }
  // The smallest positive ratio is accepted, and scales the calibration epochs: r * E.
  const { ctx } = context();
  const epochs: number[] = [];
  const step = ctx.step.bind(ctx);
  ctx.step = async (args) => {
    epochs.push(args.hyper!.localEpochs);
    return step(args);
  };
  await new FedEraser().run(ctx, { calibrationRatio: Number.MIN_VALUE });
  assert.deepEqual(epochs, [Number.MIN_VALUE * 2, Number.MIN_VALUE * 2, Number.MIN_VALUE * 2]);
});

test('replayStart: from the model before t0 over the stored rounds from t0 on, keeping the rounds before; or the full history', () => {
  const rounds = [1, 2, 3].map(roundRecord);
  const { ctx } = context({ patch: { firstContribution: 1 } });
  assert.deepEqual(replayStart(ctx, {}), {
    kept: 1,
    startedFrom: 'v1',
    stored: [rounds[1], rounds[2]],
    notes: ['rounds 1-1 are kept as they were: no forgotten client took part in them'],
  });
  assert.deepEqual(replayStart(ctx, { fullHistory: true }), { kept: 0, startedFrom: 'v0', stored: rounds, notes: [] });
  // t0 after the last stored round: nothing to replay, the result is the model before t0.
  const late = context({ patch: { firstContribution: 2, storedRounds: [rounds[0]!] } }).ctx;
  assert.deepEqual(replayStart(late, {}), {
    kept: 2,
    startedFrom: 'v2',
    stored: [],
    notes: ['rounds 1-2 are kept as they were: no forgotten client took part in them', 'no stored round from round 3 on: the result is the model before round 3'],
  });
});

test('replayStart refuses a start past the history or from an unknown model; replay refuses a history with no stored round', async () => {
  const { ctx } = context({ patch: { firstContribution: 3 } });
  assert.throws(() => replayStart(ctx, {}), { message: 'the history holds no round to replay' });
  const unknown = context().ctx;
  unknown.rounds = [{ ...roundRecord(1), modelBefore: '' }, roundRecord(2)];
  assert.throws(() => replayStart(unknown, {}), { message: 'the model before round 1 is not known; the replay cannot start there' });
  const none = context({ patch: { storedRounds: [] } });
  await assert.rejects(new ServerReplay().run(none.ctx, {}), { message: 'the history holds no stored round to replay' });
  await assert.rejects(new FedEraser().run(none.ctx, {}), { message: 'the history holds no stored round to replay' });
  assert.deepEqual(none.calls.readModel, []);
});

test('FedEraser reusing the first round applies it as stored, and says so when that round did not start from the start model', async () => {
  // t0 = round 1, stored: the first replayed round started from the replay's start model; no note.
  const exact = context();
  const res = await new FedEraser().run(exact.ctx, { reuseFirstRound: true });
  assert.deepEqual(res.rounds[0]!.weights, plusMean(START, [['a', stored('a', 1)], ['b', stored('b', 1)]]));
  assert.deepEqual(res.rounds[0]!.uncalibrated, ['a', 'b']);
  assert.equal(exact.calls.stepModels.length, 2, 'rounds 2 and 3 are calibrated');
  assert.deepEqual(res.notes, []);
  // Round 1 not stored (Δt = 2): the first stored round, 2, started from v1, not from the start model v0.
  const rounds = [1, 2, 3].map(roundRecord);
  const late = context({ patch: { storedRounds: [rounds[1]!, rounds[2]!] } });
  const approx = await new FedEraser().run(late.ctx, { reuseFirstRound: true });
  assert.deepEqual(approx.notes, ["reuseFirstRound: stored round 2 did not start from the replay's start model; applied as stored, approximately"]);
  assert.deepEqual(approx.rounds[0]!.weights, plusMean(START, [['a', stored('a', 2)], ['b', stored('b', 2)]]));
});
