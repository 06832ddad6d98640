import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import type { JobRecord, ParticipantInput } from '../store.js';
import { openPgHistory, type PgHistoryStore } from './pg-store.js';
import { dropSchemas, filesWith, freshSchemaName, relationFiles, schemaUrl } from './pg.test-support.js';

/**
 * The end of a forget job on PostgreSQL: new head, purge, tombstones and job state in ONE transaction (a throw inside
 * leaves none of it), the purged bytes gone from the relation files, and a running job's stagings surviving a restart
 * (a new store instance: memory lost) to be stored by its commit.
 */

const layout = layoutOf([
  { name: 'dense/kernel', shape: [6, 4] },
  { name: 'dense/bias', shape: [4] },
]);
const topologyJson = JSON.stringify({ name: 'tiny' });
const config = { historyInterval: 1, retention: 'fp32' as const };
/** Two float32 values no honest update here holds; the forgotten client's update carries them side by side. */
const MARK_A = 7777.125;
const MARK_B = -3141.5;
const schemas: string[] = [];
after(() => dropSchemas(schemas));

function markedUpdate(): Float32Array {
  const u = new Float32Array(layout.totalSize);
  u[layout.totalSize - 4] = MARK_A;
  u[layout.totalSize - 3] = MARK_B;
  return u;
}

function markers(): { update: Buffer; norm: Buffer } {
  const update = Buffer.from(new Float32Array([MARK_A, MARK_B]).buffer);
  const norm = Buffer.from(new Float64Array([layerNorms(layout, markedUpdate())[1]!]).buffer);
  return { update, norm };
}

async function history(rounds: number): Promise<{ store: PgHistoryStore; initial: string; schema: string }> {
  const schema = freshSchemaName();
  schemas.push(schema);
  const r = seedrandom('finish');
  const rand = () => Float32Array.from({ length: layout.totalSize }, () => r() - 0.5);
  const store = await openPgHistory(schemaUrl(schema));
  const { head } = await store.open({ topologyJson, layout, initialWeights: rand(), config });
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
  return { store, initial: head.version, schema };
}

