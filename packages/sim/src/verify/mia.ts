/**
 * A per-example membership inference witness: RMIA (Zarifzadeh, Liu, Cheng, Shokri, "Low-Cost High-Power Membership
 * Inference Attacks", ICML 2024, §3 and the offline variant of §4), built on reference models the unlearning setting
 * has for free (the global model from before the forgotten client's first round, which never saw it, and in
 * simulation the exact retrain).
 *
 * Inputs are each model's probability of the TRUE label per example (see {@link trueClassProbs}); nothing here runs a
 * model. For a target model θ and an example x:
 *
 *   Pr(x|θ) = p_θ(y_x | x);   Pr(x) = ½((1 + a)·mean_r p_r(y_x | x) + (1 − a))   (offline: every reference is OUT)
 *   LR(x, z) = (Pr(x|θ) / Pr(x)) / (Pr(z|θ) / Pr(z))
 *   score(x) = share of population examples z with LR(x, z) ≥ γ
 *
 * The population z are held-out examples of the same distribution, disjoint from the non-members the attack is
 * judged on. Members are the forgotten clients' examples, non-members other held-out examples. A score is per example:
 * the report gives the true-positive rate at a fixed low false-positive rate (the threshold set on the non-members'
 * scores) and the scores' quantiles, because an average over examples (a population-level AUC) hides the few examples
 * a model memorised (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022, §3; Hayes et al.,
 * "Inexact Unlearning Needs More Careful Evaluations", SaTML 2025).
 */

/** Probabilities at or below this count as this: a ratio of two zeros says nothing, and a log of 0 is not a number. */
const MIN_PROB = 1e-12;

/**
 * `probs` (row-major, numClasses per example) → each example's probability of its label, as float64.
 * @throws RangeError on a shape mismatch or a label outside [0, numClasses).
 */
export function trueClassProbs(probs: Float32Array, labels: Int32Array, numClasses: number): Float64Array {
  if (!Number.isInteger(numClasses) || numClasses < 1) throw new RangeError(`numClasses is ${numClasses}`);
  if (probs.length !== labels.length * numClasses) throw new RangeError(`${probs.length} probabilities for ${labels.length} labels of ${numClasses} classes`);
  const out = new Float64Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    const y = labels[i]!;
    if (!(y >= 0 && y < numClasses)) throw new RangeError(`label ${y} of example ${i} is not in [0, ${numClasses})`);
    out[i] = probs[i * numClasses + y]!;
  }
  return out;
}

/** One model's true-label probabilities on the three sets the attack uses. */
export interface ModelOutputs {
  members: Float64Array;
  nonMembers: Float64Array;
  population: Float64Array;
}

export interface RmiaOptions {
  /**
   * Offline scaling a ∈ [0, 1] of RMIA §4: Pr(x) ≈ ½((1 + a)·Pr_OUT(x) + (1 − a)) stands in for the mean over IN and
   * OUT reference models when every reference is OUT. Default 0.3: the paper fits a on reference models; we have not
   * fitted it here (with a = 1 the score is the plain ratio to the references' mean).
   */
  a?: number;
  /** Likelihood-ratio threshold γ ≥ 1 of RMIA's score; default 1. */
  gamma?: number;
}

function check(what: string, v: Float64Array, n?: number): void {
  if (v.length === 0) throw new RangeError(`no ${what} examples`);
  if (n !== undefined && v.length !== n) throw new RangeError(`${what}: ${v.length} values, the target has ${n}`);
  for (const p of v) if (!(p >= 0 && p <= 1)) throw new RangeError(`${what}: ${p} is not a probability`);
}

/**
 * RMIA scores of the members and the non-members against `target`, with `references` (at least one model, each OUT
 * for every example: it never trained on the members, the non-members or the population).
 * @returns scores in [0, 1] (share of population examples dominated), one per member and per non-member.
 * @throws RangeError without references, on empty sets, sizes that differ between models, or values outside [0, 1].
 */
export function rmiaScores(target: ModelOutputs, references: ModelOutputs[], opts: RmiaOptions = {}): { members: Float64Array; nonMembers: Float64Array } {
  const a = opts.a ?? 0.3;
  const gamma = opts.gamma ?? 1;
  if (!(a >= 0 && a <= 1)) throw new RangeError(`a = ${a} is not in [0, 1]`);
  if (!(gamma >= 1) || !Number.isFinite(gamma)) throw new RangeError(`gamma = ${gamma} must be a finite number >= 1`);
  if (references.length === 0) throw new RangeError('RMIA needs at least one reference model');
  check('members', target.members);
  check('non-members', target.nonMembers);
  check('population', target.population);
  for (const r of references) {
    check('reference members', r.members, target.members.length);
    check('reference non-members', r.nonMembers, target.nonMembers.length);
    check('reference population', r.population, target.population.length);
  }
  // log(Pr(x|θ) / Pr(x)) per example of one set: logs keep ratios of small probabilities exact enough to compare.
  const logRatio = (set: keyof ModelOutputs): Float64Array => {
    const t = target[set];
    const out = new Float64Array(t.length);
    for (let i = 0; i < t.length; i++) {
      let mean = 0;
      for (const r of references) mean += r[set][i]!;
      mean /= references.length;
      const prX = 0.5 * ((1 + a) * mean + (1 - a));
      out[i] = Math.log(Math.max(t[i]!, MIN_PROB)) - Math.log(Math.max(prX, MIN_PROB));
    }
    return out;
  };
  const pop = logRatio('population').sort();
  const logGamma = Math.log(gamma);
  // LR(x, z) ≥ γ ⇔ logRatio(z) ≤ logRatio(x) − log γ: the share of sorted population values at or below that bound.
  const score = (v: Float64Array): Float64Array => v.map((lx) => upperBound(pop, lx - logGamma) / pop.length);
  return { members: score(logRatio('members')), nonMembers: score(logRatio('nonMembers')) };
}

