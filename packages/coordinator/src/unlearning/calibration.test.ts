import { test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutOf, layerNorms, layerView } from '@fedunlearn/protocol';
import { addScaled, calibrateUpdate, fedAvgWeights, federaserStep, replayStep } from './calibration.js';
import seedrandom from 'seedrandom';

// Two layers: A holds 2 values, B holds 1. Flat buffer = [A0, A1, B0].
const layout = layoutOf([
  { name: 'A', shape: [2] },
  { name: 'B', shape: [1] },
]);

/** Seeded, so that the property checks are reproducible. */
const rng = (seed: number): (() => number) => seedrandom(String(seed));

function randomBuffer(n: number, next: () => number): Float32Array {
  const b = new Float32Array(n);
  for (let i = 0; i < n; i++) b[i] = next() * 2 - 1;
  return b;
}

function cosine(a: Float32Array, b: Float32Array): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return dot / Math.sqrt(na * nb);
}

/*
 * The hand-computed example.
 *
 * Client 1: n = 30, stored norms A = 5, B = 2, fresh update A = (6, 8), B = (-0.5).
 *   ||fresh_A|| = sqrt(36 + 64) = 10  -> calibrated A = 5 * (6, 8) / 10   = (3, 4)
 *   ||fresh_B|| = 0.5                 -> calibrated B = 2 * (-0.5) / 0.5  = (-2)
 * Client 2: n = 10, stored norms A = 10, B = 4, fresh update A = (0, -2), B = (3).
 *   ||fresh_A|| = 2                   -> calibrated A = 10 * (0, -2) / 2  = (0, -10)
 *   ||fresh_B|| = 3                   -> calibrated B = 4 * 3 / 3         = (4)
 * Weights: w1 = 30 / 40 = 0.75, w2 = 10 / 40 = 0.25.
 * Aggregate: A = 0.75 * (3, 4) + 0.25 * (0, -10) = (2.25, 3 - 2.5) = (2.25, 0.5)
 *            B = 0.75 * (-2)   + 0.25 * 4         = -1.5 + 1      = -0.5
 * Model M~_j = (1, -1, 0.5)  ->  M~_{j+1} = (1 + 2.25, -1 + 0.5, 0.5 - 0.5) = (3.25, -0.5, 0)
 * Every figure is a dyadic rational, so float32 holds it exactly.
 *
 * Two wrong implementations this example tells apart from the right one:
 * - calibrating the unweighted average fresh update: avg A = (3, 3), avg B = 1.25; with the averaged stored norms
 *   (7.5, 3) it gives A = 7.5 * (3, 3) / (3*sqrt 2) ≈ (5.30, 5.30), not (2.25, 0.5);
 * - weighting uniformly: A = 0.5 * (3, 4) + 0.5 * (0, -10) = (1.5, -3), not (2.25, 0.5).
 */
const client1 = { fresh: Float32Array.of(6, 8, -0.5), storedNorms: [5, 2], numExamples: 30 };
const client2 = { fresh: Float32Array.of(0, -2, 3), storedNorms: [10, 4], numExamples: 10 };
const model = Float32Array.of(1, -1, 0.5);

test('calibrateUpdate matches the hand-computed per-layer calibration', () => {
  const out1 = new Float32Array(3);
  calibrateUpdate(layout, client1.fresh, client1.storedNorms, out1);
  assert.deepEqual([...out1], [3, 4, -2]);
  const out2 = new Float32Array(3);
  calibrateUpdate(layout, client2.fresh, client2.storedNorms, out2);
  assert.deepEqual([...out2], [0, -10, 4]);
});

test('federaserStep matches the hand-computed aggregation step and leaves its inputs alone', () => {
  const fresh1 = Float32Array.from(client1.fresh);
  const modelCopy = Float32Array.from(model);
  const next = federaserStep(layout, model, [client1, client2]);
  assert.deepEqual([...next], [3.25, -0.5, 0]);
  assert.notEqual(next, model);
  assert.deepEqual(model, modelCopy);
  assert.deepEqual(client1.fresh, fresh1);
});

test('federaserStep does not depend on the order of the clients', () => {
  assert.deepEqual([...federaserStep(layout, model, [client2, client1])], [3.25, -0.5, 0]);
});

test('replayStep matches a hand-computed weighted replay', () => {
  /*
   * Stored updates (1, 2, 3) with n = 30 and (4, 0, -4) with n = 10; weights 0.75 and 0.25.
   * Aggregate = (0.75 + 1, 1.5 + 0, 2.25 - 1) = (1.75, 1.5, 1.25); model (1, -1, 0.5) -> (2.75, 0.5, 1.75).
   */
  const next = replayStep(model, [
    { stored: Float32Array.of(1, 2, 3), numExamples: 30 },
    { stored: Float32Array.of(4, 0, -4), numExamples: 10 },
  ]);
  assert.deepEqual([...next], [2.75, 0.5, 1.75]);
  assert.deepEqual([...model], [1, -1, 0.5]);
});

test('replayStep renormalises over the remaining clients only', () => {
  // With the forgotten client left out, the one remaining client gets weight 1: model + its stored update.
  const next = replayStep(model, [{ stored: Float32Array.of(4, 0, -4), numExamples: 10 }]);
  assert.deepEqual([...next], [5, -1, -3.5]);
});