function runningJob(store: PgHistoryStore): Promise<JobRecord> {
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
async function replayed(store: PgHistoryStore, initial: string, rounds: number) {
  const out = [];
  for (let t = 1; t <= rounds; t++) {
    const u = (await store.readUpdate(`r${t}`, 'k'))!;
    await store.stageUpdate(`x${t}`, 'k', u);
    out.push({ round: t, roundId: `x${t}`, modelBefore: t === 1 ? initial : '', participants: [{ clientId: 'k', numExamples: 10, norms: layerNorms(layout, u) }], metrics: {}, startedAt: t, closedAt: t });
  }
  return out;
}

test('PostgreSQL: finishUnlearning commits the new head, the purge, the tombstone and the job state together, or none of them', async () => {
  const { store, initial, schema } = await history(3);
  try {
    await runningJob(store);
    const rounds = await replayed(store, initial, 3);
    const before = { head: await store.head(), models: (await store.listModels()).length, modelBlobs: (await store.blobs.list('models/')).length };
    const weights = new Float32Array(layout.totalSize).fill(0.5);

    await assert.rejects(
      store.finishUnlearning({ jobId: 'job-1', weights, rounds, purge: { clientIds: ['u'], eraseModels: true }, finish: () => { throw new Error('report failed'); } }),
      /report failed/,
    );
    assert.deepEqual(await store.head(), before.head);
    assert.equal((await store.listModels()).length, before.models);
    assert.equal((await store.blobs.list('models/')).length, before.modelBlobs, 'no model blob of the failed commit is left');
    assert.equal(await store.isForgotten('u'), false);
    assert.equal((await store.getClient('u'))!.secretHash, 'hash-of-u');
    assert.equal((await store.listRounds()).flatMap((r) => r.participants).filter((p) => p.clientId === 'u').length, 3);
    assert.equal((await store.getJob('job-1'))!.state, 'running');
    const m = markers();
    assert.ok(filesWith(await relationFiles(schema), m.update) > 0, 'the update marker is on disk before (the search works)');
    assert.ok(filesWith(await relationFiles(schema), m.norm) > 0, 'and so are its norms');

    let seen: { version: string; erased: number } | null = null;
    const out = await store.finishUnlearning({
      jobId: 'job-1',
      weights,
      rounds,
      purge: { clientIds: ['u'], eraseModels: true },
      finish: (afterModel, purged) => {
        seen = { version: afterModel.version, erased: purged.modelsErased.length };
        return { state: 'done', report: { after: afterModel.version, purged } };
      },
    });
    assert.equal((await store.head()).version, out.model.version);
    assert.deepEqual(seen, { version: out.model.version, erased: 3 });
    assert.equal(out.job.state, 'done');
    assert.equal(out.job.checkpoint, null);
    assert.deepEqual(await store.jobSteps('job-1'), []);
    assert.equal(await store.isForgotten('u'), true);
    assert.equal((await store.getClient('u'))!.secretHash, null);
    assert.equal(out.purged.updatesDeleted, 3);
    assert.equal(out.purged.complete, true, 'no reader: the vacuum completed at once');
    for (const lineage of new Set((await store.listModels()).map((v) => v.lineage))) {
      assert.equal((await store.listRounds({ lineage })).flatMap((r) => r.participants).filter((p) => p.clientId === 'u').length, 0);
    }
    assert.equal(filesWith(await relationFiles(schema), m.update), 0, "no relation file holds the forgotten client's update");
    assert.equal(filesWith(await relationFiles(schema), m.norm), 0, "no relation file holds the forgotten client's norms");
  } finally {
    await store.close();
  }
});

test("PostgreSQL: a running job's staged updates, recorded with its steps, survive a restart and are stored by its commit; the rest are collected", async () => {
  const { store, initial, schema } = await history(2);
  await runningJob(store);
  const rounds = await replayed(store, initial, 2);
  for (const [i, r] of rounds.entries()) await store.appendJobStep('job-1', { step: i, data: { roundId: r.roundId } }, { steps: i + 1 }, r.roundId);
  // A staging of an ordinary round in flight when the process died: not the job's, collected at the next open.
  await store.stageUpdate('r3', 'k', new Float32Array(layout.totalSize).fill(1));
  await store.close();

  const again = await openPgHistory(schemaUrl(schema));
  try {
    await again.open({ topologyJson, layout, initialWeights: new Float32Array(layout.totalSize), config });
    assert.deepEqual(await again.blobs.list('updates/r3/'), [], 'the stray staging was collected');
    const out = await again.finishUnlearning({ jobId: 'job-1', weights: new Float32Array(layout.totalSize), rounds, purge: { clientIds: ['u'], eraseModels: false }, finish: () => ({ state: 'done' }) });
    const stored = await again.listRounds({ lineage: out.model.lineage });
    assert.deepEqual(stored.map((r) => r.participants.map((p) => [p.clientId, p.hasUpdate])), [[['k', true]], [['k', true]]], 'the resumed job stored the updates it staged before the restart');
    for (const [t, r] of stored.entries()) assert.deepEqual(await again.readUpdate(r.roundId, 'k'), await again.readUpdate(`r${t + 1}`, 'k'));
    // Nothing is left over: every update blob is one a row refers to.
    assert.equal((await again.blobs.list('updates/')).length, (await again.stats()).updates);
  } finally {
    await again.close();
  }
});

test('PostgreSQL: clearJobSteps drops a failed job’s steps and the updates it staged', async () => {
  const { store, initial } = await history(1);
  try {
    await runningJob(store);
    const rounds = await replayed(store, initial, 1);
    await store.appendJobStep('job-1', { step: 0, data: {} }, { steps: 1 }, rounds[0]!.roundId);
    assert.equal((await store.blobs.list('updates/x1/')).length, 1);
    await store.clearJobSteps('job-1');
    assert.deepEqual(await store.jobSteps('job-1'), []);
    assert.deepEqual(await store.blobs.list('updates/x1/'), []);
  } finally {
    await store.close();
  }
});
