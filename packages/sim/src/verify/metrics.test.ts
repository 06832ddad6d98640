import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  accuracy,
  attackSuccessRate,
  displacementCosine,
  fitLossThreshold,
  l2Distance,
  meanCrossEntropy,
  membershipInference,
  perExampleLoss,
  predictionDissimilarity,
} from './metrics.js';
import seedrandom from 'seedrandom';

const f64 = (...v: number[]) => Float64Array.from(v);
const close = (got: number, want: number, tol = 1e-12) =>
  assert.ok(Math.abs(got - want) <= tol, `got ${got}, want ${want}`);

/** Seeded, so that the property checks are reproducible. */
const rng = (seed: number): (() => number) => seedrandom(String(seed));

/** AUC by its definition, over every (member, non-member) pair: an O(n²) check independent of the rank formula. */
function bruteForceAuc(member: Float64Array, nonMember: Float64Array): number {
  let s = 0;
  for (const m of member) for (const n of nonMember) s += m < n ? 1 : m === n ? 0.5 : 0;
  return s / (member.length * nonMember.length);
}

// Three samples, three classes. Predictions (argmax): 1, 0, 2. Labels: 1, 2, 2.
const probs3 = Float32Array.of(0.25, 0.5, 0.25, 0.5, 0.25, 0.25, 0, 0.125, 0.875);
const labels3 = Int32Array.of(1, 2, 2);

test('accuracy counts argmax hits', () => {
  // Sample 0 right (1), sample 1 wrong (0 vs 2), sample 2 right (2): 2 of 3.
  close(accuracy(probs3, labels3, 3), 2 / 3);
  close(accuracy(probs3, Int32Array.of(0, 0, 0), 3), 1 / 3);
});

test('accuracy breaks ties toward the lowest class', () => {
  close(accuracy(Float32Array.of(0.5, 0.5), Int32Array.of(0), 2), 1);
  close(accuracy(Float32Array.of(0.5, 0.5), Int32Array.of(1), 2), 0);
});

test('perExampleLoss is -log(p_true), clamped at 1e-7', () => {
  // p_true: 0.5, 0.25, 0.875; a zero probability is clamped: -ln(1e-7) = 7 ln 10.
  const l = perExampleLoss(probs3, labels3, 3);
  close(l[0]!, Math.LN2);
  close(l[1]!, 2 * Math.LN2);
  close(l[2]!, -Math.log(0.875));
  const clamped = perExampleLoss(Float32Array.of(1, 0), Int32Array.of(1), 2);
  close(clamped[0]!, 7 * Math.LN10, 1e-9);
  close(meanCrossEntropy(probs3, labels3, 3), (3 * Math.LN2 - Math.log(0.875)) / 3);
});

test('attackSuccessRate: share of triggered inputs predicted as the target', () => {
  // Predictions 1, 0, 2: with target 0 one of three hits.
  close(attackSuccessRate(probs3, 3, 0), 1 / 3);
  close(attackSuccessRate(probs3, 3, 2), 1 / 3);
  // With clean labels (0, 1, 1), the row of class 0 is left out: predictions of the rest are 0 and 2 -> 1 of 2.
  close(attackSuccessRate(probs3, 3, 0, Int32Array.of(0, 1, 1)), 1 / 2);
  // The one row left is predicted 1, not the target 0.
  close(attackSuccessRate(probs3, 3, 0, Int32Array.of(1, 0, 0)), 0);
  // Target 1 with clean labels (0, 1, 1): only row 0 counts, and it is predicted 1.
  close(attackSuccessRate(probs3, 3, 1, Int32Array.of(0, 1, 1)), 1);
  assert.throws(() => attackSuccessRate(probs3, 3, 0, Int32Array.of(0, 0, 0)), RangeError);
  assert.throws(() => attackSuccessRate(probs3, 3, 3), RangeError);
});

test('AUC is 1 for perfectly separated losses, 0 for reversed ones', () => {
  const low = f64(0.1, 0.2, 0.3);
  const high = f64(0.5, 0.6, 0.7, 0.8);
  close(membershipInference(low, high, 0.4).auc, 1);
  close(membershipInference(high, low, 0.4).auc, 0);
});

