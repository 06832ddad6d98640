import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dirichlet, gamma, makeRng, permutation, shuffleInPlace } from './rng.js';

const draws = (seed: number, ...stream: string[]): number[] => {
  const r = makeRng(seed, ...stream);
  return Array.from({ length: 20 }, () => r.next());
};

test('makeRng is deterministic per seed and stream, and differs across them', () => {
  assert.deepEqual(draws(1), draws(1));
  assert.deepEqual(draws(1, 'a'), draws(1, 'a'));
  assert.notDeepEqual(draws(1), draws(2));
  assert.notDeepEqual(draws(1, 'a'), draws(1, 'b'));
  for (const v of draws(3)) assert.ok(v >= 0 && v < 1);
});

test('int stays in range and hits every value', () => {
  const r = makeRng(5);
  const seen = new Set<number>();
  for (let i = 0; i < 1000; i++) {
    const v = r.int(7);
    assert.ok(Number.isInteger(v) && v >= 0 && v < 7);
    seen.add(v);
  }
  assert.equal(seen.size, 7);
  assert.throws(() => r.int(0), RangeError);
});

test('permutation holds each index once; shuffles are seeded', () => {
  const p = permutation(1000, makeRng(9));
  assert.deepEqual([...p].sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i));
  assert.notDeepEqual([...p], Array.from({ length: 1000 }, (_, i) => i));
  assert.deepEqual([...permutation(1000, makeRng(9))], [...p]);
  const a = shuffleInPlace(['a', 'b', 'c', 'd', 'e', 'f'], makeRng(1));
  assert.deepEqual([...a].sort(), ['a', 'b', 'c', 'd', 'e', 'f']);
});

test('every position is equally likely after a Fisher–Yates shuffle', () => {
  // Where element 0 lands over many shuffles of 4 items: each slot expects n/4; 5 standard deviations of slack.
  const n = 8000;
  const counts = [0, 0, 0, 0];
  const r = makeRng(11);
  for (let i = 0; i < n; i++) counts[[...shuffleInPlace([0, 1, 2, 3], r)].indexOf(0)]!++;
  const sd = Math.sqrt(n * 0.25 * 0.75);
  for (const c of counts) assert.ok(Math.abs(c - n / 4) < 5 * sd, `slot count ${c}`);
});

test('gamma draws have mean and variance equal to the shape (Gamma(k, 1))', () => {
  for (const shape of [0.1, 0.5, 1, 2.5, 10]) {
    const r = makeRng(42, String(shape));
    const n = 20000;
    let sum = 0;
    let sq = 0;
    for (let i = 0; i < n; i++) {
      const g = gamma(shape, r);
      assert.ok(g >= 0);
      sum += g;
      sq += g * g;
    }
    const mean = sum / n;
    const variance = sq / n - mean * mean;
    // Standard error of the mean is sqrt(shape / n).
    assert.ok(Math.abs(mean - shape) < 5 * Math.sqrt(shape / n), `shape ${shape}: mean ${mean}`);
    assert.ok(Math.abs(variance - shape) / shape < 0.15, `shape ${shape}: variance ${variance}`);
  }
  assert.throws(() => gamma(0, makeRng(1)), RangeError);
});

test('dirichlet components have the textbook mean 1/k and variance (k-1)/(k^2 (k alpha + 1))', () => {
  const k = 10;
  const n = 20000;
  const variances: number[] = [];
  for (const alpha of [100, 1, 0.05]) {
    const r = makeRng(3, String(alpha));
    const first = new Float64Array(n);
    for (let t = 0; t < n; t++) {
      const p = dirichlet(alpha, k, r);
      assert.ok(Math.abs(p.reduce((a, b) => a + b, 0) - 1) < 1e-9);
      for (const v of p) assert.ok(v >= 0);
      first[t] = p[0]!;
    }
    const mean = first.reduce((a, b) => a + b, 0) / n;
    const m2 = first.reduce((a, v) => a + (v - mean) ** 2, 0) / n;
    const m4 = first.reduce((a, v) => a + (v - mean) ** 4, 0) / n;
    const theoryVar = (k - 1) / (k * k * (k * alpha + 1));
    // Tolerances: 5 standard errors, estimated from the sample itself.
    assert.ok(Math.abs(mean - 1 / k) < 5 * Math.sqrt(m2 / n), `alpha ${alpha}: mean ${mean}`);
    assert.ok(Math.abs(m2 - theoryVar) < 5 * Math.sqrt((m4 - m2 * m2) / n), `alpha ${alpha}: variance ${m2} vs ${theoryVar}`);
    variances.push(m2);
  }
  assert.ok(variances[0]! < variances[1]! && variances[1]! < variances[2]!, 'spread grows as alpha shrinks');
});
