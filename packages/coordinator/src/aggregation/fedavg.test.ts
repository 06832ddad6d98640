import { test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutOf } from '@fedunlearn/protocol';
import { FedAvg } from './fedavg.js';
import seedrandom from 'seedrandom';

/** Seeded, so that every figure a test compares against is recomputed from the seed, never remembered. */
const rng = (seed: number): (() => number) => seedrandom(String(seed));

const layout = layoutOf([
  { name: 'dense_1/kernel', shape: [40, 25] },
  { name: 'dense_1/bias', shape: [25] },
  { name: 'dense_2/kernel', shape: [25, 10] },
  { name: 'dense_2/bias', shape: [10] },
]);

function random(r: () => number, scale: number): Float32Array {
  const v = new Float32Array(layout.totalSize);
  for (let i = 0; i < v.length; i++) v[i] = (r() * 2 - 1) * scale;
  return v;
}

/** The example-weighted mean applied to `base`, straight from the definition, in float64. */
function reference(base: Float32Array, updates: Float32Array[], counts: number[]): Float64Array {
  const total = counts.reduce((a, b) => a + b, 0);
  const out = Float64Array.from(base);
  for (let i = 0; i < out.length; i++) {
    let s = 0;
    for (let k = 0; k < updates.length; k++) s += (counts[k]! / total) * updates[k]![i]!;
    out[i]! += s;
  }
  return out;
}

test('FedAvg matches a float64 example-weighted mean of random updates to 1e-5', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    const r = rng(seed);
    const k = 2 + Math.floor(r() * 19);
    // Counts spread over three orders of magnitude, as uneven partitions make them.
    const counts = Array.from({ length: k }, () => 1 + Math.floor(10 ** (r() * 4)));
    const updates = Array.from({ length: k }, () => random(r, 0.5));
    const base = random(r, 1);
    const agg = new FedAvg().begin(layout);
    for (let j = 0; j < k; j++) agg.add(updates[j]!, counts[j]!);
    assert.equal(agg.count, k);
    assert.equal(agg.totalExamples, counts.reduce((a, b) => a + b, 0));
    const got = agg.apply(base);
    const want = reference(base, updates, counts);
    assert.equal(got.length, want.length);
    let worst = 0;
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
    assert.ok(worst <= 1e-5, `seed ${seed}: max error ${worst} over ${k} updates`);
  }
});

test('one update moves the base by exactly that update; equal counts give the plain mean', () => {
  const r = rng(7);
  const base = random(r, 1);
  const u = random(r, 0.1);
  const one = new FedAvg().begin(layout);
  one.add(u, 37);
  const got = one.apply(base);
  for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - (base[i]! + u[i]!)) <= 1e-6);

  const v = random(r, 0.1);
  const two = new FedAvg().begin(layout);
  two.add(u, 5);
  two.add(v, 5);
  const mean = two.apply(base);
  for (let i = 0; i < mean.length; i++) assert.ok(Math.abs(mean[i]! - (base[i]! + (u[i]! + v[i]!) / 2)) <= 1e-6);
});

test('the weights follow the example counts, not the order of arrival', () => {
  const r = rng(8);
  const base = random(r, 1);
  const a = random(r, 1);
  const b = random(r, 1);
  const ab = new FedAvg().begin(layout);
  ab.add(a, 900);
  ab.add(b, 100);
  const ba = new FedAvg().begin(layout);
  ba.add(b, 100);
  ba.add(a, 900);
  const x = ab.apply(base);
  const y = ba.apply(base);
  for (let i = 0; i < x.length; i++) {
    assert.ok(Math.abs(x[i]! - y[i]!) <= 1e-6);
    assert.ok(Math.abs(x[i]! - (base[i]! + 0.9 * a[i]! + 0.1 * b[i]!)) <= 1e-5);
  }
});

test('the caller may reuse an update buffer after add, and apply leaves base untouched', () => {
  const r = rng(9);
  const base = random(r, 1);
  const baseCopy = base.slice();
  const u = random(r, 1);
  const expected = Float32Array.from(base, (x, i) => x + u[i]!);
  const agg = new FedAvg().begin(layout);
  agg.add(u, 3);
  u.fill(1e6); // the streaming sum must have copied what it needed
  const got = agg.apply(base);
  for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - expected[i]!) <= 1e-6);
  assert.notEqual(got, base);
  assert.deepEqual(base, baseCopy);
});

test('apply throws when nothing was added', () => {
  const agg = new FedAvg().begin(layout);
  assert.throws(() => agg.apply(new Float32Array(layout.totalSize)), /no update/);
});

test('a size mismatch throws, for an update and for the base', () => {
  const agg = new FedAvg().begin(layout);
  assert.throws(() => agg.add(new Float32Array(layout.totalSize - 1), 1), RangeError);
  assert.throws(() => agg.add(new Float32Array(layout.totalSize + 1), 1), RangeError);
  assert.equal(agg.count, 0, 'a refused update is not counted');
  agg.add(new Float32Array(layout.totalSize), 1);
  assert.throws(() => agg.apply(new Float32Array(layout.totalSize + 1)), RangeError);
});

