import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { loadDataset } from './datasets.js';
import type { LocalDataset } from './types.js';

const require = createRequire(import.meta.url);
const pkgFile = (pkg: string, ...rest: string[]): string => join(dirname(require.resolve(`${pkg}/package.json`)), ...rest);

/** The raw mnist digits of one class, read straight from the package (independently of the loader). */
function rawMnist(c: number): number[] {
  return (JSON.parse(readFileSync(pkgFile('mnist', 'src', 'digits', `${c}.json`), 'utf8')) as { data: number[] }).data;
}

const imageKey = (x: ArrayLike<number>, at: number): string =>
  createHash('sha1').update(new Uint8Array(Float32Array.from(Array.prototype.slice.call(x, at, at + 784) as number[]).buffer)).digest('hex');

function keys(ds: LocalDataset): string[] {
  return Array.from({ length: ds.count }, (_, i) => `${ds.y[i]}:${imageKey(ds.x, i * 784)}`);
}

test('mnist: every digit of the package lands once in train or test, with its label and exact pixels', () => {
  const { train, test: held, classNames } = loadDataset('mnist', { seed: 1, layout: 'flat' });
  assert.deepEqual(classNames, ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
  assert.deepEqual(train.inputShape, [784]);
  const expected: string[] = [];
  const perClass: number[] = [];
  for (let c = 0; c < 10; c++) {
    const raw = rawMnist(c);
    perClass.push(raw.length / 784);
    for (let i = 0; i < raw.length; i += 784) expected.push(`${c}:${imageKey(raw, i)}`);
  }
  assert.equal(expected.length, 10000);
  assert.deepEqual([...keys(train), ...keys(held)].sort(), expected.sort());
  // Stratified: each class contributes round(20%) of its digits to the test set.
  const heldPerClass = Array.from({ length: 10 }, (_, c) => held.y.filter((y) => y === c).length);
  assert.deepEqual(heldPerClass, perClass.map((n) => Math.round(n * 0.2)));
  for (const v of train.x) assert.ok(v >= 0 && v <= 1);
});

test('mnist: same seed gives the same split, another seed another; image layout holds the same values', () => {
  const a = loadDataset('mnist', { seed: 5, layout: 'flat', limitPerClass: 100 });
  const b = loadDataset('mnist', { seed: 5, layout: 'image', limitPerClass: 100 });
  const c = loadDataset('mnist', { seed: 6, layout: 'flat', limitPerClass: 100 });
  assert.deepEqual(b.train.inputShape, [28, 28, 1]);
  assert.deepEqual(a.train.x, b.train.x);
  assert.deepEqual(a.train.y, b.train.y);
  assert.deepEqual(a.test.x, b.test.x);
  assert.notDeepEqual(new Set(keys(a.test)), new Set(keys(c.test)));
  // limitPerClass: 100 per class, 20 of them held out.
  assert.equal(a.train.count, 800);
  assert.equal(a.test.count, 200);
  for (let k = 0; k < 10; k++) assert.equal(a.test.y.filter((y) => y === k).length, 20);
});

test('mnist: an explicit testFraction is honoured', () => {
  const { train, test: held } = loadDataset('mnist', { seed: 2, layout: 'flat', testFraction: 0.5, limitPerClass: 10 });
  assert.equal(train.count, 50);
  assert.equal(held.count, 50);
});

test('fashion-mnist: 60,000 / 10,000 split, 1,000 test images per class, bytes scaled to [0, 1]', () => {
  const t0 = performance.now();
  const { train, test: held, classNames } = loadDataset('fashion-mnist', { seed: 1, layout: 'image' });
  const ms = performance.now() - t0;
  assert.equal(classNames[9], 'Ankle boot');
  assert.deepEqual(train.inputShape, [28, 28, 1]);
  // Class 0's file has rows that are not images; what survives must be exactly its 784-value rows.
  const rows0 = (JSON.parse(readFileSync(pkgFile('fashion-mnist', 'src', 'clothes', '0.json'), 'utf8')) as { data: number[][] }).data;
  const images0 = rows0.filter((r) => r.length === 784);
  assert.ok(images0.length < rows0.length, 'the package still ships malformed rows in class 0');
  assert.equal(train.y.filter((y) => y === 0).length + held.y.filter((y) => y === 0).length, images0.length);
  assert.equal(train.count + held.count, 70000);
  assert.equal(held.count, 10000);
  for (let c = 0; c < 10; c++) assert.equal(held.y.filter((y) => y === c).length, 1000);
  // A test image of class 0 is one of the file's rows divided by 255.
  const i = held.y.indexOf(0);
  const got = keys({ ...held, x: held.x.slice(i * 784, (i + 1) * 784), y: Int32Array.of(0), count: 1 })[0];
  const match = images0.some((r) => `0:${imageKey(r.map((v) => v / 255), 0)}` === got);
  assert.ok(match, 'test image found among the raw class-0 rows');
  let max = 0;
  for (const v of train.x) {
    assert.ok(v >= 0 && v <= 1);
    if (v > max) max = v;
  }
  assert.equal(max, 1);
  // Parsing once is seconds; reloading from the in-process memo should be much cheaper.
  const t1 = performance.now();
  loadDataset('fashion-mnist', { seed: 2, layout: 'flat', limitPerClass: 10 });
  const reload = performance.now() - t1;
  assert.ok(reload < ms, `reload ${reload} ms vs first load ${ms} ms`);
});

test('unknown names and layouts are refused', () => {
  assert.throws(() => loadDataset('cifar' as never, { seed: 1, layout: 'flat' }), /unknown dataset/);
  assert.throws(() => loadDataset('mnist', { seed: 1, layout: 'nchw' as never }), /layout/);
});
