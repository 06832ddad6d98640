import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { DB_FILE, openSqliteHistory, WAL_SIZE_LIMIT } from './sqlite-store.js';
import type { HistoryStore, JobRecord, ParticipantInput } from './store.js';

/**
 * The end of a forget job as one transaction (new head, purge, tombstones, job state), and purged bytes leaving
 * every file of the data directory even while another process holds a read transaction on the database.
 */

const layout = layoutOf([
  { name: 'dense/kernel', shape: [6, 4] },
  { name: 'dense/bias', shape: [4] },
]);
const topologyJson = JSON.stringify({ name: 'tiny' });
/** Two float32 values no honest update here holds; the forgotten client's update carries them side by side. */
const MARK_A = 7777.125;
const MARK_B = -3141.5;

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-finish-'));
}

function filesUnder(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

/** The files of the data directory holding `needle` anywhere. */
function filesHolding(dir: string, needle: Buffer): string[] {
  return filesUnder(dir).filter((f) => fs.readFileSync(f).includes(needle));
}

/** An update of the forgotten client: zero but for the markers in the bias, so its norms are known too. */
function markedUpdate(): Float32Array {
  const u = new Float32Array(layout.totalSize);
  u[layout.totalSize - 4] = MARK_A;
  u[layout.totalSize - 3] = MARK_B;
  return u;
}

function markers(): { update: Buffer; norm: Buffer } {
  const u = markedUpdate();
  const update = Buffer.from(new Float32Array([MARK_A, MARK_B]).buffer);
  const norm = Buffer.from(new Float64Array([layerNorms(layout, u)[1]!]).buffer);
  return { update, norm };
}

async function history(dir: string, rounds: number): Promise<{ store: HistoryStore; initial: string }> {
  const r = seedrandom('finish');
  const rand = () => Float32Array.from({ length: layout.totalSize }, () => r() - 0.5);
  const store = openSqliteHistory(dir);
  const { head } = await store.open({ topologyJson, layout, initialWeights: rand(), config: { historyInterval: 1, retention: 'fp32' } });
  await store.upsertClient({ clientId: 'u', secretHash: 'hash-of-u', numExamples: 10, seenAt: 1 });
  await store.upsertClient({ clientId: 'k', secretHash: 'hash-of-k', numExamples: 10, seenAt: 1 });
  for (let t = 1; t <= rounds; t++) {
    const h = await store.head();
    const roundId = `r${t}`;
    const participants: ParticipantInput[] = [];
    for (const [clientId, update] of [['u', markedUpdate()], ['k', rand()]] as const) {
      await store.stageUpdate(roundId, clientId, update);
      participants.push({ clientId, numExamples: 10, norms: layerNorms(layout, update) });
    }
    await store.syncStaged(roundId);
    await store.commitRound({ round: t, roundId, modelBefore: h.version, weights: rand(), participants, metrics: {}, startedAt: t });
  }
  return { store, initial: head.version };
}

function runningJob(store: HistoryStore): Promise<JobRecord> {
  return store.createJob({
    jobId: 'job-1',
    kind: 'forget',
    state: 'running',
    clientIds: ['u'],
    requestedBy: 'operator',
    method: 'replay',
    params: {},
    progress: { step: 0, total: 0 },
    checkpoint: { steps: 1 },
    report: null,
    error: null,
  });
}

/** The replay the job applied: k's updates only, staged under fresh round ids. */
async function replayed(store: HistoryStore, initial: string, rounds: number) {
  const out = [];
  for (let t = 1; t <= rounds; t++) {
    const u = (await store.readUpdate(`r${t}`, 'k'))!;
    await store.stageUpdate(`x${t}`, 'k', u);
    out.push({ round: t, roundId: `x${t}`, modelBefore: t === 1 ? initial : '', participants: [{ clientId: 'k', numExamples: 10, norms: layerNorms(layout, u) }], metrics: {}, startedAt: t, closedAt: t });
  }
  return out;
}

/** Another process holding a read transaction on history.db, as a backup or monitoring tool does. */
async function reader(dir: string): Promise<{ proc: ChildProcess; release(): Promise<void> }> {
  const sqlite = createRequire(import.meta.url).resolve('better-sqlite3');
  const script = `
    const Database = require(process.argv[1]);
    const db = new Database(process.argv[2]);
    db.prepare('BEGIN').run();
    db.prepare('SELECT COUNT(*) AS n FROM participants').get();
    process.stdout.write('reading\\n');
    process.stdin.once('data', () => { db.prepare('COMMIT').run(); db.close(); process.exit(0); });`;
  const proc = spawn(process.execPath, ['-e', script, sqlite, path.join(dir, DB_FILE)], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once('line', (l) => (l === 'reading' ? resolve() : reject(new Error(l))));
    proc.once('exit', (code) => reject(new Error(`reader exited (${code})`)));
  });
  return {
    proc,
    release: () =>
      new Promise<void>((resolve) => {
        proc.once('exit', () => resolve());
        proc.stdin!.write('go\n');
      }),
  };
}