test('AUC of a small example with ties, computed by hand', () => {
  // Members 1, 2, 3; non-members 2, 4. Pairs (m, n): (1,2) 1, (1,4) 1, (2,2) ½, (2,4) 1, (3,2) 0, (3,4) 1.
  // Sum 4.5 over 6 pairs = 0.75.
  close(membershipInference(f64(1, 2, 3), f64(2, 4), 2.5).auc, 0.75);
  // All equal: every pair is a tie -> 0.5.
  close(membershipInference(f64(1, 1), f64(1, 1, 1), 1).auc, 0.5);
});

test('AUC agrees with the pairwise definition on random samples with many ties', () => {
  const next = rng(5);
  for (let trial = 0; trial < 20; trial++) {
    const m = Float64Array.from({ length: 1 + Math.floor(next() * 40) }, () => Math.round(next() * 8) / 4);
    const n = Float64Array.from({ length: 1 + Math.floor(next() * 40) }, () => Math.round(next() * 8 + 1) / 4);
    close(membershipInference(m, n, 1).auc, bruteForceAuc(m, n), 1e-12);
  }
});

test('AUC is about 0.5 when members and non-members come from one distribution', () => {
  const next = rng(9);
  const draw = () => -Math.log(1 - next()); // exponential losses
  const m = Float64Array.from({ length: 4000 }, draw);
  const n = Float64Array.from({ length: 4000 }, draw);
  // Standard error of the AUC here is about sqrt((n_M + n_N + 1) / (12 n_M n_N)) ≈ 0.0065; allow 4 of them.
  close(membershipInference(m, n, 1).auc, 0.5, 0.026);
});

test('fitLossThreshold puts the threshold midway in the gap of separated losses', () => {
  close(fitLossThreshold(f64(0.1, 0.2, 0.3), f64(0.5, 0.6)), 0.4, 1e-15);
});

test('fitLossThreshold maximises balanced accuracy and prefers the smaller threshold on a tie', () => {
  /*
   * Sorted: 1m 2m 2.5n 3m 4n 5n 6n 10m (4 members, 4 non-members). Balanced accuracy after each value:
   * 1: (.25+1)/2=.625  2: (.5+1)/2=.75  2.5: (.5+.75)/2=.625  3: (.75+.75)/2=.75  4: .625  5: .5  6: .375  10: .5.
   * Best .75, after 2 (threshold 2.25) and after 3 (threshold 3.5): the smaller wins.
   */
  close(fitLossThreshold(f64(1, 2, 3, 10), f64(2.5, 4, 5, 6)), 2.25, 1e-15);
});

test('fitLossThreshold balances the classes instead of maximising raw accuracy', () => {
  /*
   * Members 1, 2; non-members 1.5 ×3, 5 ×7.
   * After 1: TPR .5, FPR 0   -> balanced .75,  raw accuracy (1 + 10) / 12 = .917
   * After 1.5: TPR .5, FPR .3 -> balanced .6
   * After 2: TPR 1, FPR .3    -> balanced .85, raw accuracy (2 + 7) / 12 = .75
   * Balanced accuracy picks the cut after 2: threshold (2 + 5) / 2 = 3.5; raw accuracy would have picked 1.25.
   */
  const members = f64(1, 2);
  const nonMembers = f64(1.5, 1.5, 1.5, 5, 5, 5, 5, 5, 5, 5);
  const t = fitLossThreshold(members, nonMembers);
  close(t, 3.5, 1e-15);
  // Precision at a balanced 1:1 ratio is TPR / (TPR + FPR) = 1 / 1.3; on the raw, imbalanced sets it would be 2/5.
  const r = membershipInference(members, nonMembers, t);
  close(r.recall, 1);
  close(r.precision, 1 / 1.3);
  assert.equal(r.threshold, 3.5);
});

