import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import pg from 'pg';
import { FederatedClient } from '@fedunlearn/client';
import { Coordinator, createLogger, openPgHistory, type CoordinatorOptions, type JobReport, type RoundOutcome } from '@fedunlearn/coordinator';

type BlobStore = NonNullable<CoordinatorOptions['checkpoints']>;
import { connectClients, federation, mnistScenario, tempDir, waitUntil } from './support.js';

/**
 * The forget story on the PostgreSQL history store: a real coordinator whose history and job checkpoints live in a
 * fresh schema of the machine's PostgreSQL (FEDUNLEARN_TEST_PG_URL, default 127.0.0.1:5432/test), real SDK clients
 * training on MNIST, a client asking through its SDK to be forgotten, FedEraser replaying live, the purge, and a
 * restarted coordinator resuming from the unlearned model in the same schema. Fails when PostgreSQL does not answer.
 */

const PG_URL = process.env.FEDUNLEARN_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const schema = `fedunlearn_test_${randomBytes(6).toString('hex')}`;
const storeUrl = (() => {
  const u = new URL(PG_URL);
  u.searchParams.set('schema', schema);
  return u.toString();
})();
const scenario = mnistScenario(4, 60);
const dirs: { cleanup(): void }[] = [];
after(async () => {
  dirs.forEach((d) => d.cleanup());
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await c.end();
});

/** Keys the coordinator put into the PostgreSQL blob store as job checkpoints (the real store, its puts counted). */
const checkpointPuts: string[] = [];

async function start(dataDir: string): Promise<{ coordinator: Coordinator; url: string }> {
  const store = await openPgHistory(storeUrl);
  const blobs = store.blobs;
  const checkpoints: BlobStore = {
    put: (key, bytes) => (checkpointPuts.push(key), blobs.put(key, bytes)),
    makeDurable: (keys) => blobs.makeDurable(keys),
    get: (key) => blobs.get(key),
    delete: (keys) => blobs.delete(keys),
    list: (prefix) => blobs.list(prefix),
    discard: (keys) => blobs.discard(keys),
    close: () => blobs.close(),
  };
  const coordinator = await Coordinator.create({
    store,
    checkpoints,
    dataDir,
    model: scenario.def,
    federation: federation({ clientsPerRound: 4 }),
    historyInterval: 1,
    enrolment: 'open',
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  return { coordinator, url };
}

test('on PostgreSQL: a client asks to be forgotten, FedEraser runs live, its rows are purged, and a restarted coordinator resumes the unlearned lineage', async () => {
  const tmp = tempDir('forget-pg');
  dirs.push(tmp);
  const { coordinator, url } = await start(tmp.dir);
  const clients = await connectClients(url, scenario.parts);
  const rounds: RoundOutcome[] = [];
  coordinator.on('round', (r) => rounds.push(r));
  coordinator.start();
  await waitUntil(() => rounds.length >= 2, 90_000, 'two training rounds');
  const store = coordinator.store;
  const oldRounds = await store.listRounds();
  assert.ok(oldRounds.some((r) => r.participants.some((p) => p.clientId === 'device-0' && p.hasUpdate)), 'device-0 contributed stored updates');

  const jobId = await clients[0]!.forget('leaving');
  const final = await clients[0]!.waitForJob(jobId);
  assert.equal(final.state, 'done', final.message);
  const report = final.report as JobReport;
  assert.deepEqual(report.clientsForgotten, ['device-0']);
  assert.equal(report.method, 'federaser');
  assert.ok(report.roundsReplayed.length >= 2);
  assert.ok(report.purged.updatesDeleted >= 2, `device-0's stored updates were purged (${report.purged.updatesDeleted})`);
  assert.equal(report.purged.complete, true, 'the vacuum completed');

  for (const r of oldRounds) assert.equal(await store.readUpdate(r.roundId, 'device-0'), null);
  assert.ok((await store.listRounds({ lineage: oldRounds[0]!.lineage })).every((r) => r.participants.every((p) => p.clientId !== 'device-0')));
  assert.equal((await store.getClient('device-0'))?.forgotten, true);
  assert.equal((await store.getModel(report.modelAfter.version))?.jobId, jobId);
  // The job's checkpoints were blobs of the schema, and its scratch is gone now that it is done.
  assert.ok(checkpointPuts.some((k) => k.startsWith(`jobs/${jobId}/`)), `the job checkpointed its steps into PostgreSQL (${checkpointPuts.join(', ')})`);
  const c = new pg.Client({ connectionString: PG_URL });
  await c.connect();
  try {
    const left = await c.query(`SELECT key FROM ${schema}.blobs WHERE starts_with(key, 'jobs/')`);
    assert.equal(left.rowCount, 0, 'the finished job left no checkpoint blob');
  } finally {
    await c.end();
  }

  const seen = rounds.length;
  await waitUntil(() => rounds.length >= seen + 1, 90_000, 'a round after the job');
  const head = await store.head();
  assert.equal(head.lineage, (await store.getModel(report.modelAfter.version))?.lineage);
  for (const cl of clients) await cl.close();
  await coordinator.stop();

  // A new process over the same schema: it resumes the unlearned lineage, and device-0 stays out.
  const again = await start(tmp.dir);
  try {
    assert.deepEqual(again.coordinator.model().version, (await again.coordinator.store.head()).version);
    assert.ok((await again.coordinator.store.head()).round >= head.round);
    assert.equal((await again.coordinator.store.head()).lineage, head.lineage);
    const back = new FederatedClient({ url: again.url, clientId: 'device-0', secret: 'secret-of-device-0', data: scenario.parts[0]! });
    await assert.rejects(back.connect(5_000), /PERMISSION_DENIED/);
    await back.close();
  } finally {
    await again.coordinator.stop();
  }
});