test('finishUnlearning commits the new head, the purge, the tombstone and the job state together, or none of them', async () => {
  const dir = tmpDir();
  try {
    const { store, initial } = await history(dir, 3);
    await runningJob(store);
    const rounds = await replayed(store, initial, 3);
    const before = { head: await store.head(), models: (await store.listModels()).length, files: filesUnder(dir).filter((f) => f.includes('models')).length };
    const weights = new Float32Array(layout.totalSize).fill(0.5);

    // A failure inside the transaction (here: computing the job's final state) rolls everything back.
    await assert.rejects(
      store.finishUnlearning({ jobId: 'job-1', weights, rounds, purge: { clientIds: ['u'], eraseModels: true }, finish: () => { throw new Error('report failed'); } }),
      /report failed/,
    );
    assert.deepEqual((await store.head()), before.head);
    assert.equal((await store.listModels()).length, before.models);
    assert.equal(filesUnder(dir).filter((f) => f.includes('models')).length, before.files, 'no model blob of the failed commit is left');
    assert.equal((await store.isForgotten('u')), false);
    assert.equal((await store.getClient('u'))!.secretHash, 'hash-of-u');
    assert.equal((await store.listRounds()).flatMap((r) => r.participants).filter((p) => p.clientId === 'u').length, 3);
    assert.equal((await store.getJob('job-1'))!.state, 'running');

    // The same commit succeeds: all of it at once.
    let seen: { version: string; erased: number } | null = null;
    const out = await store.finishUnlearning({
      jobId: 'job-1',
      weights,
      rounds,
      purge: { clientIds: ['u'], eraseModels: true },
      finish: (after, purged) => {
        seen = { version: after.version, erased: purged.modelsErased.length };
        return { state: 'done', report: { after: after.version, purged } };
      },
    });
    assert.equal((await store.head()).version, out.model.version);
    assert.deepEqual(seen, { version: out.model.version, erased: 3 });
    assert.equal(out.job.state, 'done');
    assert.equal(out.job.checkpoint, null);
    assert.deepEqual((await store.jobSteps('job-1')), []);
    assert.equal((await store.isForgotten('u')), true);
    assert.equal((await store.getClient('u'))!.secretHash, null);
    assert.equal(out.purged.updatesDeleted, 3);
    assert.equal(out.purged.complete, true, 'no reader: the WAL checkpoint completed at once');
    for (const lineage of new Set((await store.listModels()).map((m) => m.lineage))) {
      assert.equal((await store.listRounds({ lineage })).flatMap((r) => r.participants).filter((p) => p.clientId === 'u').length, 0);
    }
    const m = markers();
    assert.deepEqual(filesHolding(dir, m.update), [], "no file holds the forgotten client's update");
    assert.deepEqual(filesHolding(dir, m.norm), [], "no file holds the forgotten client's norms");
    await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('with another process holding a read transaction, the purge is incomplete until the reader ends, then no byte of it is left', async () => {
  const dir = tmpDir();
  let proc: ChildProcess | undefined;
  try {
    const { store, initial } = await history(dir, 3);
    await runningJob(store);
    const m = markers();
    assert.ok(filesHolding(dir, m.update).length > 0 && filesHolding(dir, m.norm).length > 0, 'the scan finds the markers before the purge');
    const rounds = await replayed(store, initial, 3);
    const held = await reader(dir);
    proc = held.proc;

    const out = await store.finishUnlearning({ jobId: 'job-1', weights: new Float32Array(layout.totalSize), rounds, purge: { clientIds: ['u'], eraseModels: true }, finish: () => ({ state: 'done' }) });
    assert.equal(out.purged.complete, false, 'the reader keeps the checkpoint from completing, and the purge says so');
    assert.equal((await store.completePurge()), false, 'retrying never waits on the reader, and says it is still incomplete');
    assert.ok(filesHolding(dir, m.norm).length > 0, 'pre-purge pages are indeed still on disk while the reader holds them');
    // Meanwhile the WAL grows with every commit (it cannot be reset under the reader)...
    for (let t = 0; t < 30; t++) (await store.upsertClient({ clientId: `c${t}`, secretHash: 'x'.repeat(2_000), numExamples: t, seenAt: t }));

    await held.release();
    assert.equal((await store.completePurge()), true);
    assert.deepEqual(filesHolding(dir, m.update), [], "no file holds the forgotten client's update");
    assert.deepEqual(filesHolding(dir, m.norm), [], "no file holds the forgotten client's norms");
    // ...and is truncated once the checkpoint completes.
    const wal = path.join(dir, `${DB_FILE}-wal`);
    assert.ok(!fs.existsSync(wal) || fs.statSync(wal).size <= WAL_SIZE_LIMIT, 'the WAL is cut back');
    assert.equal(fs.existsSync(wal) ? fs.statSync(wal).size : 0, 0);
    await store.close();
  } finally {
    proc?.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a running job's staged updates, recorded with its steps, survive a restart and are stored by its commit", async () => {
  const dir = tmpDir();
  try {
    const { store, initial } = await history(dir, 2);
    await runningJob(store);
    const rounds = await replayed(store, initial, 2);
    // The job checkpoints its two steps with their rounds' stagings, then the process dies (close: memory is lost).
    for (const [i, r] of rounds.entries()) await store.appendJobStep('job-1', { step: i, data: { roundId: r.roundId } }, { steps: i + 1 }, r.roundId);
    await store.close();

    const again = openSqliteHistory(dir);
    await again.open({ topologyJson, layout, initialWeights: new Float32Array(layout.totalSize), config: { historyInterval: 1, retention: 'fp32' } });
    const out = await again.finishUnlearning({ jobId: 'job-1', weights: new Float32Array(layout.totalSize), rounds, purge: { clientIds: ['u'], eraseModels: false }, finish: () => ({ state: 'done' }) });
    const stored = await again.listRounds({ lineage: out.model.lineage });
    assert.deepEqual(stored.map((r) => r.participants.map((p) => [p.clientId, p.hasUpdate])), [[['k', true]], [['k', true]]], 'the resumed job stored the updates it staged before the restart');
    for (const [t, r] of stored.entries()) assert.deepEqual(await again.readUpdate(r.roundId, 'k'), await again.readUpdate(`r${t + 1}`, 'k'));
    await again.close();
    // Nothing is left over: a reopen keeps exactly what the rows refer to.
    const third = openSqliteHistory(dir);
    await third.open({ topologyJson, layout, initialWeights: new Float32Array(layout.totalSize), config: { historyInterval: 1, retention: 'fp32' } });
    assert.equal(filesUnder(path.join(dir, 'blobs', 'updates')).length, (await third.stats()).updates);
    await third.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
