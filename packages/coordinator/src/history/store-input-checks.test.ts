import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import { kernelSync, type DiskSync } from './blob-files.js';
import { openSqliteHistory, type SqliteHistoryOptions } from './sqlite-store.js';
import { HistoryError, type CommitUnlearningInput, type HistoryConfig, type HistoryStore, type ModelVersion, type UnlearningRoundInput } from './store.js';

// The history store's refusals of bad commits, and what its commit and purge leave behind, through the public
// HistoryStore methods only (every call awaited, so these tests hold whether a method returns a value or a promise).
// Each refusal is checked for its class and its message (which job, which round, which field, which value) and for
// losing nothing: the head, the rounds and the blob files are as they were. Written for the survivors of
// `npm run mutate -- store` (mutation/results.md): each test fails when one of those mutants is applied.

const layout = layoutOf([
  { name: 'dense/kernel', shape: [3, 2] },
  { name: 'dense/bias', shape: [2] },
]);
const topologyJson = JSON.stringify({ name: 'tiny', layers: ['dense'] });
const FP32: HistoryConfig = { historyInterval: 1, retention: 'fp32' };

function weights(seed: number): Float32Array {
  return Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(seed * 7.13 + i) / 4);
}

function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

interface Fixture {
  store: HistoryStore;
  dir: string;
  /** Versions of the initial model and of rounds 1 and 2 (clients a and b, updates kept). */
  v: string[];
  blobs(): string[];
}

/** A store with two committed rounds of clients a (10 examples) and b (30). */
async function fixture(t: TestContext, opts: { config?: HistoryConfig; store?: SqliteHistoryOptions } = {}): Promise<Fixture> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-store-checks-'));
  const store = await openSqliteHistory(dir, opts.store ?? {});
  t.after(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const opened = await store.open({ topologyJson, layout, initialWeights: weights(0), config: opts.config ?? FP32 });
  const v = [opened.head.version];
  for (const round of [1, 2]) {
    const roundId = `r${round}`;
    for (const c of ['a', 'b']) if (await store.keepsUpdates(round)) await store.stageUpdate(roundId, c, weights(round * 10 + c.charCodeAt(0)));
    await store.syncStaged(roundId);
    const mv = await store.commitRound({
      round,
      roundId,
      modelBefore: v[round - 1]!,
      weights: weights(round),
      participants: ['a', 'b'].map((c) => ({ clientId: c, numExamples: c === 'a' ? 10 : 30, norms: layerNorms(layout, weights(round * 10 + c.charCodeAt(0))) })),
      metrics: {},
      startedAt: round,
    });
    v.push(mv.version);
  }
  return { store, dir, v, blobs: () => filesUnder(path.join(dir, 'blobs')) };
}

function participant(clientId: string, seed = 1) {
  return { clientId, numExamples: 10, norms: layerNorms(layout, weights(seed)) };
}

function replayed(round: number, extra: Partial<UnlearningRoundInput> = {}): UnlearningRoundInput {
  return { round, roundId: `u${round}`, modelBefore: '', participants: [participant('b')], metrics: {}, startedAt: round, closedAt: round, ...extra };
}

function job(rounds: UnlearningRoundInput[], extra: Partial<CommitUnlearningInput> = {}): CommitUnlearningInput {
  return { jobId: 'J', weights: weights(99), rounds, ...extra };
}

/** Asserts that `run` is refused with a HistoryError matching `message`, and that the history is as it was. */
async function refused(f: Fixture, run: () => unknown, message: RegExp): Promise<void> {
  const head = await f.store.head();
  const models = (await f.store.listModels()).length;
  const blobs = f.blobs();
  await assert.rejects(async () => run(), (e: unknown) => {
    assert.ok(e instanceof HistoryError, `a HistoryError, not ${String(e)}`);
    assert.match(e.message, message);
    return true;
  });
  assert.deepEqual(await f.store.head(), head, 'the head is unchanged');
  assert.equal((await f.store.listModels()).length, models, 'no model version was added');
  assert.deepEqual(f.blobs(), blobs, 'no blob file was added or removed');
}

