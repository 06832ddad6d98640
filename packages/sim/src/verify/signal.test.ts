import { test } from 'node:test';
import assert from 'node:assert/strict';
import { aucSe, meanSd, signalInRun, signalOverSeeds } from './signal.js';

test('one run: a rate gap far beyond its binomial error carries signal, one within it does not', () => {
  // 200 members: SE(0.30) = 0.0324, SE(0.01) = 0.0070; 3 * hypot = 0.0995 < 0.29.
  const big = signalInRun({ name: 'tpr', original: 0.3, retrain: 0.01, kind: 'rate', n: 200 });
  assert.equal(big.carriesSignal, true);
  assert.ok(Math.abs(big.noise - 3 * Math.hypot(Math.sqrt(0.3 * 0.7 / 200), Math.sqrt(0.01 * 0.99 / 200))) < 1e-12);
  assert.equal(signalInRun({ name: 'tpr', original: 0.03, retrain: 0.01, kind: 'rate', n: 200 }).carriesSignal, false);
  // Both 0: the half-example floor keeps the noise above 0, and a zero gap is never signal.
  const zero = signalInRun({ name: 'tpr', original: 0, retrain: 0, kind: 'rate', n: 200 });
  assert.equal(zero.carriesSignal, false);
  assert.ok(zero.noise > 0);
  // A witness scoring the retrain HIGHER than the original is not a witness of forgetting.
  assert.equal(signalInRun({ name: 'acc', original: 0.2, retrain: 0.9, kind: 'rate', n: 200 }).carriesSignal, false);
});

test('one run: AUC judged with the Hanley-McNeil error', () => {
  // A = 0.5, 100 x 100: Q1 = 1/3, Q2 = 1/3, var = (0.25 + 99/12 + 99/12) / 1e4 = 0.0016750 → SE 0.040927.
  assert.ok(Math.abs(aucSe(0.5, 100, 100) - Math.sqrt((0.25 + 2 * 99 * (1 / 3 - 0.25)) / 1e4)) < 1e-12);
  assert.equal(signalInRun({ name: 'auc', original: 0.53, retrain: 0.5, kind: 'auc', n: 100, nNeg: 100 }).carriesSignal, false);
  assert.equal(signalInRun({ name: 'auc', original: 0.9, retrain: 0.5, kind: 'auc', n: 100, nNeg: 100 }).carriesSignal, true);
  assert.throws(() => signalInRun({ name: 'auc', original: 0.9, retrain: 0.5, kind: 'auc', n: 100 }), /no examples/);
});

test('over seeds: the mean difference must exceed twice its spread', () => {
  const s = signalOverSeeds('tpr', [0.3, 0.35, 0.25], [0.01, 0.02, 0.0]);
  // differences 0.29, 0.33, 0.25: mean 0.29, SD 0.04.
  assert.ok(Math.abs(s.separation - 0.29) < 1e-12);
  assert.ok(Math.abs(s.noise - 0.08) < 1e-12);
  assert.equal(s.carriesSignal, true);
  // differences 0.1, -0.1, 0.05: mean 0.0167 against an SD of 0.104.
  assert.equal(signalOverSeeds('auc', [0.6, 0.4, 0.55], [0.5, 0.5, 0.5]).carriesSignal, false);
  assert.throws(() => signalOverSeeds('x', [1], [0]), /two seeds/);
  assert.deepEqual(meanSd([2, 4]), { mean: 3, sd: Math.SQRT2 });
});