test('a layer whose fresh update is zero calibrates to zero, whatever its stored norm', () => {
  const out = new Float32Array(3).fill(99);
  calibrateUpdate(layout, Float32Array.of(0, 0, 2), [7, 3], out);
  assert.deepEqual([...out], [0, 0, 3]);
});

test('calibrateUpdate may write over its input', () => {
  const buf = Float32Array.from(client1.fresh);
  calibrateUpdate(layout, buf, client1.storedNorms, buf);
  assert.deepEqual([...buf], [3, 4, -2]);
});

test('property: each calibrated layer has the stored norm and the fresh direction', () => {
  const big = layoutOf([
    { name: 'conv', shape: [3, 3, 1, 8] },
    { name: 'bias', shape: [8] },
    { name: 'dense', shape: [50, 10] },
    { name: 'single', shape: [1] },
  ]);
  const next = rng(7);
  for (let trial = 0; trial < 20; trial++) {
    const fresh = randomBuffer(big.totalSize, next);
    const storedNorms = Array.from({ length: big.specs.length }, () => next() * 10);
    const out = new Float32Array(big.totalSize);
    calibrateUpdate(big, fresh, storedNorms, out);
    const norms = layerNorms(big, out);
    for (let l = 0; l < big.specs.length; l++) {
      const want = storedNorms[l]!;
      assert.ok(Math.abs(norms[l]! - want) <= 1e-6 * want, `layer ${l}: norm ${norms[l]} vs stored ${want}`);
      const c = cosine(layerView(big, out, l), layerView(big, fresh, l));
      assert.ok(Math.abs(c - 1) < 1e-6, `layer ${l}: cosine ${c}`);
    }
  }
});

test('property: the step is the model plus the weighted sum of per-client calibrated updates', () => {
  const next = rng(11);
  const clients = [3, 17, 40].map((n) => ({
    fresh: randomBuffer(layout.totalSize, next),
    storedNorms: [next() * 3, next() * 3],
    numExamples: n,
  }));
  const start = randomBuffer(layout.totalSize, next);
  const got = federaserStep(layout, start, clients);
  // Independent recomputation in float64 straight from the formula.
  const total = 60;
  for (let i = 0; i < layout.totalSize; i++) {
    const l = i < 2 ? 0 : 1;
    let want = start[i]!;
    for (const c of clients) {
      const view = layerView(layout, c.fresh, l);
      const norm = Math.hypot(...view);
      want += (c.numExamples / total) * c.storedNorms[l]! * (c.fresh[i]! / norm);
    }
    assert.ok(Math.abs(got[i]! - want) < 1e-5, `value ${i}: ${got[i]} vs ${want}`);
  }
});

test('fedAvgWeights: example-count shares that sum to 1', () => {
  assert.deepEqual(fedAvgWeights([30, 10]), [0.75, 0.25]);
  assert.deepEqual(fedAvgWeights([0, 5]), [0, 1]);
  const next = rng(3);
  for (let trial = 0; trial < 50; trial++) {
    const counts = Array.from({ length: 1 + Math.floor(next() * 30) }, () => Math.floor(next() * 1000) + 1);
    const w = fedAvgWeights(counts);
    assert.ok(Math.abs(w.reduce((a, b) => a + b, 0) - 1) < 1e-12);
    const total = counts.reduce((a, b) => a + b, 0);
    w.forEach((wk, k) => assert.ok(Math.abs(wk * total - counts[k]!) < 1e-9));
  }
});

test('fedAvgWeights rejects empty lists, zero totals and bad counts', () => {
  assert.throws(() => fedAvgWeights([]), RangeError);
  assert.throws(() => fedAvgWeights([0, 0]), RangeError);
  assert.throws(() => fedAvgWeights([5, -1]), RangeError);
  assert.throws(() => fedAvgWeights([5, Number.NaN]), RangeError);
  assert.throws(() => fedAvgWeights([5, Number.POSITIVE_INFINITY]), RangeError);
  assert.throws(() => federaserStep(layout, model, []), RangeError);
  assert.throws(() => replayStep(model, []), RangeError);
});

test('addScaled accumulates in place', () => {
  const acc = Float32Array.of(1, 2, 3);
  addScaled(acc, Float32Array.of(2, -4, 0.5), 0.5);
  assert.deepEqual([...acc], [2, 0, 3.25]);
});

test('mismatched sizes and bad norms are refused', () => {
  const out = new Float32Array(3);
  assert.throws(() => calibrateUpdate(layout, new Float32Array(4), [1, 1], out), RangeError);
  assert.throws(() => calibrateUpdate(layout, new Float32Array(3), [1], out), RangeError);
  assert.throws(() => calibrateUpdate(layout, new Float32Array(3), [1, 1], new Float32Array(2)), RangeError);
  assert.throws(() => calibrateUpdate(layout, new Float32Array(3), [1, -1], out), RangeError);
  assert.throws(() => calibrateUpdate(layout, new Float32Array(3), [1, Number.NaN], out), RangeError);
  assert.throws(() => addScaled(new Float32Array(3), new Float32Array(2), 1), RangeError);
  assert.throws(() => federaserStep(layout, new Float32Array(2), [client1]), RangeError);
  assert.throws(() => replayStep(model, [{ stored: new Float32Array(2), numExamples: 1 }]), RangeError);
});
