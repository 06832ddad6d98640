import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parsePartitionSpec, partition } from './partition.js';
import { makeRng } from './rng.js';
import type { LocalDataset } from './types.js';

const F = 2;

/**
 * `n` examples over `k` classes with unequal class sizes (labels drawn at random with weights 10..k+9); feature 0 holds
 * the example's index so tests can follow each example, feature 1 its label.
 */
function synthetic(n: number, k: number, seed = 0): LocalDataset {
  const r = makeRng(seed, 'synthetic');
  const total = (k * (k + 1)) / 2 + 9 * k;
  const y = Int32Array.from({ length: n }, () => {
    let u = r.next() * total;
    for (let c = 0; c < k; c++) if ((u -= c + 10) < 0) return c;
    return k - 1;
  });
  const x = new Float32Array(n * F);
  for (let i = 0; i < n; i++) {
    x[i * F] = i;
    x[i * F + 1] = y[i]!;
  }
  return { x, y, inputShape: [F], numClasses: k, count: n };
}

const ids = (d: LocalDataset): number[] => Array.from({ length: d.count }, (_, i) => d.x[i * F]!);

function assertExactCover(ds: LocalDataset, parts: LocalDataset[]): void {
  const all = parts.flatMap(ids).sort((a, b) => a - b);
  assert.deepEqual(all, Array.from({ length: ds.count }, (_, i) => i), 'every example exactly once');
  for (const p of parts) {
    assert.equal(p.x.length, p.count * F);
    assert.deepEqual(p.inputShape, ds.inputShape);
    assert.equal(p.numClasses, ds.numClasses);
    for (let i = 0; i < p.count; i++) {
      assert.equal(p.y[i], ds.y[p.x[i * F]!], 'label travels with its example');
      assert.equal(p.x[i * F + 1], p.y[i]);
    }
  }
}

const classesOf = (d: LocalDataset): Set<number> => new Set(d.y);

test('parsePartitionSpec accepts the three forms and explains bad ones', () => {
  assert.deepEqual(parsePartitionSpec('iid'), { kind: 'iid' });
  assert.deepEqual(parsePartitionSpec('dirichlet:0.5'), { kind: 'dirichlet', alpha: 0.5 });
  assert.deepEqual(parsePartitionSpec('shards:2'), { kind: 'shards', shards: 2 });
  for (const bad of ['', 'IID', 'dirichlet', 'dirichlet:', 'dirichlet:0', 'dirichlet:-1', 'dirichlet:abc', 'shards:0', 'shards:1.5', 'zipf:2']) {
    assert.throws(() => parsePartitionSpec(bad), (e: unknown) => e instanceof RangeError && /partition spec/.test(e.message), bad);
  }
});

test('iid: equal sizes (within one), exact cover, seeded', () => {
  const ds = synthetic(1003, 10);
  const parts = partition(ds, 7, 'iid', 1);
  assertExactCover(ds, parts);
  const sizes = parts.map((p) => p.count);
  assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `sizes ${sizes}`);
  assert.deepEqual(partition(ds, 7, 'iid', 1).map(ids), parts.map(ids));
  assert.notDeepEqual(partition(ds, 7, 'iid', 2).map(ids), parts.map(ids));
  // With ~143 random examples each, every client sees every class.
  for (const p of parts) assert.equal(classesOf(p).size, 10);
});

test('dirichlet: exact cover, seeded, nobody empty even with tiny alpha', () => {
  const ds = synthetic(2000, 10);
  for (const alpha of ['100', '1', '0.1', '0.01']) {
    const parts = partition(ds, 20, `dirichlet:${alpha}`, 3);
    assertExactCover(ds, parts);
    for (const p of parts) assert.ok(p.count >= 10, `alpha ${alpha}: client of ${p.count}`);
    assert.deepEqual(partition(ds, 20, `dirichlet:${alpha}`, 3).map(ids), parts.map(ids));
    assert.notDeepEqual(partition(ds, 20, `dirichlet:${alpha}`, 4).map(ids), parts.map(ids));
  }
  const custom = partition(ds, 10, 'dirichlet:0.01', 1, { minPerClient: 150 });
  assertExactCover(ds, custom);
  for (const p of custom) assert.ok(p.count >= 150);
  assert.throws(() => partition(ds, 10, 'dirichlet:1', 1, { minPerClient: 201 }), RangeError);
});

test('dirichlet: label skew grows as alpha shrinks', () => {
  const ds = synthetic(3000, 10);
  // Skew = mean over clients of the share of its largest class (1/10-ish when balanced, 1 when single-class).
  const skew = (alpha: number): number => {
    let total = 0;
    let clients = 0;
    for (const seed of [1, 2, 3]) {
      for (const p of partition(ds, 10, `dirichlet:${alpha}`, seed)) {
        const counts = new Array<number>(10).fill(0);
        for (const y of p.y) counts[y]!++;
        total += Math.max(...counts) / p.count;
        clients++;
      }
    }
    return total / clients;
  };
  const s = [100, 1, 0.1].map(skew);
  assert.ok(s[0]! < s[1]! && s[1]! < s[2]!, `skew by alpha 100, 1, 0.1: ${s}`);
});

test('shards: each client gets S shards and so at most 2S classes; exact cover, seeded', () => {
  const ds = synthetic(2000, 10);
  for (const S of [1, 2, 3]) {
    const clients = 20;
    const parts = partition(ds, clients, `shards:${S}`, 5);
    assertExactCover(ds, parts);
    // About 2000 / (20 S) examples per shard, no more than the smallest class (~138 for class 0), so a shard spans
    // at most two classes.
    const shardSize = 2000 / (clients * S);
    const smallest = Math.min(...Array.from({ length: 10 }, (_, c) => ds.y.filter((y) => y === c).length));
    assert.ok(Math.ceil(shardSize) <= smallest, 'premise of the 2S bound');
    for (const p of parts) {
      assert.ok(p.count >= S * Math.floor(shardSize) && p.count <= S * Math.ceil(shardSize), `client of ${p.count}`);
      assert.ok(classesOf(p).size <= 2 * S, `S=${S}: ${classesOf(p).size} classes`);
    }
    assert.deepEqual(partition(ds, clients, `shards:${S}`, 5).map(ids), parts.map(ids));
    assert.notDeepEqual(partition(ds, clients, `shards:${S}`, 6).map(ids), parts.map(ids));
  }
  // Far fewer classes per client than iid.
  const meanClasses = partition(ds, 20, 'shards:2', 1).reduce((a, p) => a + classesOf(p).size, 0) / 20;
  assert.ok(meanClasses <= 4);
  assert.throws(() => partition(ds, 1001, 'shards:2', 1), RangeError);
});

test('bad client counts are refused', () => {
  const ds = synthetic(10, 2);
  assert.throws(() => partition(ds, 0, 'iid', 1), RangeError);
  assert.throws(() => partition(ds, 11, 'iid', 1), RangeError);
  assert.throws(() => partition(ds, 2, 'nope', 1), RangeError);
});