test('fitLossThreshold keeps a tied value on one side', () => {
  // Members 1, 1; non-members 1, 3. Cut after 1: TPR 1, FPR .5 -> .75; after 3: .5. Threshold (1 + 3) / 2 = 2.
  close(fitLossThreshold(f64(1, 1), f64(1, 3)), 2, 1e-15);
  // Only one distinct value: the only cut is "everyone", at that value.
  assert.equal(fitLossThreshold(f64(1, 1), f64(1)), 1);
});

test('membershipInference applies a fixed threshold to another model\'s losses', () => {
  // Threshold 3.5 from the original model; the new model's losses: members 1, 4, 5, 6; non-members 2, 7.
  // Members called members: 1 -> recall .25. Non-members called members: 2 -> FPR .5. Precision .25 / .75 = 1/3.
  const r = membershipInference(f64(1, 4, 5, 6), f64(2, 7), 3.5);
  close(r.recall, 0.25);
  close(r.precision, 1 / 3);
  // AUC pairs: member 1 beats 2 and 7 (2); members 4, 5, 6 beat only 7 (3). 5 of 8.
  close(r.auc, 5 / 8);
  // Nobody called a member: precision undefined.
  assert.ok(Number.isNaN(membershipInference(f64(1), f64(2), 0).precision));
});

test('membership functions refuse empty and NaN inputs', () => {
  assert.throws(() => fitLossThreshold(f64(), f64(1)), RangeError);
  assert.throws(() => fitLossThreshold(f64(1), f64(Number.NaN)), RangeError);
  assert.throws(() => membershipInference(f64(1), f64(), 1), RangeError);
  assert.throws(() => membershipInference(f64(1), f64(2), Number.NaN), RangeError);
});

test('l2Distance and displacementCosine', () => {
  close(l2Distance(Float32Array.of(0, 0), Float32Array.of(3, 4)), 5);
  close(l2Distance(Float32Array.of(1, 2, 3), Float32Array.of(1, 2, 3)), 0);
  const init = Float32Array.of(10, 10);
  // Displacements (1, 0) and (0, 2): orthogonal, although the raw vectors (11, 10) and (10, 12) have cosine ≈ 0.99.
  close(displacementCosine(Float32Array.of(11, 10), Float32Array.of(10, 12), init), 0);
  close(displacementCosine(Float32Array.of(11, 10), Float32Array.of(13, 10), init), 1);
  close(displacementCosine(Float32Array.of(11, 10), Float32Array.of(8, 10), init), -1);
  // (1, 1) vs (1, 0): 1 / sqrt 2.
  close(displacementCosine(Float32Array.of(11, 11), Float32Array.of(11, 10), init), Math.SQRT1_2);
  assert.ok(Number.isNaN(displacementCosine(init, Float32Array.of(11, 10), init)));
  assert.throws(() => l2Distance(Float32Array.of(1), Float32Array.of(1, 2)), RangeError);
});

test('predictionDissimilarity is the mean L2 gap between output rows', () => {
  // Row 1: (1, 0) vs (0, 1) -> sqrt 2. Row 2: identical -> 0. Mean sqrt(2) / 2.
  const a = Float32Array.of(1, 0, 0.5, 0.5);
  const b = Float32Array.of(0, 1, 0.5, 0.5);
  close(predictionDissimilarity(a, b, 2), Math.SQRT2 / 2);
  close(predictionDissimilarity(a, a, 2), 0);
  assert.throws(() => predictionDissimilarity(a, Float32Array.of(1, 0), 2), RangeError);
});

test('shape errors are refused', () => {
  assert.throws(() => accuracy(Float32Array.of(0.5, 0.5, 1), Int32Array.of(0), 2), RangeError);
  assert.throws(() => accuracy(new Float32Array(0), new Int32Array(0), 2), RangeError);
  assert.throws(() => accuracy(probs3, Int32Array.of(0, 1), 3), RangeError);
  assert.throws(() => accuracy(probs3, Int32Array.of(0, 1, 3), 3), RangeError);
  assert.throws(() => perExampleLoss(probs3, Int32Array.of(0, -1, 2), 3), RangeError);
});
