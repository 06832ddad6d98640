import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeRng, normal } from '../data/rng.js';
import { quantiles, rmiaScores, rocAuc, tprAtFpr, trueClassProbs, witness, type ModelOutputs } from './mia.js';

const f64 = (...v: number[]) => Float64Array.from(v);
const close = (got: number, want: number, tol: number, what = '') => assert.ok(Math.abs(got - want) <= tol, `${what} got ${got}, want ${want} ± ${tol}`);

/** Standard normal CDF (Abramowitz & Stegun 26.2.17, |error| < 7.5e-8): the known answers of the Gaussian cases. */
function phi(x: number): number {
  const t = 1 / (1 + 0.2316419 * Math.abs(x));
  const d = 0.3989422804014327 * Math.exp((-x * x) / 2);
  const p = d * t * (0.31938153 + t * (-0.356563782 + t * (1.781477937 + t * (-1.821255978 + t * 1.330274429))));
  return x >= 0 ? 1 - p : p;
}

const gaussians = (n: number, mean: number, stream: string) => {
  const rng = makeRng(42, stream);
  return Float64Array.from({ length: n }, () => mean + normal(rng));
};

test('trueClassProbs picks each row\'s label column and refuses bad shapes', () => {
  assert.deepEqual([...trueClassProbs(Float32Array.from([0.25, 0.75, 0.5, 0.5]), Int32Array.from([1, 0]), 2)], [0.75, 0.5]);
  assert.throws(() => trueClassProbs(Float32Array.from([0.5, 0.5, 1]), Int32Array.from([0]), 2), RangeError);
  assert.throws(() => trueClassProbs(Float32Array.from([0.5, 0.5]), Int32Array.from([2]), 2), /label 2/);
});

test('tprAtFpr: hand-computed thresholds on 100 non-members', () => {
  const non = Float64Array.from({ length: 100 }, (_, i) => i / 100); // 0.00 .. 0.99
  const members = f64(0.995, 0.985, 0.5, 0.1);
  // 1 % of 100: one non-member may be above τ = 0.98, so 0.995 and 0.985 count.
  assert.equal(tprAtFpr(members, non, 0.01), 0.5);
  // 0.1 % of 100 is no non-member at all: τ = 0.99, only 0.995 is above it.
  assert.equal(tprAtFpr(members, non, 0.001), 0.25);
  assert.equal(tprAtFpr(members, non, 0.5), 0.75);
  assert.equal(tprAtFpr(members, non, 1), 1);
});

test('tprAtFpr never splits ties: equal scores are all in or all out', () => {
  const same = f64(0.5, 0.5, 0.5, 0.5);
  assert.equal(tprAtFpr(same, same, 0.25), 0);
  assert.equal(tprAtFpr(same, same, 1), 1);
  assert.throws(() => tprAtFpr(f64(), same, 0.01), /no member/);
  assert.throws(() => tprAtFpr(same, f64(NaN), 0.01), /NaN/);
  assert.throws(() => tprAtFpr(same, same, 1.5), RangeError);
});

test('rocAuc: hand-computed with a tie; 1 and 0 for full separation', () => {
  // Pairs (3,1) (3,2) (2,1) win, (2,2) ties: 3.5 / 4.
  assert.equal(rocAuc(f64(3, 2), f64(1, 2)), 0.875);
  assert.equal(rocAuc(f64(5, 6), f64(1, 2, 3)), 1);
  assert.equal(rocAuc(f64(1), f64(2, 3)), 0);
});

test('two unit Gaussians 2 apart: TPR at 1 % FPR and AUC match the closed forms', () => {
  const n = 20_000;
  const members = gaussians(n, 2, 'members');
  const non = gaussians(n, 0, 'non');
  // TPR = 1 − Φ(z_0.99 − 2), z_0.99 = 2.3263; AUC = Φ(2 / √2).
  close(tprAtFpr(members, non, 0.01), 1 - phi(2.3263 - 2), 0.03, 'TPR@1%');
  close(tprAtFpr(members, non, 0.001), 1 - phi(3.0902 - 2), 0.04, 'TPR@0.1%');
  close(rocAuc(members, non), phi(2 / Math.SQRT2), 0.01, 'AUC');
});

test('members and non-members from one distribution: the attack scores chance', () => {
  const n = 20_000;
  const members = gaussians(n, 0, 'a');
  const non = gaussians(n, 0, 'b');
  close(tprAtFpr(members, non, 0.01), 0.01, 0.005, 'TPR@1%');
  close(rocAuc(members, non), 0.5, 0.01, 'AUC');
});