test('commitRound refuses a round out of order, naming the rounds completed and the next one', async (t) => {
  const f = await fixture(t);
  await refused(
    f,
    () => f.store.commitRound({ round: 4, roundId: 'r4', modelBefore: f.v[2]!, weights: weights(4), participants: [participant('a')], metrics: {}, startedAt: 4 }),
    /^round 4 is out of order: lineage \S+ has completed 2 rounds, the next is 3$/,
  );
});

test("commitRound's participant refusals name the round", async (t) => {
  const f = await fixture(t);
  await refused(
    f,
    () => f.store.commitRound({ round: 3, roundId: 'r3', modelBefore: f.v[2]!, weights: weights(3), participants: [participant('a'), participant('a')], metrics: {}, startedAt: 3 }),
    /^round 3: client a is listed twice$/,
  );
});

test("commitRound's missing-list refusals name the round", async (t) => {
  const f = await fixture(t);
  await refused(
    f,
    () =>
      f.store.commitRound({
        round: 3,
        roundId: 'r3',
        modelBefore: f.v[2]!,
        weights: weights(3),
        participants: [participant('a')],
        missing: [{ clientId: 'a', reason: 'deadline' }],
        metrics: {},
        startedAt: 3,
      }),
    /^round 3: client a is both a participant and missing$/,
  );
});

test('an unlearning commit whose head moved while its blobs were written is refused, and removes its blobs', async (t) => {
  const f = await fixture(t);
  const blobs = f.blobs();
  // The work lock keeps rounds and jobs apart in the service; here a round commits while the job's commit is between
  // writing its model blob and its transaction.
  const pending = f.store.commitUnlearning(job([replayed(1)]));
  const round3 = await f.store.commitRound({ round: 3, roundId: 'r3', modelBefore: f.v[2]!, weights: weights(3), participants: [participant('a')], metrics: {}, startedAt: 3 });
  await assert.rejects(pending, (e: unknown) => {
    assert.ok(e instanceof HistoryError);
    assert.equal(e.message, 'unlearning job J: the head moved while its commit was prepared');
    return true;
  });
  assert.equal((await f.store.head()).version, round3.version);
  assert.deepEqual(f.blobs(), [...blobs, path.join('models', `${round3.version}.bin`)].sort(), "only round 3's model was added");
  assert.equal((await f.store.listModels()).filter((m) => m.cause === 'unlearning').length, 0);
});

test('a failed round commit leaves no model blob behind, and its retry does not fsync the staged update again', async (t) => {
  let failNext = false;
  const fsyncs: string[] = [];
  const disk: DiskSync = {
    fsyncSync(fd, file) {
      kernelSync.fsyncSync(fd, file);
      fsyncs.push(file);
    },
    async fsync(handle, file) {
      await kernelSync.fsync(handle, file);
      fsyncs.push(file);
    },
    commit(run, synchronous) {
      // The transaction never starts: what an I/O error at BEGIN looks like to the store.
      if (failNext) {
        failNext = false;
        throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR' });
      }
      kernelSync.commit(run, synchronous);
    },
  };
  const f = await fixture(t, { store: { disk } });
  // Staged without syncStaged: the commit itself makes the update durable (makeDurableSync) before it commits.
  await f.store.stageUpdate('r3', 'a', weights(31));
  const [staged] = f.blobs().filter((b) => b.startsWith(`updates${path.sep}r3${path.sep}`));
  assert.ok(staged);
  const input = { round: 3, roundId: 'r3', modelBefore: f.v[2]!, weights: weights(3), participants: [participant('a', 31)], metrics: {}, startedAt: 3 };
  const before = f.blobs();
  failNext = true;
  await assert.rejects(async () => f.store.commitRound(input), /disk I\/O error/);
  assert.deepEqual(f.blobs(), before, "the failed commit's model blob is removed; the staged update stays for the retry");
  assert.equal((await f.store.head()).version, f.v[2]);
  const stagedPath = path.join(f.dir, 'blobs', staged);
  assert.equal(fsyncs.filter((x) => x === stagedPath).length, 1, 'the staged update was fsynced by the failed commit');
  const mv = await f.store.commitRound(input);
  assert.equal((await f.store.head()).version, mv.version);
  assert.equal(fsyncs.filter((x) => x === stagedPath).length, 1, 'and not again by its retry: it is already durable');
  assert.deepEqual(await f.store.readUpdate('r3', 'a'), weights(31));
});

