import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { layoutOf } from '@fedunlearn/protocol';
import { MIGRATIONS, migrate } from './migrations.js';
import { openSqliteHistory } from './sqlite-store.js';
import type { HistoryStore, MissingClient } from './store.js';

const layout = layoutOf([
  { name: 'dense/kernel', shape: [3, 2] },
  { name: 'dense/bias', shape: [2] },
]);
const topologyJson = JSON.stringify({ name: 'tiny-missing' });

async function openStore(dir: string): Promise<HistoryStore> {
  const store = openSqliteHistory(dir);
  await store.open({ topologyJson, layout, initialWeights: new Float32Array(layout.totalSize), config: { historyInterval: 1, retention: 'fp32' } });
  return store;
}

async function commit(store: HistoryStore, participants: string[], missing: MissingClient[]): Promise<void> {
  const head = await store.head();
  (await store.commitRound({
    round: head.round + 1,
    roundId: `r${head.round + 1}`,
    modelBefore: head.version,
    weights: new Float32Array(layout.totalSize).fill(head.round + 1),
    participants: participants.map((clientId) => ({ clientId, numExamples: 3, norms: [1, 1] })),
    missing,
    metrics: {},
    startedAt: 0,
  }));
}

test('a round keeps who was missing and why, across reopening; a purge drops the forgotten client from the list', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-missing-'));
  try {
    let store = await openStore(dir);
    const missing: MissingClient[] = [
      { clientId: 'b', reason: 'disconnected', detail: 'ping timeout' },
      { clientId: 'c', reason: 'deadline' },
      { clientId: 'x_1', reason: 'offline' },
    ];
    await commit(store, ['a'], missing);
    await commit(store, ['a', 'b'], []);
    await store.close();
    store = await openStore(dir);
    assert.deepEqual((await store.getRound(1))!.missing, missing);
    assert.deepEqual((await store.getRound(2))!.missing, []);
    await store.purgeClients(['b']);
    assert.deepEqual((await store.getRound(1))!.missing, missing.filter((m) => m.clientId !== 'b'));
    // 'x_1' contains a LIKE wildcard: purging 'x11' must not touch it.
    await store.purgeClients(['x11']);
    assert.equal((await store.getRound(1))!.missing.length, 2);
    await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('commitRound refuses a missing list that overlaps the participants, repeats a client or gives no known reason', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-missing-'));
  try {
    const store = await openStore(dir);
    await assert.rejects(commit(store, ['a'], [{ clientId: 'a', reason: 'deadline' }]), /both a participant and missing/);
    await assert.rejects(commit(store, ['a'], [{ clientId: 'b', reason: 'deadline' }, { clientId: 'b', reason: 'offline' }]), /missing twice/);
    await assert.rejects(commit(store, ['a'], [{ clientId: 'b', reason: 'asleep' as MissingClient['reason'] }]), /unknown reason/);
    assert.equal((await store.head()).round, 0);
    await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('migration 2 gives rounds recorded before it an empty missing list', () => {
  const db = new Database(':memory:');
  try {
    db.exec(MIGRATIONS[0]!);
    db.pragma('user_version = 1');
    db.prepare("INSERT INTO rounds (round_id, lineage, round, model_before, model_after, updates_stored, metrics_json, started_at, closed_at) VALUES ('old', 'L', 1, NULL, NULL, 0, '{}', 0, 0)").run();
    migrate(db);
    assert.equal((db.prepare("SELECT missing_json FROM rounds WHERE round_id = 'old'").get() as { missing_json: string }).missing_json, '[]');
  } finally {
    db.close();
  }
});
