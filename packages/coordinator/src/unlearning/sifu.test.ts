import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RoundRecord } from '../history/store.js';
import { accumulateBounds, addGaussianNoise, gaussianMultiplier, rollbackCandidates, roundLipschitz, startOutsideSegments } from './sifu.js';

const close = (a: number, b: number, what: string, tol = 1e-9) => assert.ok(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b}`);
const hyper = { learningRate: 0.1, batchSize: 32, localEpochs: 1 };

type R = Pick<RoundRecord, 'participants'>;
const p = (clientId: string, sensitivity?: number, steps?: number): R['participants'][number] => ({
  clientId,
  numExamples: 100,
  norms: [1],
  hasUpdate: false,
  ...(sensitivity !== undefined ? { sensitivity } : {}),
  ...(steps !== undefined ? { metrics: { steps } } : {}),
});

test('the bound accumulates Psi(n+1) = B Psi(n) + zeta(n): by hand, with a round without participants and one without a kept sensitivity', () => {
  const rounds: R[] = [
    { participants: [p('a', 0.1), p('b', 0.2)] },
    { participants: [p('a', 0.3)] },
    { participants: [] }, // a perturbation: the identity, B = 1
    { participants: [p('b'), p('c', 0.05)] }, // b without a kept sensitivity
  ];
  const psi = accumulateBounds(rounds, ['a', 'b'], { lipschitz: 2 }, hyper);
  // a: 0, 0.1, 2*0.1 + 0.3 = 0.5, 0.5 (identity), 2*0.5 = 1.0
  assert.deepEqual(psi.map((m) => m.get('a')), [0, 0.1, 0.5, 0.5, 1.0]);
  // b: 0, 0.2, 0.4, 0.4, then unknown: infinite
  assert.deepEqual(psi.map((m) => m.get('b')), [0, 0.2, 0.4, 0.4, Infinity]);
  // B = 1 (the default): a plain sum.
  assert.deepEqual(accumulateBounds(rounds, ['a'], { lipschitz: 1 }, hyper).map((m) => m.get('a')), [0, 0.1, 0.4, 0.4, 0.4]);
});

test('with a smoothness L, one round is (1 + eta L)^K-Lipschitz, K the most local steps of its participants', () => {
  // eta 0.1, L 2: 1.2 per step; steps 3 and 5 reported: 1.2^5 = 2.48832
  close(roundLipschitz({ participants: [p('a', 0, 3), p('b', 0, 5)] }, { lipschitz: 1, smoothness: 2 }, hyper), 2.48832, 'reported steps');
  // No steps reported: ceil(1 epoch * 100 examples / 32) = 4 steps: 1.2^4 = 2.0736
  close(roundLipschitz({ participants: [p('a', 0)] }, { lipschitz: 1, smoothness: 2 }, hyper), 2.0736, 'steps from the hyper-parameters');
  assert.equal(roundLipschitz({ participants: [] }, { lipschitz: 1, smoothness: 2 }, hyper), 1);
  assert.equal(roundLipschitz({ participants: [p('a', 0)] }, { lipschitz: 0.9 }, hyper), 0.9);
});

test('the Gaussian mechanism: sigma per unit of bound is sqrt(2 ln(1.25/delta)) / epsilon', () => {
  // ln(125000) = 11.7360690; sqrt(23.4721380) = 4.8448053; / 0.5
  close(gaussianMultiplier(0.5, 1e-5), 9.6896106, 'epsilon 0.5, delta 1e-5', 1e-6);
  // sigma 0.05 covers a bound of 0.05 / 9.6896106 = 0.0051602
  close(0.05 / gaussianMultiplier(0.5, 1e-5), 0.0051602, 'budget', 1e-7);
  // epsilon 0.1, delta 0.01: sqrt(2 ln 125) = sqrt(9.6566275) = 3.1075115; / 0.1
  close(gaussianMultiplier(0.1, 0.01), 31.075115, 'epsilon 0.1, delta 0.01', 1e-5);
  assert.throws(() => gaussianMultiplier(1, 1e-5), /epsilon must be in \(0, 1\)/);
  assert.throws(() => gaussianMultiplier(0.5, 0), /delta must be in \(0, 1\)/);
});

test('the rollback candidates: the latest models whose bound keeps the budget, down to the model before t0', () => {
  const worst = [0, 0.1, 0.5, 0.5, 1.0];
  assert.deepEqual(rollbackCandidates(worst, 0.5, 0), [3, 2, 1, 0]);
  assert.deepEqual(rollbackCandidates(worst, 0.3, 0), [1, 0]);
  assert.deepEqual(rollbackCandidates(worst, 0.05, 0), [0]);
  assert.deepEqual(rollbackCandidates(worst, 2, 0), [4, 3, 2, 1, 0]);
  // Models before t0 never saw the forgotten clients: always candidates.
  assert.deepEqual(rollbackCandidates([0, 0, 0, 0.7], 0.1, 2), [2, 1, 0]);
  // A contracting round (B < 1) can bring the bound back under the budget: each model is judged on its own bound.
  assert.deepEqual(rollbackCandidates([0, 0.4, 0.2], 0.3, 0), [2, 0]);
});

test('the noise is seeded: the same key gives the same noise, another key other noise, with the standard deviation asked for', () => {
  const w = new Float32Array(200_001).fill(1);
  const a = addGaussianNoise(w, 0.05, 'k');
  const b = addGaussianNoise(w, 0.05, 'k');
  const c = addGaussianNoise(w, 0.05, 'other');
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.equal(w[0], 1, 'the input is left as it was');
  let s = 0;
  let s2 = 0;
  for (const x of a) {
    s += x - 1;
    s2 += (x - 1) ** 2;
  }
  const mean = s / a.length;
  const sd = Math.sqrt(s2 / a.length - mean * mean);
  // 200,001 draws: the sample sd is within 1% of sigma and the mean within 5 standard errors of 0.
  assert.ok(Math.abs(sd - 0.05) < 0.0005, `sd ${sd}`);
  assert.ok(Math.abs(mean) < (5 * 0.05) / Math.sqrt(a.length), `mean ${mean}`);
});

test('a job never starts inside an earlier sifu segment (its t0 up to its perturbation): the start moves back to the segment', () => {
  const r = (round: number, participants: string[], metrics: Record<string, number> = {}) => ({ round, participants: participants.map((id) => p(id, 0.1)), metrics });
  // Rounds 1-3 kept; an earlier job's segment from round 2 to its perturbation (round 4); round 5 continued.
  const rounds = [r(1, ['a']), r(2, ['a', 'b']), r(3, ['a', 'b']), r(4, [], { sifuNoiseSigma: 1, sifuSegmentStart: 2 }), r(5, ['a', 'c'])];
  assert.equal(startOutsideSegments(rounds, 2), 1, 't0 at round 3, inside: start before round 2');
  assert.equal(startOutsideSegments(rounds, 1), 1, 't0 at the segment start: already outside');
  assert.equal(startOutsideSegments(rounds, 0), 0);
  assert.equal(startOutsideSegments(rounds, 4), 4, 't0 after the perturbation: from the perturbed model');
  assert.equal(startOutsideSegments(rounds, -1), -1, 'nothing to remove');
});