test('commitUnlearning refuses a round number that is not a positive integer, naming the job', async (t) => {
  const f = await fixture(t);
  await refused(f, () => f.store.commitUnlearning(job([replayed(0)])), /^unlearning job J: round number 0 is not a positive integer$/);
  await refused(f, () => f.store.commitUnlearning(job([replayed(1.5)])), /^unlearning job J: round number 1.5 is not a positive integer$/);
  await refused(f, () => f.store.commitUnlearning(job([replayed(-2)])), /^unlearning job J: round number -2 is not a positive integer$/);
});

test('commitUnlearning refuses rounds that do not ascend (a repeated number too) and a round id given twice', async (t) => {
  const f = await fixture(t);
  await refused(f, () => f.store.commitUnlearning(job([replayed(1), replayed(1, { roundId: 'u1b' })])), /^unlearning job J: rounds must ascend \(1 then 1\)$/);
  await refused(f, () => f.store.commitUnlearning(job([replayed(2), replayed(1)])), /^unlearning job J: rounds must ascend \(2 then 1\)$/);
  await refused(f, () => f.store.commitUnlearning(job([replayed(1), replayed(2, { roundId: 'u1' })])), /^unlearning job J: round id u1 is given twice$/);
  await refused(f, () => f.store.commitUnlearning(job([replayed(1, { roundId: 'r1' })])), /^round id r1 is already committed$/);
});

test("commitUnlearning's participant and missing-list refusals name the job and the round", async (t) => {
  const f = await fixture(t);
  await refused(
    f,
    () => f.store.commitUnlearning(job([replayed(1), replayed(2, { participants: [participant('b'), participant('b')] })])),
    /^unlearning job J, round 2: client b is listed twice$/,
  );
  await refused(
    f,
    () => f.store.commitUnlearning(job([replayed(1, { missing: [{ clientId: 'b', reason: 'offline' }] })])),
    /^unlearning job J, round 1: client b is both a participant and missing$/,
  );
});

test('commitUnlearning refuses intermediate models for a round not replayed, for the last round, or twice', async (t) => {
  const f = await fixture(t);
  const two = [replayed(1), replayed(2)];
  await refused(f, () => f.store.commitUnlearning(job(two, { intermediateModels: [{ round: 5, weights: weights(5) }] })), /^unlearning job J: intermediate model for round 5, which is not replayed$/);
  await refused(f, () => f.store.commitUnlearning(job([], { intermediateModels: [{ round: 1, weights: weights(5) }] })), /^unlearning job J: intermediate model for round 1, which is not replayed$/);
  await refused(
    f,
    () => f.store.commitUnlearning(job(two, { intermediateModels: [{ round: 2, weights: weights(5) }] })),
    /^unlearning job J: the model after the last replayed round is the job's result, not an intermediate model$/,
  );
  await refused(
    f,
    () => f.store.commitUnlearning(job(two, { intermediateModels: [{ round: 1, weights: weights(5) }, { round: 1, weights: weights(6) }] })),
    /^unlearning job J: two intermediate models for round 1$/,
  );
});