/** Number of values of the ascending `sorted` that are <= x. */
function upperBound(sorted: Float64Array, x: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * True-positive rate of "member iff score > τ" at the smallest τ whose false-positive rate on the non-members is at
 * most `fpr` (ties are never split: a threshold cannot tell equal scores apart, so they count on the same side).
 * With n non-members the smallest rate below 1/n that can be told from 0 is 0: `fpr` below 1/n asks for no false
 * positive at all (τ = the largest non-member score).
 * @throws RangeError on empty sets, NaN scores, or fpr outside [0, 1].
 */
export function tprAtFpr(memberScores: Float64Array, nonMemberScores: Float64Array, fpr: number): number {
  if (!(fpr >= 0 && fpr <= 1)) throw new RangeError(`fpr = ${fpr} is not in [0, 1]`);
  checkScores(memberScores, nonMemberScores);
  const neg = Float64Array.from(nonMemberScores).sort();
  const n = neg.length;
  const allowed = Math.floor(fpr * n + 1e-9);
  // τ = the (n − allowed)-th smallest non-member score: at most `allowed` non-members lie strictly above it.
  const tau = allowed >= n ? -Infinity : neg[n - allowed - 1]!;
  let tp = 0;
  for (const s of memberScores) if (s > tau) tp++;
  return tp / memberScores.length;
}

function checkScores(m: Float64Array, n: Float64Array): void {
  if (m.length === 0) throw new RangeError('no member scores');
  if (n.length === 0) throw new RangeError('no non-member scores');
  for (const s of m) if (Number.isNaN(s)) throw new RangeError('a member score is NaN');
  for (const s of n) if (Number.isNaN(s)) throw new RangeError('a non-member score is NaN');
}

/**
 * Area under the ROC curve of "higher score ⇒ member": P(member's score > non-member's) + ½ P(equal), by the
 * Mann–Whitney U statistic with average ranks for ties. 0.5 = chance.
 */
export function rocAuc(memberScores: Float64Array, nonMemberScores: Float64Array): number {
  checkScores(memberScores, nonMemberScores);
  const nM = memberScores.length;
  const nN = nonMemberScores.length;
  const all = new Float64Array(nM + nN);
  all.set(memberScores);
  all.set(nonMemberScores, nM);
  const order = Uint32Array.from(all.keys()).sort((x, y) => all[x]! - all[y]!);
  let rankSumM = 0;
  let i = 0;
  while (i < order.length) {
    let j = i;
    let membersHere = 0;
    while (j < order.length && all[order[j]!] === all[order[i]!]) {
      if (order[j]! < nM) membersHere++;
      j++;
    }
    rankSumM += membersHere * ((i + 1 + j) / 2);
    i = j;
  }
  return (rankSumM - (nM * (nM + 1)) / 2) / (nM * nN);
}

/** Quantiles (linear interpolation between order statistics, R type 7) of `values` at each `q` in [0, 1]. */
export function quantiles(values: Float64Array, qs: readonly number[]): number[] {
  if (values.length === 0) throw new RangeError('no values');
  const s = Float64Array.from(values).sort();
  return qs.map((q) => {
    if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile ${q} is not in [0, 1]`);
    const h = (s.length - 1) * q;
    const lo = Math.floor(h);
    const hi = Math.min(s.length - 1, lo + 1);
    return s[lo]! + (h - lo) * (s[hi]! - s[lo]!);
  });
}

/** The quantiles a witness reports of each set's scores. */
export const SCORE_QUANTILES = [0.05, 0.25, 0.5, 0.75, 0.95] as const;

/** What the witness says about one model. */
export interface WitnessFigures {
  /** TPR at 0.1 % and 1 % FPR on the forgotten clients' examples against held-out ones. */
  tprAt0_1: number;
  tprAt1: number;
  auc: number;
  /** Quantiles (SCORE_QUANTILES) of the members' and the non-members' scores. */
  memberScoreQuantiles: number[];
  nonMemberScoreQuantiles: number[];
  /** The smallest false-positive rate the non-member count can resolve (1 / n): a TPR at a lower FPR is at 0 FPR. */
  fprResolution: number;
  /** Which reference models the scores used (names, for the report). */
  references: string[];
  members: number;
  nonMembers: number;
  population: number;
}

/** RMIA scores of `target` against `references`, summarised (TPR at 0.1 % and 1 % FPR, AUC, score quantiles). */
export function witness(target: ModelOutputs, references: { name: string; outputs: ModelOutputs }[], opts: RmiaOptions = {}): WitnessFigures {
  const s = rmiaScores(
    target,
    references.map((r) => r.outputs),
    opts,
  );
  return {
    tprAt0_1: tprAtFpr(s.members, s.nonMembers, 0.001),
    tprAt1: tprAtFpr(s.members, s.nonMembers, 0.01),
    auc: rocAuc(s.members, s.nonMembers),
    memberScoreQuantiles: quantiles(s.members, SCORE_QUANTILES),
    nonMemberScoreQuantiles: quantiles(s.nonMembers, SCORE_QUANTILES),
    fprResolution: 1 / s.nonMembers.length,
    references: references.map((r) => r.name),
    members: s.members.length,
    nonMembers: s.nonMembers.length,
    population: target.population.length,
  };
}