test('a non-positive or NaN example count is refused and changes nothing', () => {
  const r = rng(10);
  const base = random(r, 1);
  const u = random(r, 1);
  const agg = new FedAvg().begin(layout);
  agg.add(u, 4);
  for (const n of [0, -3, NaN]) assert.throws(() => agg.add(random(r, 100), n), RangeError);
  assert.equal(agg.count, 1);
  assert.equal(agg.totalExamples, 4);
  const got = agg.apply(base);
  for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - (base[i]! + u[i]!)) <= 1e-6);
});

test('an applied aggregation is finished: a further add or apply throws instead of corrupting the returned model', () => {
  const r = rng(11);
  const base = random(r, 1);
  const agg = new FedAvg().begin(layout);
  agg.add(random(r, 1), 2);
  const got = agg.apply(base);
  const copy = got.slice();
  assert.throws(() => agg.add(random(r, 1), 1), /already applied/);
  assert.throws(() => agg.apply(base), /already applied/);
  assert.deepEqual(got, copy);
});

test('a recycled model buffer becomes a later sum, whatever it held, and the result stays exact', () => {
  const r = rng(12);
  const strategy = new FedAvg();
  const base = random(r, 1);
  const first = strategy.begin(layout);
  first.add(random(r, 1), 3);
  const m1 = first.apply(base);
  // The round engine hands back the model a commit replaced; here m1 as if two rounds later, full of stale values.
  strategy.recycle(m1);
  const updates = [random(r, 0.5), random(r, 0.5), random(r, 0.5)];
  const counts = [7, 300, 41];
  const base2 = random(r, 1);
  const agg = strategy.begin(layout);
  for (let j = 0; j < updates.length; j++) agg.add(updates[j]!, counts[j]!);
  const got = agg.apply(base2);
  assert.equal(got, m1, 'the recycled buffer was reused');
  const want = reference(base2, updates, counts);
  for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - want[i]!) <= 1e-5);
});

test('recycle ignores buffers the strategy did not return, and takes a returned one back only once', () => {
  const r = rng(13);
  const strategy = new FedAvg();
  const mine = random(r, 1);
  const mineCopy = mine.slice();
  strategy.recycle(mine); // the caller's own array (e.g. the initial model) must never be written
  const a = strategy.begin(layout);
  a.add(random(r, 1), 1);
  const out = a.apply(random(r, 1));
  assert.notEqual(out, mine);
  assert.deepEqual(mine, mineCopy);

  // Recycled twice by mistake: two aggregations open at once must still get two different sums.
  strategy.recycle(out);
  strategy.recycle(out);
  const x = strategy.begin(layout);
  const y = strategy.begin(layout);
  const u = random(r, 1);
  const v = random(r, 1);
  x.add(u, 1);
  y.add(v, 1);
  const base = random(r, 1);
  const gx = x.apply(base);
  const gy = y.apply(base);
  assert.notEqual(gx, gy);
  for (let i = 0; i < gx.length; i++) {
    assert.ok(Math.abs(gx[i]! - (base[i]! + u[i]!)) <= 1e-6);
    assert.ok(Math.abs(gy[i]! - (base[i]! + v[i]!)) <= 1e-6);
  }
});

test('a buffer recycled while an aggregation still owns it as its sum is refused (it was not returned yet)', () => {
  const r = rng(14);
  const strategy = new FedAvg();
  const a = strategy.begin(layout);
  a.add(random(r, 1), 1);
  const out = a.apply(random(r, 1));
  strategy.recycle(out);
  const b = strategy.begin(layout); // takes out as its sum
  strategy.recycle(out); // no longer issued: ignored, so a third aggregation cannot share it
  const c = strategy.begin(layout);
  const u = random(r, 1);
  b.add(u, 1);
  c.add(random(r, 1), 1);
  const base = random(r, 1);
  const gb = b.apply(base);
  for (let i = 0; i < gb.length; i++) assert.ok(Math.abs(gb[i]! - (base[i]! + u[i]!)) <= 1e-6);
});

test('the order updates arrive in does not change the model: 40 orders of 15 updates give bit-identical weights', () => {
  // Realistic deltas: per-client scales over three orders of magnitude, a few values far smaller than the rest (as
  // for weights a client's data barely touches), example counts as uneven as a Dirichlet partition makes them.
  const r = rng(21);
  const big = layoutOf([{ name: 'w', shape: [200_000] }]);
  const gauss = (): number => Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
  const k = 15;
  const updates = Array.from({ length: k }, () => {
    const scale = 10 ** (-1 - 3 * r());
    return Float32Array.from({ length: big.totalSize }, () => gauss() * scale * (r() < 0.05 ? 1e-4 : 1));
  });
  const counts = Array.from({ length: k }, () => 1 + Math.floor(10 ** (r() * 3.5)));
  const base = Float32Array.from({ length: big.totalSize }, () => gauss() * 0.1);
  const run = (order: number[]): Float32Array => {
    const agg = new FedAvg().begin(big);
    for (const j of order) agg.add(updates[j]!, counts[j]!);
    return agg.apply(base);
  };
  const inOrder = run(Array.from({ length: k }, (_, j) => j));
  for (let t = 0; t < 40; t++) {
    const order = Array.from({ length: k }, (_, j) => j);
    for (let i = k - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const got = run(order);
    let differ = 0;
    for (let i = 0; i < got.length; i++) if (got[i] !== inOrder[i]) differ++;
    assert.equal(differ, 0, `order ${order.join(',')}: ${differ} of ${got.length} values differ from the in-order model`);
  }
});