test('commitUnlearning refuses unknown model versions and a chain of rounds that does not join up, naming the round', async (t) => {
  const f = await fixture(t);
  await refused(f, () => f.store.commitUnlearning(job([replayed(1), replayed(2, { modelBefore: 'nope' })])), /^unlearning job J, round 2: unknown model version nope$/);
  await refused(f, () => f.store.commitUnlearning(job([replayed(1, { modelAfter: 'nope' }), replayed(2)])), /^unlearning job J, round 1: unknown model version nope$/);
  await refused(
    f,
    () => f.store.commitUnlearning(job([replayed(1, { modelBefore: f.v[0]!, modelAfter: f.v[1]! }), replayed(2, { modelBefore: f.v[0]! })])),
    new RegExp(`^unlearning job J: round 2 starts from ${f.v[0]}, but the replayed round before it ended at ${f.v[1]}$`),
  );
  await refused(
    f,
    () => f.store.commitUnlearning(job([replayed(1), replayed(2, { modelAfter: f.v[2]! })])),
    new RegExp(`^unlearning job J: round 2 names modelAfter ${f.v[2]} but its model is created by this commit$`),
  );
});

test('a refused unlearning commit removes the intermediate model blobs it had already written', async (t) => {
  const f = await fixture(t);
  // Round 1's intermediate model is planned (its blob written) before round 2 is found to be wrong.
  await refused(
    f,
    () => f.store.commitUnlearning(job([replayed(1), replayed(2, { modelAfter: f.v[2]! })], { intermediateModels: [{ round: 1, weights: weights(7) }] })),
    /round 2 names modelAfter/,
  );
});

test('commitUnlearning accepts a chain of existing versions and records them, and intermediate models as versions', async (t) => {
  const f = await fixture(t);
  const head = await f.store.commitUnlearning(
    job([replayed(1, { modelBefore: f.v[0]!, modelAfter: f.v[1]! }), replayed(2, { modelBefore: f.v[1]! })]),
  );
  const rounds = await f.store.listRounds({ lineage: head.lineage });
  assert.deepEqual(rounds.map((r) => [r.round, r.modelBefore, r.modelAfter]), [[1, f.v[0], f.v[1]], [2, f.v[1], head.version]]);
  const withIntermediate = await f.store.commitUnlearning(
    job([replayed(1, { roundId: 'w1', modelBefore: f.v[0]! }), replayed(2, { roundId: 'w2' })], { jobId: 'K', intermediateModels: [{ round: 1, weights: weights(8) }] }),
  );
  const [w1, w2] = await f.store.listRounds({ lineage: withIntermediate.lineage });
  assert.equal(w2!.modelAfter, withIntermediate.version);
  assert.equal(w2!.modelBefore, w1!.modelAfter, 'round 2 starts from the intermediate model of round 1');
  const mid = (await f.store.getModel(w1!.modelAfter))!;
  assert.deepEqual([mid.cause, mid.round, mid.jobId, mid.lineage, mid.parent], ['unlearning', 1, 'K', withIntermediate.lineage, f.v[0]]);
  assert.deepEqual(await f.store.readModel(mid.version), weights(8));
});

test('commitUnlearning with no replayed round makes the job result the new head of round 0 in a new lineage', async (t) => {
  const f = await fixture(t);
  const old = await f.store.head();
  const mv = await f.store.commitUnlearning(job([]));
  assert.deepEqual([mv.cause, mv.round, mv.jobId, mv.parent], ['unlearning', 0, 'J', old.version]);
  assert.notEqual(mv.lineage, old.lineage);
  assert.equal((await f.store.head()).version, mv.version);
  assert.deepEqual(await f.store.readModel(mv.version), weights(99));
  assert.deepEqual(await f.store.listRounds({ lineage: mv.lineage }), []);
});

