import { test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutOf, layerNorms, layerView } from '@fedunlearn/protocol';
import { calibrateUpdate } from './calibration.js';
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
 * The hand-computed calibration of two clients' fresh updates. The whole FedEraser step (calibration, then the
 * example-weighted mean of the live aggregation strategy, applied to the committed model) is checked end to end
 * against a hand-computed M~_{j+1} in test/src/unlearning-arithmetic.e2e.test.ts.
 *
 * Client 1: stored norms A = 5, B = 2, fresh update A = (6, 8), B = (-0.5).
 *   ||fresh_A|| = sqrt(36 + 64) = 10  -> calibrated A = 5 * (6, 8) / 10   = (3, 4)
 *   ||fresh_B|| = 0.5                 -> calibrated B = 2 * (-0.5) / 0.5  = (-2)
 * Client 2: stored norms A = 10, B = 4, fresh update A = (0, -2), B = (3).
 *   ||fresh_A|| = 2                   -> calibrated A = 10 * (0, -2) / 2  = (0, -10)
 *   ||fresh_B|| = 3                   -> calibrated B = 4 * 3 / 3         = (4)
 * Every figure is a dyadic rational, so float32 holds it exactly.
 */
const client1 = { fresh: Float32Array.of(6, 8, -0.5), storedNorms: [5, 2] };
const client2 = { fresh: Float32Array.of(0, -2, 3), storedNorms: [10, 4] };

test('calibrateUpdate matches the hand-computed per-layer calibration', () => {
  const out1 = new Float32Array(3);
  calibrateUpdate(layout, client1.fresh, client1.storedNorms, out1);
  assert.deepEqual([...out1], [3, 4, -2]);
  const out2 = new Float32Array(3);
  calibrateUpdate(layout, client2.fresh, client2.storedNorms, out2);
  assert.deepEqual([...out2], [0, -10, 4]);
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

test('mismatched sizes and bad norms are refused', () => {
  const out = new Float32Array(3);
  // Each refusal names what is wrong, so that a job that fails says why.
  assert.throws(() => calibrateUpdate(layout, new Float32Array(4), [1, 1], out), { name: 'RangeError', message: 'fresh update has 4 values, expected 3' });
  assert.throws(() => calibrateUpdate(layout, new Float32Array(3), [1], out), { name: 'RangeError', message: 'stored norms has 1 values, expected 2' });
  assert.throws(() => calibrateUpdate(layout, new Float32Array(3), [1, 1], new Float32Array(2)), { name: 'RangeError', message: 'output buffer has 2 values, expected 3' });
  for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.throws(() => calibrateUpdate(layout, new Float32Array(3), [1, bad], out), {
      name: 'RangeError',
      message: `stored norm of layer 1 is ${bad}; a norm must be finite and non-negative`,
    });
  }
  // A zero stored norm is a norm: the layer calibrates to zero.
  const zero = new Float32Array(3).fill(5);
  calibrateUpdate(layout, Float32Array.of(1, 1, 1), [0, 2], zero);
  assert.deepEqual([...zero], [0, 0, 2]);
});
