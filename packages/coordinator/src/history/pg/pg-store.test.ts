import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import { HistoryError, type HistoryConfig, type ParticipantInput } from '../store.js';
import { openPgHistory, type PgHistoryOptions, type PgHistoryStore } from './pg-store.js';
import { dropSchemas, freshSchemaName, schemaUrl } from './pg.test-support.js';

/** What only the PostgreSQL store promises beyond the contract suite: several store instances (replicas) on one
 *  schema, and the per-client sensitivity column. */

const layout = layoutOf([
  { name: 'dense/kernel', shape: [6, 4] },
  { name: 'dense/bias', shape: [4] },
]);
const topologyJson = JSON.stringify({ name: 'replicas' });
const config: HistoryConfig = { historyInterval: 1, retention: 'fp32' };
const schemas: string[] = [];
after(() => dropSchemas(schemas));

function weights(seed: number): Float32Array {
  return Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(seed * 7 + i));
}

async function replicas(n: number, opts: PgHistoryOptions = {}): Promise<{ schema: string; stores: PgHistoryStore[] }> {
  const schema = freshSchemaName();
  schemas.push(schema);
  const stores: PgHistoryStore[] = [];
  for (let i = 0; i < n; i++) stores.push(await openPgHistory(schemaUrl(schema), opts));
  // Opened together, as replicas starting at once: one creates the federation, the others resume it.
  const opened = await Promise.all(stores.map((s) => s.open({ topologyJson, layout, initialWeights: weights(0), config })));
  assert.equal(opened.filter((o) => !o.resumed).length, 1);
  assert.equal(new Set(opened.map((o) => o.head.version)).size, 1);
  return { schema, stores };
}

const participant = (clientId: string, seed: number, extra: object = {}): ParticipantInput => ({ clientId, numExamples: 5, norms: layerNorms(layout, weights(seed)), ...extra });

test('an update staged on one replica is stored by a round another replica commits', async () => {
  const { stores } = await replicas(2, { stagingGraceMs: 60_000 });
  const [a, b] = stores as [PgHistoryStore, PgHistoryStore];
  try {
    await a.stageUpdate('r1', 'c-on-a', weights(11));
    await b.stageUpdate('r1', 'c-on-b', weights(12));
    await b.stageUpdate('r1', 'not-listed', weights(13));
    const head = await b.head();
    await b.commitRound({ round: 1, roundId: 'r1', modelBefore: head.version, weights: weights(1), participants: [participant('c-on-a', 11), participant('c-on-b', 12)], metrics: {}, startedAt: 1 });
    assert.deepEqual(await a.readUpdate('r1', 'c-on-a'), weights(11));
    assert.deepEqual(await a.readUpdate('r1', 'c-on-b'), weights(12));
    assert.equal(await a.readUpdate('r1', 'not-listed'), null);
    assert.equal((await a.stats()).updates, 2);
    // The unlisted staging went with the commit: nothing is left staged, nor its blob.
    const keys = await a.blobs.list('updates/r1/');
    assert.equal(keys.length, 2);
    assert.ok(keys.every((k) => !k.includes('not-listed')), keys.join(', '));
    // A replica starting now keeps another's stagings younger than the grace (a round in flight there).
    await a.stageUpdate('r2', 'c-on-a', weights(21));
    const c = await openPgHistory(schemaUrl(a.schema), { stagingGraceMs: 60_000 });
    await c.open({ topologyJson, layout, initialWeights: weights(0), config });
    const head2 = await a.head();
    await a.commitRound({ round: 2, roundId: 'r2', modelBefore: head2.version, weights: weights(2), participants: [participant('c-on-a', 21)], metrics: {}, startedAt: 2 });
    assert.deepEqual(await c.readUpdate('r2', 'c-on-a'), weights(21));
    await c.close();
  } finally {
    await Promise.all(stores.map((s) => s.close()));
  }
});

test('two replicas committing the same round from the same head: exactly one commit lands, the other is refused', async () => {
  const { stores } = await replicas(2);
  const [a, b] = stores as [PgHistoryStore, PgHistoryStore];
  try {
    const head = await a.head();
    const results = await Promise.allSettled([
      a.commitRound({ round: 1, roundId: 'ra', modelBefore: head.version, weights: weights(1), participants: [participant('x', 1)], metrics: {}, startedAt: 1 }),
      b.commitRound({ round: 1, roundId: 'rb', modelBefore: head.version, weights: weights(2), participants: [participant('y', 2)], metrics: {}, startedAt: 1 }),
    ]);
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.equal(ok.length, 1);
    assert.equal(refused.length, 1);
    assert.ok(refused[0]!.reason instanceof HistoryError, String(refused[0]!.reason));
    assert.equal((await a.listRounds()).length, 1);
    assert.equal((await b.head()).round, 1);
    assert.equal((await a.listModels()).length, 2, 'the refused commit left no model behind');
  } finally {
    await Promise.all(stores.map((s) => s.close()));
  }
});