test("replayed rounds keep their updates except under retention 'norms', which stores none", async (t) => {
  for (const retention of ['fp32', 'norms'] as const) {
    const f = await fixture(t, { config: { historyInterval: 1, retention } });
    await f.store.stageUpdate('u1', 'b', weights(5));
    await f.store.syncStaged('u1');
    const mv = await f.store.commitUnlearning(job([replayed(1, { participants: [participant('b', 5)] })]));
    const [r] = await f.store.listRounds({ lineage: mv.lineage });
    assert.equal(r!.updatesStored, retention !== 'norms', retention);
    assert.equal(r!.participants[0]!.hasUpdate, retention !== 'norms', retention);
    assert.deepEqual(await f.store.readUpdate('u1', 'b'), retention === 'norms' ? null : weights(5), retention);
  }
});

test('an unlearning commit removes the stagings of its rounds that it does not list', async (t) => {
  const f = await fixture(t);
  await f.store.stageUpdate('u1', 'a', weights(5));
  await f.store.stageUpdate('u1', 'b', weights(6));
  await f.store.syncStaged('u1');
  assert.equal(f.blobs().filter((b) => b.startsWith(`updates${path.sep}u1${path.sep}`)).length, 2);
  await f.store.commitUnlearning(job([replayed(1, { participants: [participant('b', 6)] })]));
  const left = f.blobs().filter((b) => b.startsWith(`updates${path.sep}u1${path.sep}`));
  assert.equal(left.length, 1, `only b's update is kept: ${left.join(', ')}`);
  assert.deepEqual(await f.store.readUpdate('u1', 'b'), weights(6));
  assert.equal(await f.store.readUpdate('u1', 'a'), null);
});

test("a purge keeps a revoked client's revocation on its tombstone", async (t) => {
  const f = await fixture(t);
  await f.store.upsertClient({ clientId: 'a', seenAt: 5, revoked: true });
  await f.store.upsertClient({ clientId: 'b', seenAt: 5 });
  await f.store.purgeClients(['a', 'b']);
  const a = (await f.store.getClient('a'))!;
  const b = (await f.store.getClient('b'))!;
  assert.deepEqual([a.forgotten, a.revoked], [true, true]);
  assert.deepEqual([b.forgotten, b.revoked], [true, false]);
});

test("a purge leaves other clients' stagings of a round in flight as they are", async (t) => {
  const f = await fixture(t);
  await f.store.stageUpdate('r3', 'a', weights(31));
  await f.store.stageUpdate('r3', 'c', weights(33));
  await f.store.purgeClients(['b']);
  await f.store.purgeClients(['a']);
  await f.store.syncStaged('r3');
  await f.store.commitRound({ round: 3, roundId: 'r3', modelBefore: f.v[2]!, weights: weights(3), participants: [participant('c', 33)], metrics: {}, startedAt: 3 });
  assert.deepEqual(await f.store.readUpdate('r3', 'c'), weights(33));
  assert.equal(f.blobs().filter((x) => x.startsWith(`updates${path.sep}r3${path.sep}`)).length, 1, "a's staging was dropped with a's purge");
});

test('syncStaged of a round with nothing staged is a no-op: no history write, so no pause point', async (t) => {
  const points: string[] = [];
  const f = await fixture(t, { store: { pause: async (p) => void points.push(p) } });
  points.length = 0;
  await f.store.syncStaged('nothing-here');
  assert.deepEqual(points, []);
  await f.store.stageUpdate('r3', 'a', weights(31));
  await f.store.syncStaged('r3');
  assert.deepEqual(points, ['history-write']);
  await f.store.syncStaged('r3');
  assert.deepEqual(points, ['history-write'], 'a round already durable writes nothing again');
});

test('finishUnlearning refuses an unknown job by name before any work: no blob written, no report computed', async (t) => {
  const f = await fixture(t);
  let reports = 0;
  await refused(
    f,
    () =>
      f.store.finishUnlearning({
        ...job([replayed(1)], { jobId: 'nope' }),
        purge: { clientIds: ['a'], eraseModels: false },
        finish: () => {
          reports++;
          return { state: 'done' };
        },
      }),
    /^unknown job nope$/,
  );
  assert.equal(reports, 0);
  assert.equal((await f.store.getClient('a'))?.forgotten ?? false, false, 'nobody was purged');
});

