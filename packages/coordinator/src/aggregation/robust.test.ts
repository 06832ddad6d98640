import { test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutOf } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { ClippedFedAvg, CoordinateMedian, strategyOf, TrimmedMean } from './robust.js';
import { FedAvg } from './fedavg.js';

// The robust strategies against references computed straight from their definitions in float64 (Yin et al. 2018
// for the coordinate-wise trimmed mean and median; clipping as in DP-FedAvg), on seeded random updates.

const rng = (seed: number): (() => number) => seedrandom(String(seed));
const layout = layoutOf([
  { name: 'dense_1/kernel', shape: [30, 20] },
  { name: 'dense_1/bias', shape: [20] },
]);

function random(r: () => number, scale: number): Float32Array {
  return Float32Array.from({ length: layout.totalSize }, () => (r() * 2 - 1) * scale);
}

function worstError(got: Float32Array, want: Float64Array): number {
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  return worst;
}

function norm64(u: Float32Array): number {
  let s = 0;
  for (const v of u) s += v * v;
  return Math.sqrt(s);
}

/** Per coordinate: the K values sorted, trimmed by floor(beta K) at each end, averaged; added to base. */
function trimmedReference(base: Float32Array, updates: Float32Array[], beta: number): Float64Array {
  const out = Float64Array.from(base);
  const t = Math.floor(beta * updates.length);
  for (let i = 0; i < out.length; i++) {
    const col = updates.map((u) => u[i]!).sort((a, b) => a - b).slice(t, updates.length - t);
    out[i]! += col.reduce((a, b) => a + b, 0) / col.length;
  }
  return out;
}

function medianReference(base: Float32Array, updates: Float32Array[]): Float64Array {
  const out = Float64Array.from(base);
  for (let i = 0; i < out.length; i++) {
    const col = updates.map((u) => u[i]!).sort((a, b) => a - b);
    const m = col.length >> 1;
    out[i]! += col.length % 2 ? col[m]! : (col[m - 1]! + col[m]!) / 2;
  }
  return out;
}

function clippedReference(base: Float32Array, updates: Float32Array[], counts: number[], c: number): Float64Array {
  const total = counts.reduce((a, b) => a + b, 0);
  const out = Float64Array.from(base);
  updates.forEach((u, k) => {
    const scale = Math.min(1, c / norm64(u));
    for (let i = 0; i < out.length; i++) out[i]! += (counts[k]! / total) * scale * u[i]!;
  });
  return out;
}

/** Honest updates near zero plus `bad` hostile ones far away: the attack robust aggregation is for. */
function round(seed: number, honest: number, bad: number): { base: Float32Array; updates: Float32Array[]; counts: number[] } {
  const r = rng(seed);
  const updates = Array.from({ length: honest }, () => random(r, 0.1));
  for (let j = 0; j < bad; j++) updates.push(random(r, 0.1).map((v) => v + 1e6));
  const counts = updates.map(() => 1 + Math.floor(r() * 100));
  return { base: random(r, 1), updates, counts };
}

test('trimmed mean matches its float64 definition, and ignores hostile values up to its trim', () => {
  for (const [seed, k, bad, beta] of [
    [1, 10, 2, 0.2],
    [2, 7, 1, 0.15],
    [3, 20, 0, 0.1],
    [4, 5, 0, 0],
  ] as const) {
    const { base, updates, counts } = round(seed, k - bad, bad);
    const agg = new TrimmedMean(beta).begin(layout);
    updates.forEach((u, j) => agg.add(u, counts[j]!));
    assert.equal(agg.count, k);
    const got = agg.apply(base);
    const want = trimmedReference(base, updates, beta);
    assert.ok(worstError(got, want) <= 1e-6, `seed ${seed}: max error ${worstError(got, want)}`);
    // The hostile updates were trimmed away: the step stays within the honest range.
    if (bad > 0) for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - base[i]!) <= 0.1 + 1e-6);
  }
});

test('coordinate-wise median matches its float64 definition for odd and even counts', () => {
  for (const [seed, k, bad] of [
    [5, 9, 4],
    [6, 8, 3],
    [7, 1, 0],
  ] as const) {
    const { base, updates, counts } = round(seed, k - bad, bad);
    const agg = new CoordinateMedian().begin(layout);
    updates.forEach((u, j) => agg.add(u, counts[j]!));
    const got = agg.apply(base);
    const want = medianReference(base, updates);
    assert.ok(worstError(got, want) <= 1e-6, `seed ${seed}: max error ${worstError(got, want)}`);
  }
});

test('clipped FedAvg matches its float64 definition; updates under the clip norm give plain FedAvg', () => {
  const { base, updates, counts } = round(8, 6, 2);
  const clip = 1;
  const agg = new ClippedFedAvg(clip).begin(layout);
  updates.forEach((u, j) => agg.add(u, counts[j]!));
  const got = agg.apply(base);
  const want = clippedReference(base, updates, counts, clip);
  assert.ok(worstError(got, want) <= 1e-5, `max error ${worstError(got, want)}`);
  // A 1e6-per-coordinate update moves the model by at most its share of the clip norm.
  const total = counts.reduce((a, b) => a + b, 0);
  let step = 0;
  for (let i = 0; i < got.length; i++) step += (got[i]! - base[i]!) ** 2;
  assert.ok(Math.sqrt(step) <= clip + 1e-5, `step norm ${Math.sqrt(step)} over ${total} examples`);

  const small = round(9, 5, 0);
  const a = new ClippedFedAvg(1e3).begin(layout);
  const b = new FedAvg().begin(layout);
  small.updates.forEach((u, j) => {
    a.add(u, small.counts[j]!);
    b.add(u, small.counts[j]!);
  });
  assert.ok(worstError(a.apply(small.base), Float64Array.from(b.apply(small.base))) <= 1e-6);
});

test('the strategies keep the caller free to reuse its buffer after add, and refuse misuse', () => {
  for (const s of [new TrimmedMean(0.1), new CoordinateMedian(), new ClippedFedAvg(1e3)]) {
    const agg = s.begin(layout);
    const buf = new Float32Array(layout.totalSize).fill(0.5);
    agg.add(buf, 3);
    buf.fill(-100);
    agg.add(Float32Array.from(buf).fill(0.5), 3);
    const out = agg.apply(new Float32Array(layout.totalSize));
    assert.ok(out.every((v) => Math.abs(v - 0.5) < 1e-6), `${s.name}: the first update was kept as it was added`);
    assert.throws(() => agg.add(buf, 1), /already applied/);
    assert.throws(() => s.begin(layout).apply(new Float32Array(layout.totalSize)), /no update/);
    assert.throws(() => s.begin(layout).add(new Float32Array(3), 1), RangeError);
  }
  assert.throws(() => new TrimmedMean(0.5), RangeError);
  assert.throws(() => new ClippedFedAvg(0), RangeError);
  assert.throws(() => strategyOf({ strategy: 'clipped-fedavg' }), /clipNorm/);
  assert.equal(strategyOf({ strategy: 'median' }).name, 'median');
  assert.equal(strategyOf({ strategy: 'trimmed-mean' }).name, 'trimmed-mean');
});