test('a tombstone committed on one replica holds on every other at once; sensitivity is kept per participant, exactly, and absent when not given', async () => {
  const { stores } = await replicas(2);
  const [a, b] = stores as [PgHistoryStore, PgHistoryStore];
  try {
    const head = await a.head();
    const s = 0.1 + 0.2; // not representable in decimal: kept as float64, exactly
    await a.commitRound({
      round: 1,
      roundId: 'r1',
      modelBefore: head.version,
      weights: weights(1),
      participants: [participant('with', 1, { sensitivity: s }), participant('without', 2), participant('gone', 3)],
      metrics: {},
      startedAt: 1,
    });
    const ps = (await b.getRound(1))!.participants as (ParticipantInput & { sensitivity?: number })[];
    assert.equal(ps.find((p) => p.clientId === 'with')!.sensitivity, s);
    assert.ok(!('sensitivity' in ps.find((p) => p.clientId === 'without')!));
    const head1 = await a.head();
    await assert.rejects(
      a.commitRound({ round: 2, roundId: 'r2', modelBefore: head1.version, weights: weights(2), participants: [participant('bad', 1, { sensitivity: -1 })], metrics: {}, startedAt: 2 }),
      /sensitivity -1/,
    );

    await b.upsertClient({ clientId: 'gone', seenAt: 5, numExamples: 9 });
    assert.equal(await a.isForgotten('gone'), false);
    await a.purgeClients(['gone']);
    assert.equal(await b.isForgotten('gone'), true);
    assert.deepEqual((await b.getRound(1))!.participants.map((p) => p.clientId), ['with', 'without']);
  } finally {
    await Promise.all(stores.map((s) => s.close()));
  }
});

test('a store refuses calls after close, and a schema holding another federation is refused at open', async () => {
  const { schema, stores } = await replicas(1);
  const [a] = stores as [PgHistoryStore];
  await a.close();
  await assert.rejects(a.head(), /closed/);
  const other = await openPgHistory(schemaUrl(schema));
  try {
    await assert.rejects(other.open({ topologyJson: '{"name":"other"}', layout, initialWeights: weights(0), config }), /different topology/);
  } finally {
    await other.close();
  }
});

test('pruneModels keeps the records and deletes the blobs, refuses the head and unknown versions, and skips what is already gone', async () => {
  const { stores } = await replicas(1);
  const [a] = stores as [PgHistoryStore];
  try {
    for (let round = 1; round <= 3; round++) {
      const head = await a.head();
      await a.commitRound({ round, roundId: `r${round}`, modelBefore: head.version, weights: weights(round), participants: [participant('x', round)], metrics: {}, startedAt: round });
    }
    const models = await a.listModels();
    const head = await a.head();
    await assert.rejects(a.pruneModels([head.version]), /cannot be pruned/);
    await assert.rejects(a.pruneModels(['no-such-version']), /unknown model version/);
    const before = await a.stats();
    const out = await a.pruneModels([models[1]!.version, models[2]!.version]);
    assert.deepEqual(out.pruned, [models[1]!.version, models[2]!.version]);
    assert.equal(out.bytesDeleted, 2 * (before.modelBytes / models.length));
    assert.deepEqual(await a.pruneModels([models[1]!.version]), { pruned: [], bytesDeleted: 0 }, 'already pruned: skipped');
    await assert.rejects(a.readModel(models[1]!.version), (e: Error) => e.name === 'ModelPrunedError');
    assert.deepEqual(await a.readModel(models[0]!.version), weights(0));
    assert.equal((await a.getModel(models[1]!.version))!.prunedAt !== null, true);
    assert.equal((await a.listModels()).length, models.length, 'records kept');
    assert.equal((await a.blobs.list('models/')).length, models.length - 2, 'blobs gone');
    const after = await a.stats();
    assert.equal(after.modelsPruned, 2);
    assert.equal(after.modelBytes, before.modelBytes - out.bytesDeleted);
  } finally {
    await a.close();
  }
});