test("finishUnlearning's report sees the purge as not yet complete, and the job-purge pause point comes after the commit", async (t) => {
  const points: string[] = [];
  const f = await fixture(t, { store: { pause: async (p) => void points.push(p) } });
  await f.store.createJob({
    jobId: 'J',
    kind: 'forget',
    state: 'running',
    clientIds: ['a'],
    requestedBy: 'operator',
    method: 'replay',
    params: {},
    progress: { step: 0, total: 1 },
    checkpoint: null,
    report: null,
    error: null,
  });
  points.length = 0;
  const seen: { complete: boolean; head: string }[] = [];
  const out = await f.store.finishUnlearning({
    ...job([replayed(1)]),
    purge: { clientIds: ['a'], eraseModels: false },
    finish: (after, purged) => {
      seen.push({ complete: purged.complete, head: after.version });
      return { state: 'done' };
    },
  });
  // Inside the transaction the purged pages are still in the WAL: complete is only known after the checkpoint.
  assert.deepEqual(seen, [{ complete: false, head: out.model.version }]);
  assert.equal(out.purged.complete, true);
  assert.equal(out.job.state, 'done');
  assert.deepEqual(points, ['job-purge']);
});

/** A fresh directory and store, removed after the test. */
async function freshStore(t: TestContext): Promise<{ store: HistoryStore; dir: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-store-checks-'));
  const store = await openSqliteHistory(dir, {});
  t.after(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { store, dir };
}

/** Asserts that `run` is refused with a HistoryError whose whole message is `message`. */
async function refusedWith(run: () => unknown, message: string): Promise<void> {
  await assert.rejects(async () => run(), (e: unknown) => {
    assert.ok(e instanceof HistoryError, `a HistoryError, not ${String(e)}`);
    assert.equal(e.message, message);
    return true;
  });
}

test('open refuses a history config that is not a positive integer interval and a known retention, and creates no federation', async (t) => {
  const { store } = await freshStore(t);
  const init = (config: HistoryConfig) => ({ topologyJson, layout, initialWeights: weights(0), config });
  for (const historyInterval of [0, -1, 1.5, Number.NaN]) {
    await refusedWith(() => store.open(init({ historyInterval, retention: 'fp32' })), `historyInterval must be a positive integer, got ${historyInterval}`);
  }
  await refusedWith(() => store.open(init({ historyInterval: 1, retention: 'fp64' as HistoryConfig['retention'] })), 'unknown retention fp64');
  await refusedWith(() => store.open({ ...init(FP32), topologyJson: '{"name":' }), 'topologyJson is not valid JSON');
  // Nothing was recorded: the same store then opens a new federation. The smallest valid interval and every
  // retention are accepted.
  assert.equal((await store.open(init({ historyInterval: 1, retention: 'fp32' }))).resumed, false);
  for (const retention of ['fp16', 'int8', 'norms'] as const) {
    const { store: s } = await freshStore(t);
    assert.equal((await s.open(init({ historyInterval: 1, retention }))).resumed, false, retention);
  }
});

test('reopening refuses another layout, interval or retention, naming what is stored and what was given', async (t) => {
  const { store, dir } = await freshStore(t);
  const config: HistoryConfig = { historyInterval: 2, retention: 'fp16' };
  await store.open({ topologyJson, layout, initialWeights: weights(0), config });
  await store.close();
  const attempt = async (init: { layout?: typeof layout; config?: HistoryConfig; topologyJson?: string }) => {
    const s = await openSqliteHistory(dir, {});
    try {
      await s.open({ topologyJson, layout, initialWeights: weights(0), config, ...init });
    } finally {
      await s.close();
    }
  };
  // Same number of layers, another shape; and same shapes, another layer name.
  const wider = layoutOf([
    { name: 'dense/kernel', shape: [3, 3] },
    { name: 'dense/bias', shape: [3] },
  ]);
  await refusedWith(() => attempt({ layout: wider }), 'this data directory holds a federation whose model layout differs (2 layers, 8 values stored, 2 layers, 12 values given)');
  const renamed = layoutOf([
    { name: 'dense/kernel', shape: [3, 2] },
    { name: 'out/bias', shape: [2] },
  ]);
  await refusedWith(() => attempt({ layout: renamed }), 'this data directory holds a federation whose model layout differs (2 layers, 8 values stored, 2 layers, 8 values given)');
  const schedule = (given: string) =>
    `this federation keeps history with historyInterval 2 / retention fp16; ${given} was given (the schedule cannot change mid-history)`;
  await refusedWith(() => attempt({ config: { historyInterval: 3, retention: 'fp16' } }), schedule('3 / fp16'));
  await refusedWith(() => attempt({ config: { historyInterval: 2, retention: 'int8' } }), schedule('2 / int8'));
  await refusedWith(() => attempt({ topologyJson: '{"name":"tiny","layers":["dense","conv"]}' }), 'this data directory holds a federation with a different topology; use another data directory');
  const s = await openSqliteHistory(dir, {});
  t.after(() => s.close());
  assert.equal((await s.open({ topologyJson, layout, initialWeights: weights(0), config })).resumed, true, 'the same federation still resumes');
});

/** Round 3 on top of the fixture's head, with `extra` replacing fields. */
function round3(f: Fixture, extra: Record<string, unknown> = {}) {
  return { round: 3, roundId: 'r3', modelBefore: f.v[2]!, weights: weights(3), participants: [participant('a')], metrics: {}, startedAt: 3, ...extra } as Parameters<HistoryStore['commitRound']>[0];
}

test('commitRound refuses a stale model, a repeated round, an empty or committed round id, with what it expected', async (t) => {
  const f = await fixture(t);
  await refused(f, () => f.store.commitRound(round3(f, { modelBefore: f.v[1]! })), new RegExp(`^round 3 started from model ${f.v[1]}, but the head is ${f.v[2]}$`));
  await refused(f, () => f.store.commitRound(round3(f, { round: 2 })), /^round 2 is out of order: lineage \S+ has completed 2 rounds, the next is 3$/);
  await refused(f, () => f.store.commitRound(round3(f, { roundId: '' })), /^a round needs a non-empty roundId$/);
  await refused(f, () => f.store.commitRound(round3(f, { roundId: 'r1' })), /^round id r1 is already committed$/);
});

test("commitRound refuses a participant's example count, norms or sensitivity by value, and keeps valid edge values", async (t) => {
  const f = await fixture(t);
  const a = participant('a');
  for (const numExamples of [-1, 1.5, Number.NaN]) {
    await refused(f, () => f.store.commitRound(round3(f, { participants: [{ ...a, numExamples }] })), new RegExp(`^round 3: client a has numExamples ${numExamples}$`));
  }
  await refused(f, () => f.store.commitRound(round3(f, { participants: [{ ...a, norms: [1] }] })), /^round 3: client a has 1 norms for 2 layers$/);
  await refused(f, () => f.store.commitRound(round3(f, { participants: [{ ...a, norms: [1, 2, 3] }] })), /^round 3: client a has 3 norms for 2 layers$/);
  for (const bad of [-0.5, Number.NaN, Number.POSITIVE_INFINITY]) {
    await refused(f, () => f.store.commitRound(round3(f, { participants: [{ ...a, norms: [1, bad] }] })), /^round 3: client a has a negative or non-finite norm$/);
  }
  for (const sensitivity of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
    await refused(f, () => f.store.commitRound(round3(f, { participants: [{ ...a, sensitivity }] })), new RegExp(`^round 3: client a has sensitivity ${sensitivity} \\(a finite number >= 0\\)$`));
  }
  // The bounds themselves are accepted: no examples, zero norms, sensitivity 0 and the largest finite one; the
  // participant's metrics are kept.
  await f.store.commitRound(
    round3(f, {
      participants: [
        { clientId: 'a', numExamples: 0, norms: [0, 0], sensitivity: 0, metrics: { loss: 0.25 } },
        { clientId: 'b', numExamples: 4, norms: [1, 2], sensitivity: Number.MAX_VALUE },
      ],
    }),
  );
  const r = (await f.store.getRound(3))!;
  const [pa, pb] = ['a', 'b'].map((c) => r.participants.find((p) => p.clientId === c)!);
  assert.deepEqual([pa!.numExamples, Array.from(pa!.norms), pa!.sensitivity, pa!.metrics], [0, [0, 0], 0, { loss: 0.25 }]);
  assert.deepEqual([pb!.numExamples, Array.from(pb!.norms), pb!.sensitivity], [4, [1, 2], Number.MAX_VALUE]);
});

test("commitRound refuses a missing list's unnamed client and unknown reason by value, and keeps a detail as text", async (t) => {
  const f = await fixture(t);
  await refused(f, () => f.store.commitRound(round3(f, { missing: [{ clientId: '', reason: 'offline' }] })), /^round 3: a missing client has no id$/);
  await refused(f, () => f.store.commitRound(round3(f, { missing: [{ clientId: 'b', reason: 'asleep' }] })), /^round 3: missing client b has unknown reason 'asleep'$/);
  await refused(
    f,
    () => f.store.commitRound(round3(f, { missing: [{ clientId: 'b', reason: 'offline' }, { clientId: 'b', reason: 'deadline' }] })),
    /^round 3: client b is missing twice$/,
  );
  const reasons = ['offline', 'disconnected', 'deadline', 'rejected', 'failed'] as const;
  const missing = reasons.map((reason, i) => (i === 0 ? { clientId: `m${i}`, reason, detail: 42 as unknown as string } : { clientId: `m${i}`, reason }));
  await f.store.commitRound(round3(f, { missing }));
  assert.deepEqual((await f.store.getRound(3))!.missing, [{ clientId: 'm0', reason: 'offline', detail: '42' }, ...missing.slice(1)]);
});

test('a round id or missing client id that is not a string is refused as missing, by commitRound and commitUnlearning alike', async (t) => {
  const f = await fixture(t);
  const none = undefined as unknown as string;
  await refused(f, () => f.store.commitRound(round3(f, { roundId: none })), /^a round needs a non-empty roundId$/);
  await refused(f, () => f.store.commitRound(round3(f, { missing: [{ clientId: none, reason: 'offline' }] })), /^round 3: a missing client has no id$/);
  // Refused before the store looks the id up (a lookup of undefined would fail with a driver error, not this one).
  await refused(f, () => f.store.commitUnlearning(job([replayed(1, { roundId: none })])), /^a round needs a non-empty roundId$/);
  await refused(f, () => f.store.commitUnlearning(job([replayed(1, { roundId: '' })])), /^a round needs a non-empty roundId$/);
});

test('commitUnlearning refuses an already committed round id before it writes or flushes anything', async (t) => {
  const fsyncs: string[] = [];
  const disk: DiskSync = {
    fsyncSync: (fd, file) => (fsyncs.push(file), kernelSync.fsyncSync(fd, file)),
    fsync: async (handle, file) => (fsyncs.push(file), kernelSync.fsync(handle, file)),
    commit: kernelSync.commit,
  };
  const f = await fixture(t, { store: { disk } });
  fsyncs.length = 0;
  await refused(f, () => f.store.commitUnlearning(job([replayed(1, { roundId: 'r2' }), replayed(2)])), /^round id r2 is already committed$/);
  assert.deepEqual(fsyncs, [], 'the refusal came before the model blobs were planned');
});
