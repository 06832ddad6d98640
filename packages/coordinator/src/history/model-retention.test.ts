import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import { modelsToPrune } from './model-retention.js';
import { openSqliteHistory } from './sqlite-store.js';
import { ModelPrunedError, type HistoryStore } from './store.js';

const layout = layoutOf([{ name: 'dense/kernel', shape: [8, 4] }, { name: 'dense/bias', shape: [4] }]);
const topologyJson = JSON.stringify({ name: 'tiny' });
const config = { historyInterval: 2, retention: 'fp32' as const };

function weights(seed: number): Float32Array {
  return Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(seed * 31 + i));
}

async function train(store: HistoryStore, rounds: number): Promise<void> {
  for (let k = 0; k < rounds; k++) {
    const head = await store.head();
    const update = weights(100 + head.round);
    if (await store.keepsUpdates(head.round + 1)) await store.stageUpdate(`r${head.round + 1}`, 'c1', update);
    (await store.commitRound({
      round: head.round + 1,
      roundId: `r${head.round + 1}`,
      modelBefore: head.version,
      weights: weights(head.round + 1),
      participants: [{ clientId: 'c1', numExamples: 10, norms: layerNorms(layout, update) }],
      metrics: {},
      startedAt: 1_000 + head.round,
    }));
  }
}

function blobFiles(dir: string): number {
  return fs.readdirSync(path.join(dir, 'blobs'), { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).length;
}

test('the retention policy keeps the last N, every k-th round, the head and the initial model; pruning keeps the records and deletes the blobs', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-retention-'));
  try {
    let store = openSqliteHistory(dir);
    await store.open({ topologyJson, layout, initialWeights: weights(0), config });
    await train(store, 6);
    const ctx = async () => ({ head: (await store.head()).version, headRounds: await store.listRounds(), reported: new Set<string>() });
    const round = async (n: number) => (await store.listModels()).find((m) => m.cause === 'round' && m.round === n)!.version;
    // Last 2: rounds 5 and 6; every 3rd: rounds 3 and 6; always: the initial model (also the lineage's first model).
    const victims = modelsToPrune((await store.listModels()), await ctx(), { keepLast: 2, keepEvery: 3 });
    assert.deepEqual(victims, [(await round(1)), await round(2), await round(4)]);
    assert.deepEqual(modelsToPrune((await store.listModels()), await ctx(), { keepLast: 0, keepEvery: 3 }), [], 'keepLast 0 keeps every version');
    assert.deepEqual(modelsToPrune((await store.listModels()), { ...(await ctx()), reported: new Set([(await round(2))]) }, { keepLast: 2, keepEvery: 3 }), [(await round(1)), await round(4)], 'a job report names it');

    const before = blobFiles(dir);
    const { pruned, bytesDeleted } = await store.pruneModels(victims);
    assert.deepEqual(pruned, victims);
    assert.ok(bytesDeleted > 0);
    assert.equal(blobFiles(dir), before - 3, 'their blob files are gone, the updates stay');
    for (const v of victims) {
      assert.equal(typeof (await store.getModel(v))!.prunedAt, 'number');
      await assert.rejects(store.readModel(v), ModelPrunedError);
    }
    assert.deepEqual(await store.readModel(await round(3)), weights(3), 'kept ones read back');
    assert.equal((await store.stats()).modelsPruned, 3);
    assert.equal((await store.stats()).models, 7);
    assert.deepEqual((await store.pruneModels(victims)).pruned, [], 'pruning again is a no-op');
    await assert.rejects(store.pruneModels([(await store.head()).version]), /head model .* cannot be pruned/);
    assert.deepEqual(modelsToPrune((await store.listModels()), await ctx(), { keepLast: 2, keepEvery: 3 }), [], 'nothing left to prune under the same policy');

    // Reopened: the records and the pruning stay, and the stored updates are untouched.
    await store.close();
    store = openSqliteHistory(dir);
    await store.open({ topologyJson, layout, initialWeights: weights(0), config });
    assert.equal((await store.stats()).modelsPruned, 3);
    assert.equal((await store.listRounds()).length, 6);
    assert.notEqual(await store.readUpdate('r1', 'c1'), null, 'the updates unlearning replays are not model versions');
    await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a client issued a credential but never connected has no sightings (0) until its first connection', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-seen-'));
  try {
    const store = openSqliteHistory(dir);
    await store.open({ topologyJson, layout, initialWeights: weights(0), config });
    await store.upsertClient({ clientId: 'c1', secretHash: 'h', numExamples: 0, seenAt: 0 });
    assert.deepEqual([(await store.getClient('c1'))!.firstSeen, (await store.getClient('c1'))!.lastSeen], [0, 0]);
    await store.upsertClient({ clientId: 'c1', numExamples: 5, seenAt: 5_000 });
    assert.deepEqual([(await store.getClient('c1'))!.firstSeen, (await store.getClient('c1'))!.lastSeen], [5_000, 5_000]);
    (await store.upsertClient({ clientId: 'c1', seenAt: 0 })); // a rotation of a client seen before keeps its sightings
    assert.deepEqual([(await store.getClient('c1'))!.firstSeen, (await store.getClient('c1'))!.lastSeen], [5_000, 5_000]);
    await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
