import assert from 'node:assert/strict';
import { test } from 'node:test';
import { boundsSensitivity, removalSensitivities, stepNorm, totalNorm, withSensitivities } from './sensitivity.js';

const close = (a: number, b: number, what: string, tol = 1e-9) => assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b}`);

/** The exact ||agg - agg_{-c}|| of an example-weighted mean, computed the long way (two aggregates). */
function exactRemoval(updates: number[][], counts: number[], c: number): number {
  const mean = (skip: number) => {
    const n = counts.reduce((a, x, i) => (i === skip ? a : a + x), 0);
    return updates[0]!.map((_, d) => updates.reduce((a, u, i) => (i === skip ? a : a + counts[i]! * u[d]!), 0) / n);
  };
  const all = mean(-1);
  const without = mean(c);
  return Math.hypot(...all.map((x, d) => x - without[d]!));
}

test('removal sensitivity of three clients with known updates: the hand-computed bound, and never below the exact value', () => {
  // U1 = (1, 0) x1 example, U2 = (0, 1) x1, U3 = (1, 1) x2: agg = (3/4, 3/4), ||agg|| = 3/4 sqrt 2.
  const updates = [[1, 0], [0, 1], [1, 1]];
  const counts = [1, 1, 2];
  const agg = 0.75 * Math.SQRT2;
  const z = removalSensitivities(updates.map((u, i) => ({ numExamples: counts[i]!, updateNorm: Math.hypot(...u) })), agg);
  // p1 = 1/4: (1/4)/(3/4) (1 + 3/4 sqrt 2) = (1 + 1.0606602)/3
  close(z[0]!, (1 + agg) / 3, 'client 1');
  close(z[1]!, (1 + agg) / 3, 'client 2');
  // p3 = 1/2: 1 * (sqrt 2 + 3/4 sqrt 2)
  close(z[2]!, Math.SQRT2 + agg, 'client 3');
  // The exact values, by hand: client 1 leaves (2/3, 1), a move of sqrt(1/144 + 1/16) = 0.26352; the bound covers it.
  close(exactRemoval(updates, counts, 0), Math.sqrt(1 / 144 + 1 / 16), 'exact, client 1');
  for (let c = 0; c < 3; c++) assert.ok(z[c]! >= exactRemoval(updates, counts, c) - 1e-12, `bound below the exact value for client ${c + 1}`);
});

test('a sole participant: the round would not have moved the model without it, so its sensitivity is its update norm', () => {
  assert.deepEqual(removalSensitivities([{ numExamples: 7, updateNorm: 2.5 }], 2.5), [2.5]);
});

test('withSensitivities reads the per-layer norms and the step between two models', () => {
  const before = new Float32Array([0, 0, 0]);
  const after = new Float32Array([0.5, 0.5, 0]);
  close(stepNorm(after, before), Math.SQRT1_2, 'step');
  close(totalNorm([3, 4]), 5, 'layers');
  const out = withSensitivities(
    [
      { clientId: 'a', numExamples: 1, norms: [3, 4] },
      { clientId: 'b', numExamples: 3, norms: [1, 0] },
    ],
    before,
    after,
  );
  close(out[0]!.sensitivity, (0.25 / 0.75) * (5 + Math.SQRT1_2), 'a');
  close(out[1]!.sensitivity, (0.75 / 0.25) * (1 + Math.SQRT1_2), 'b');
  assert.equal(out[0]!.clientId, 'a');
});

test('bad input is refused; only weighted means are bounded', () => {
  assert.throws(() => removalSensitivities([{ numExamples: 0, updateNorm: 1 }, { numExamples: 1, updateNorm: 1 }], 1), /numExamples/);
  assert.throws(() => removalSensitivities([{ numExamples: 1, updateNorm: NaN }, { numExamples: 1, updateNorm: 1 }], 1), /update norm/);
  assert.throws(() => removalSensitivities([], -1), /aggregate norm/);
  assert.equal(boundsSensitivity('fedavg'), true);
  assert.equal(boundsSensitivity('clipped-fedavg'), true);
  assert.equal(boundsSensitivity('median'), false);
  assert.equal(boundsSensitivity('trimmed-mean'), false);
});