test('rmiaScores: hand-computed likelihood ratios against the population', () => {
  // a = 1: Pr(x) is the reference's probability itself. Member ratio 0.9/0.3 = 3; population ratios 1, 2, 5;
  // non-member ratio 1.
  const target: ModelOutputs = { members: f64(0.9), nonMembers: f64(0.5), population: f64(0.5, 0.5, 0.5) };
  const ref: ModelOutputs = { members: f64(0.3), nonMembers: f64(0.5), population: f64(0.5, 0.25, 0.1) };
  const g1 = rmiaScores(target, [ref], { a: 1, gamma: 1 });
  close(g1.members[0]!, 2 / 3, 1e-12); // 1 and 2 are ≤ 3
  close(g1.nonMembers[0]!, 1 / 3, 1e-12); // only 1 is ≤ 1
  const g2 = rmiaScores(target, [ref], { a: 1, gamma: 2 });
  close(g2.members[0]!, 1 / 3, 1e-12); // ratio / 2 = 1.5: only 1 is ≤ it
  // a = 0: Pr(x) = (p_ref + 1) / 2; two references average first: member (0.3 + 0.5)/2 = 0.4 → Pr = 0.7, ratio 9/7.
  const ref2: ModelOutputs = { members: f64(0.5), nonMembers: f64(0.5), population: f64(0.5, 0.5, 0.5) };
  const g0 = rmiaScores(target, [ref, ref2], { a: 0 });
  // population Pr: (0.5+1)/2 = 0.75 → 0.667; (0.375+1)/2 = 0.6875 → 0.727; (0.3+1)/2 = 0.65 → 0.769; all ≤ 9/7.
  close(g0.members[0]!, 1, 1e-12);
  assert.throws(() => rmiaScores(target, []), /at least one reference/);
  assert.throws(() => rmiaScores(target, [{ ...ref, members: f64(0.1, 0.2) }]), /reference members/);
  assert.throws(() => rmiaScores(target, [ref], { a: 2 }), RangeError);
  assert.throws(() => rmiaScores({ ...target, members: f64(1.5) }, [ref]), /not a probability/);
});

/**
 * Synthetic models: every example has a difficulty d (some are easy, some hard); a model's probability of the true
 * label is sigmoid(d + noise), plus `boost` on the examples it trained on. The reference models never trained on any.
 */
function synthetic(n: number, boost: number, seed: string): { target: ModelOutputs; refs: ModelOutputs[] } {
  const rng = makeRng(7, seed);
  const sig = (v: number) => 1 / (1 + Math.exp(-v));
  const difficulty = (k: number) => Float64Array.from({ length: k }, () => 3 * normal(rng));
  const d = { members: difficulty(n), nonMembers: difficulty(n), population: difficulty(n) };
  const model = (memberBoost: number): ModelOutputs => ({
    members: d.members.map((v) => sig(v + memberBoost + 0.3 * normal(rng))),
    nonMembers: d.nonMembers.map((v) => sig(v + 0.3 * normal(rng))),
    population: d.population.map((v) => sig(v + 0.3 * normal(rng))),
  });
  return { target: model(boost), refs: [model(0), model(0)] };
}

test('RMIA scores chance when the target never saw the members', () => {
  const { target, refs } = synthetic(5000, 0, 'out');
  const w = witness(target, refs.map((outputs, i) => ({ name: `ref ${i}`, outputs })));
  close(w.auc, 0.5, 0.02, 'AUC');
  close(w.tprAt1, 0.01, 0.01, 'TPR@1%');
  assert.equal(w.fprResolution, 1 / 5000);
  assert.deepEqual(w.references, ['ref 0', 'ref 1']);
});

test('RMIA finds memorised examples that a loss threshold misses at low FPR (per-example difficulty calibrated away)', () => {
  const { target, refs } = synthetic(5000, 2, 'in');
  const w = witness(target, refs.map((outputs, i) => ({ name: `ref ${i}`, outputs })));
  // The loss attack: the target's own probability as the score.
  const lossTpr = tprAtFpr(target.members, target.nonMembers, 0.01);
  assert.ok(w.tprAt1 > 0.3, `RMIA TPR@1% ${w.tprAt1}`);
  assert.ok(w.tprAt1 > 3 * lossTpr, `RMIA TPR@1% ${w.tprAt1} against the loss attack's ${lossTpr}`);
  const lossAuc = rocAuc(target.members, target.nonMembers);
  assert.ok(w.auc > 0.8 && w.auc > lossAuc, `RMIA AUC ${w.auc} against the loss attack's ${lossAuc}`);
  // Members' median score is high, non-members' about the middle of the population.
  assert.ok(w.memberScoreQuantiles[2]! > 0.8, `members' median ${w.memberScoreQuantiles[2]}`);
  close(w.nonMemberScoreQuantiles[2]!, 0.5, 0.05, "non-members' median");
});

test('quantiles interpolate between order statistics', () => {
  assert.deepEqual(quantiles(f64(4, 1, 3, 2), [0, 0.5, 1]), [1, 2.5, 4]);
  assert.deepEqual(quantiles(f64(0, 10), [0.25]), [2.5]);
  assert.throws(() => quantiles(f64(), [0.5]), /no values/);
});
