import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { openSqliteHistory } from '../history/sqlite-store.js';
import { roundSelectionKey, selectClients } from './selection.js';

const ids = Array.from({ length: 30 }, (_, i) => `client-${String(i).padStart(3, '0')}`);

function shuffled(xs: string[], seed: number): string[] {
  const out = [...xs];
  const r = seedrandom(String(seed));
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

test('selection depends on the seed and key only, not on the order the candidates connected in', () => {
  for (const round of [1, 2, 7]) {
    const key = roundSelectionKey(0, round, 1);
    const want = selectClients(ids, 15, 29, key);
    assert.equal(want.length, 15);
    for (const seed of [1, 2, 3, 4]) assert.deepEqual(selectClients(shuffled(ids, seed), 15, 29, key), want, `connection order ${seed}`);
  }
  // Different rounds, attempts, lineage positions and seeds draw differently (not all the same 15 clients).
  const draws = [
    selectClients(ids, 15, 29, roundSelectionKey(0, 1, 1)),
    selectClients(ids, 15, 29, roundSelectionKey(0, 2, 1)),
    selectClients(ids, 15, 29, roundSelectionKey(0, 1, 2)),
    selectClients(ids, 15, 29, roundSelectionKey(1, 1, 1)),
    selectClients(ids, 15, 30, roundSelectionKey(0, 1, 1)),
  ].map((d) => [...d].sort().join());
  assert.equal(new Set(draws).size, draws.length);
  assert.throws(() => roundSelectionKey(-1, 1, 1), RangeError);
  assert.throws(() => roundSelectionKey(0, 0, 1), RangeError);
  assert.throws(() => roundSelectionKey(0, 1, 1.5), RangeError);
});

test('two federations created with one seed key their rounds alike: lineage positions, not the random lineage ids', async () => {
  const layout = layoutOf([{ name: 'w', shape: [4] }]);
  const init = Float32Array.from([0.1, 0.2, 0.3, 0.4]);
  const dirs = [0, 1].map(() => fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-selection-')));
  try {
    const stores = await Promise.all(dirs.map(async (d) => {
      const s = openSqliteHistory(d);
      await s.open({ topologyJson: '{}', layout, initialWeights: init, config: { historyInterval: 1, retention: 'fp32' } });
      return s;
    }));
    const [a, b] = stores as [(typeof stores)[0], (typeof stores)[0]];
    assert.notEqual((await a.head()).lineage, (await b.head()).lineage, 'lineage ids are random');
    assert.equal((await a.lineagePosition((await a.head()).lineage)), 0);
    assert.equal((await b.lineagePosition((await b.head()).lineage)), 0);
    assert.equal((await a.lineageCount()), 1);
    const key = async (s: typeof a, round: number) => roundSelectionKey(await s.lineagePosition((await s.head()).lineage), round, 1);
    assert.deepEqual(selectClients(shuffled(ids, 5), 15, 29, await key(b, 1)), selectClients(ids, 15, 29, await key(a, 1)));

    // A round and an unlearning commit: the new lineage is at position 1, the first stays at 0.
    const first = (await a.head()).lineage;
    const u = Float32Array.from([0.01, 0.02, 0.03, 0.04]);
    await a.stageUpdate('r1', 'client-000', u);
    await a.commitRound({ round: 1, roundId: 'r1', modelBefore: (await a.head()).version, weights: u, participants: [{ clientId: 'client-000', numExamples: 3, norms: layerNorms(layout, u) }], metrics: {}, startedAt: 1 });
    assert.equal((await a.lineagePosition(first)), 0, 'rounds do not move a lineage');
    await a.stageUpdate('j1', 'client-001', u);
    await a.commitUnlearning({
      jobId: 'job',
      weights: u,
      rounds: [{ round: 1, roundId: 'j1', modelBefore: (await a.listModels())[0]!.version, participants: [{ clientId: 'client-001', numExamples: 3, norms: layerNorms(layout, u) }], metrics: {}, startedAt: 1, closedAt: 2 }],
    });
    assert.equal((await a.lineagePosition((await a.head()).lineage)), 1);
    assert.equal((await a.lineagePosition(first)), 0);
    assert.equal((await a.lineageCount()), 2);
    await assert.rejects(async () => (await a.lineagePosition('no-such-lineage')), /unknown lineage/);
    for (const s of stores) await s.close();
  } finally {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  }
});
