import { test } from 'node:test';
import assert from 'node:assert/strict';
import { stratifiedSplit, stratifiedSplitIndices } from './split.js';
import type { LocalDataset } from './types.js';

/** Labels with deliberately unequal class sizes: class c has 50 + 13c examples, interleaved. */
function labels(): Int32Array {
  const out: number[] = [];
  for (let c = 0; c < 5; c++) for (let i = 0; i < 50 + 13 * c; i++) out.push(c);
  // Interleave deterministically so class members are not contiguous.
  return Int32Array.from(out.map((c, i) => [c, (i * 7919) % out.length] as const).sort((a, b) => a[1] - b[1]).map(([c]) => c));
}

const countBy = (ls: ArrayLike<number>, idx: ArrayLike<number>): number[] => {
  const n = [0, 0, 0, 0, 0];
  for (let i = 0; i < idx.length; i++) n[ls[idx[i]!]!]!++;
  return n;
};

test('each class is split in the same proportion, and the two sides cover the data once', () => {
  const ls = labels();
  const { train, test: held } = stratifiedSplitIndices(ls, 5, { seed: 1, testFraction: 0.25 });
  const all = [...train, ...held].sort((a, b) => a - b);
  assert.deepEqual(all, Array.from({ length: ls.length }, (_, i) => i));
  const sizes = Array.from({ length: 5 }, (_, c) => 50 + 13 * c);
  assert.deepEqual(countBy(ls, held), sizes.map((n) => Math.round(n * 0.25)));
  assert.deepEqual(countBy(ls, train), sizes.map((n) => n - Math.round(n * 0.25)));
});

test('same seed, same split; another seed, another split', () => {
  const ls = labels();
  const a = stratifiedSplitIndices(ls, 5, { seed: 7, testFraction: 0.2 });
  const b = stratifiedSplitIndices(ls, 5, { seed: 7, testFraction: 0.2 });
  const c = stratifiedSplitIndices(ls, 5, { seed: 8, testFraction: 0.2 });
  assert.deepEqual(a, b);
  assert.notDeepEqual([...a.test].sort((x, y) => x - y), [...c.test].sort((x, y) => x - y));
});

test('the train side is not left sorted by class', () => {
  const ls = Int32Array.from({ length: 200 }, (_, i) => (i < 100 ? 0 : 1));
  const { train } = stratifiedSplitIndices(ls, 2, { seed: 3, testFraction: 0.1 });
  const firstHalfLabels = [...train.subarray(0, 90)].map((i) => ls[i]);
  assert.ok(firstHalfLabels.includes(1) && firstHalfLabels.includes(0));
});

test('limitPerClass caps each class before the split', () => {
  const ls = labels();
  const { train, test: held } = stratifiedSplitIndices(ls, 5, { seed: 2, testFraction: 0.2, limitPerClass: 40 });
  assert.deepEqual(countBy(ls, held), [8, 8, 8, 8, 8]);
  assert.deepEqual(countBy(ls, train), [32, 32, 32, 32, 32]);
  assert.throws(() => stratifiedSplitIndices(ls, 5, { seed: 2, testFraction: 0.2, limitPerClass: 0 }), RangeError);
  assert.throws(() => stratifiedSplitIndices(ls, 5, { seed: 2, testFraction: 1 }), RangeError);
});

test('stratifiedSplit copies the chosen examples with their features', () => {
  const ls = labels();
  const f = 3;
  const ds: LocalDataset = {
    x: Float32Array.from({ length: ls.length * f }, (_, k) => Math.floor(k / f) * 10 + (k % f)),
    y: ls,
    inputShape: [f],
    numClasses: 5,
    count: ls.length,
  };
  const { train, test: held } = stratifiedSplit(ds, { seed: 4, testFraction: 0.3 });
  assert.equal(train.count + held.count, ds.count);
  for (const part of [train, held]) {
    assert.equal(part.x.length, part.count * f);
    for (let i = 0; i < part.count; i++) {
      const id = part.x[i * f]! / 10; // the source index, encoded in the first feature
      assert.equal(part.y[i], ls[id]);
      assert.equal(part.x[i * f + 2], id * 10 + 2);
    }
  }
});
