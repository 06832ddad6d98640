import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import { openSqliteHistory } from './sqlite-store.js';
import type { HistoryConfig } from './store.js';
import seedrandom from 'seedrandom';

const layout = layoutOf([
  { name: 'conv/kernel', shape: [3, 3, 1, 2] },
  { name: 'conv/bias', shape: [2] },
  { name: 'dense/kernel', shape: [6, 4] },
  { name: 'dense/bias', shape: [4] },
]);
const topologyJson = JSON.stringify({ name: 'tiny', layers: ['conv', 'dense'] });

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-history-'));
}

/** Seeded, so that every figure a test compares against is recomputed from the seed, never remembered. */
const rng = (seed: number): (() => number) => seedrandom(String(seed));

function randomWeights(r: () => number, scale = 1): Float32Array {
  const v = new Float32Array(layout.totalSize);
  for (let i = 0; i < v.length; i++) v[i] = (r() * 2 - 1) * scale;
  return v;
}

function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

function bytesOf(v: Float32Array): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

// What every store does is in the contract suite (store-contract.ts, run on this store by
// sqlite-store.contract.test.ts). Here: what only the files under the data directory show.

test('open() deletes interrupted temporary files and stagings of rounds that never committed; committed blobs stay', async () => {
  const dir = tmpDir();
  try {
    const r = rng(11);
    const config: HistoryConfig = { historyInterval: 1, retention: 'fp32' };
    let store = openSqliteHistory(dir);
    const { head } = await store.open({ topologyJson, layout, initialWeights: randomWeights(r), config });
    const u = randomWeights(r, 0.1);
    await store.stageUpdate('r1', 'a', u);
    await store.commitRound({ round: 1, roundId: 'r1', modelBefore: head.version, weights: randomWeights(r), participants: [{ clientId: 'a', numExamples: 1, norms: layerNorms(layout, u) }], metrics: {}, startedAt: 0 });
    const committed = filesUnder(path.join(dir, 'blobs')).sort();
    await store.stageUpdate('open-round', 'a', randomWeights(r));
    fs.writeFileSync(path.join(dir, 'blobs', 'models', 'x.bin.tmp-deadbeef'), 'half-written'); // an interrupted write
    assert.equal(filesUnder(path.join(dir, 'blobs')).length, committed.length + 2);
    await store.close();

    store = openSqliteHistory(dir);
    await store.open({ topologyJson, layout, initialWeights: randomWeights(r), config });
    assert.deepEqual(filesUnder(path.join(dir, 'blobs')).sort(), committed);
    assert.equal(fs.existsSync(path.join(dir, 'blobs', 'updates', 'open-round')), false, 'the empty round directory goes too');
    assert.deepEqual(await store.readUpdate('r1', 'a'), u);
    await store.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
