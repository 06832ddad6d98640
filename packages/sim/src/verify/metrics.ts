/**
 * Figures that say whether a client was forgotten, computed from arrays the simulation already has: model output
 * probabilities (row-major, numClasses per sample), labels and flat parameter vectors. Nothing here runs a model.
 * Every sum is accumulated in float64. Inputs of the wrong shape or empty sample sets throw a RangeError, because a
 * figure computed over nothing would be reported as if it meant something.
 */

/** Losses are clamped at -log(1e-7) so that one confidently wrong prediction cannot make a mean infinite. */
const MIN_PROB = 1e-7;

function sampleCount(probs: Float32Array, numClasses: number): number {
  if (!Number.isInteger(numClasses) || numClasses < 1) throw new RangeError(`numClasses is ${numClasses}`);
  if (probs.length % numClasses !== 0) {
    throw new RangeError(`${probs.length} probabilities do not split into rows of ${numClasses}`);
  }
  const n = probs.length / numClasses;
  if (n === 0) throw new RangeError('no samples');
  return n;
}

function checkLabels(probs: Float32Array, labels: Int32Array, numClasses: number): number {
  const n = sampleCount(probs, numClasses);
  if (labels.length !== n) throw new RangeError(`${labels.length} labels for ${n} samples`);
  for (let i = 0; i < n; i++) {
    const y = labels[i]!;
    if (y < 0 || y >= numClasses) throw new RangeError(`label ${y} of sample ${i} is not in [0, ${numClasses})`);
  }
  return n;
}

/** The predicted class of sample `i`; on a tie the lowest class index wins (as tf.argMax does). */
function argmaxRow(probs: Float32Array, numClasses: number, i: number): number {
  const off = i * numClasses;
  let best = 0;
  let bestP = probs[off]!;
  for (let c = 1; c < numClasses; c++) {
    const p = probs[off + c]!;
    if (p > bestP) {
      bestP = p;
      best = c;
    }
  }
  return best;
}

/** Share of samples whose highest-probability class is the label (ties go to the lowest class index). */
export function accuracy(probs: Float32Array, labels: Int32Array, numClasses: number): number {
  const n = checkLabels(probs, labels, numClasses);
  let correct = 0;
  for (let i = 0; i < n; i++) if (argmaxRow(probs, numClasses, i) === labels[i]) correct++;
  return correct / n;
}

/** Per-sample cross-entropy -log(p_true), with p_true clamped below at 1e-7. */
export function perExampleLoss(probs: Float32Array, labels: Int32Array, numClasses: number): Float64Array {
  const n = checkLabels(probs, labels, numClasses);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const p = probs[i * numClasses + labels[i]!]!;
    out[i] = -Math.log(Math.max(p, MIN_PROB));
  }
  return out;
}

/** Mean of perExampleLoss. */
export function meanCrossEntropy(probs: Float32Array, labels: Int32Array, numClasses: number): number {
  const losses = perExampleLoss(probs, labels, numClasses);
  let s = 0;
  for (const l of losses) s += l;
  return s / losses.length;
}

/**
 * Backdoor attack success: share of triggered inputs, not of the target class originally, predicted as the target.
 * `probs` are the model's outputs on triggered inputs. The caller either passes only inputs whose clean label is not
 * the target, or passes `originalLabels` (clean labels, one per row) and the rows of the target class are left out
 * here; counting them would credit the backdoor with correct clean predictions.
 */
export function attackSuccessRate(
  probs: Float32Array,
  numClasses: number,
  targetClass: number,
  originalLabels?: Int32Array,
): number {
  const n = originalLabels ? checkLabels(probs, originalLabels, numClasses) : sampleCount(probs, numClasses);
  if (!Number.isInteger(targetClass) || targetClass < 0 || targetClass >= numClasses) {
    throw new RangeError(`target class ${targetClass} is not in [0, ${numClasses})`);
  }
  let counted = 0;
  let hits = 0;
  for (let i = 0; i < n; i++) {
    if (originalLabels && originalLabels[i] === targetClass) continue;
    counted++;
    if (argmaxRow(probs, numClasses, i) === targetClass) hits++;
  }
  if (counted === 0) throw new RangeError('every triggered input is of the target class; the attack success rate is undefined');
  return hits / counted;
}

function checkLosses(what: string, losses: Float64Array): void {
  if (losses.length === 0) throw new RangeError(`no ${what} losses`);
  for (const l of losses) if (Number.isNaN(l)) throw new RangeError(`a ${what} loss is NaN`);
}

/**
 * Loss-threshold membership inference (Yeom et al. 2018), fitting step: on the ORIGINAL model's losses, the threshold
 * t that maximises balanced accuracy (TPR + TNR) / 2 of the rule "member iff loss <= t".
 *
 * Balancing: balanced accuracy weighs the two sets equally whatever their sizes, which is exactly what subsampling
 * the larger set to the smaller one's size does in expectation; computing it on the full sets gives the same target
 * without the sampling noise or a seed.
 *
 * The threshold is placed midway between adjacent distinct losses (so that another model's slightly shifted losses
 * are not decided by which side of a sample value they fall on), or at the largest loss when "everyone is a member" is
 * best. On equal balanced accuracy the smallest threshold wins: it claims fewer members.
 */
export function fitLossThreshold(memberLoss: Float64Array, nonMemberLoss: Float64Array): number {
  checkLosses('member', memberLoss);
  checkLosses('non-member', nonMemberLoss);
  const nM = memberLoss.length;
  const nN = nonMemberLoss.length;
  const all = new Float64Array(nM + nN);
  all.set(memberLoss);
  all.set(nonMemberLoss, nM);
  const order = sortedOrder(all);

  let bestScore = -1;
  let bestThreshold = Number.NaN;
  let tp = 0;
  let fp = 0;
  let i = 0;
  while (i < order.length) {
    // Take every sample with this loss value at once: a threshold cannot split a tie.
    const value = all[order[i]!]!;
    while (i < order.length && all[order[i]!] === value) {
      if (order[i]! < nM) tp++;
      else fp++;
      i++;
    }
    const score = (tp / nM + (1 - fp / nN)) / 2;
    if (score > bestScore) {
      bestScore = score;
      bestThreshold = i < order.length ? midpoint(value, all[order[i]!]!) : value;
    }
  }
  return bestThreshold;
}

/** A threshold strictly between a and b (a < b) when the floats allow one, else a: it must keep a in and b out. */
function midpoint(a: number, b: number): number {
  const m = a + (b - a) / 2;
  return m < b && Number.isFinite(m) ? m : a;
}

/** Indices of `values` in ascending order of value. */
function sortedOrder(values: Float64Array): Uint32Array {
  const order = new Uint32Array(values.length);
  for (let i = 0; i < order.length; i++) order[i] = i;
  return order.sort((x, y) => values[x]! - values[y]!);
}

export interface MembershipInferenceResult {
  /** P(a member's loss < a non-member's loss) + ½ P(equal): threshold-free, 0.5 = no signal. */
  auc: number;
  /**
   * Of the samples called members, the share that are, at a 1:1 member/non-member ratio: TPR / (TPR + FPR), the
   * precision on a balanced subsample, in expectation. 0.5 = chance. NaN when no sample is called a member.
   */
  precision: number;
  /** Share of members called members (TPR). */
  recall: number;
  threshold: number;
}

/**
 * Loss-threshold membership inference, applying step: the fixed `threshold` (fitted on the original model with
 * fitLossThreshold) applied to another model's losses on the same members (the forgotten client's clean data) and
 * non-members (held-out data). A sample is called a member iff its loss <= threshold.
 *
 * The AUC comes from the losses alone, via the Mann–Whitney U statistic with average ranks for ties.
 */
export function membershipInference(
  memberLoss: Float64Array,
  nonMemberLoss: Float64Array,
  threshold: number,
): MembershipInferenceResult {
  checkLosses('member', memberLoss);
  checkLosses('non-member', nonMemberLoss);
  if (Number.isNaN(threshold)) throw new RangeError('threshold is NaN');
  let tp = 0;
  for (const l of memberLoss) if (l <= threshold) tp++;
  let fp = 0;
  for (const l of nonMemberLoss) if (l <= threshold) fp++;
  const tpr = tp / memberLoss.length;
  const fpr = fp / nonMemberLoss.length;
  return {
    auc: lossAuc(memberLoss, nonMemberLoss),
    precision: tpr + fpr > 0 ? tpr / (tpr + fpr) : Number.NaN,
    recall: tpr,
    threshold,
  };
}

/**
 * AUC of "lower loss ⇒ member" = U_N / (n_M n_N), where U_N is the Mann–Whitney statistic of the non-members' losses
 * (ranked ascending, ties sharing their average rank): the number of (member, non-member) pairs in which the
 * non-member's loss is higher, ties counting one half.
 */
function lossAuc(memberLoss: Float64Array, nonMemberLoss: Float64Array): number {
  const nM = memberLoss.length;
  const nN = nonMemberLoss.length;
  const all = new Float64Array(nM + nN);
  all.set(memberLoss);
  all.set(nonMemberLoss, nM);
  const order = sortedOrder(all);
  let rankSumN = 0;
  let i = 0;
  while (i < order.length) {
    let j = i;
    const value = all[order[i]!]!;
    let nonMembersHere = 0;
    while (j < order.length && all[order[j]!] === value) {
      if (order[j]! >= nM) nonMembersHere++;
      j++;
    }
    // Ranks i+1 .. j share their mean.
    rankSumN += nonMembersHere * ((i + 1 + j) / 2);
    i = j;
  }
  const u = rankSumN - (nN * (nN + 1)) / 2;
  return u / (nM * nN);
}

function checkSameLength(a: ArrayLike<number>, b: ArrayLike<number>): void {
  if (a.length !== b.length) throw new RangeError(`vectors of ${a.length} and ${b.length} values`);
}

/** Euclidean distance between two flat parameter vectors. */
export function l2Distance(a: Float32Array, b: Float32Array): number {
  checkSameLength(a, b);
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    s += d * d;
  }
  return Math.sqrt(s);
}

/**
 * cos(a - init, b - init): whether two models moved away from the shared initial model in the same direction. The
 * raw-weight cosine is dominated by the initial weights (above 0.98 for any two models here) and says nothing.
 * NaN when either model has not moved from init: a direction is then undefined.
 */
export function displacementCosine(a: Float32Array, b: Float32Array, init: Float32Array): number {
  checkSameLength(a, init);
  checkSameLength(b, init);
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < init.length; i++) {
    const x = init[i]!;
    const da = a[i]! - x;
    const db = b[i]! - x;
    dot += da * db;
    na += da * da;
    nb += db * db;
  }
  if (na === 0 || nb === 0) return Number.NaN;
  // Clamped because rounding can push |cos| of (anti)parallel vectors a hair past 1.
  return Math.min(1, Math.max(-1, dot / Math.sqrt(na * nb)));
}

/** P_diss (FedEraser): mean over samples of ||p_a(x) - p_b(x)||_2 between two models' output probabilities. */
export function predictionDissimilarity(probsA: Float32Array, probsB: Float32Array, numClasses: number): number {
  checkSameLength(probsA, probsB);
  const n = sampleCount(probsA, numClasses);
  let total = 0;
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let c = i * numClasses; c < (i + 1) * numClasses; c++) {
      const d = probsA[c]! - probsB[c]!;
      s += d * d;
    }
    total += Math.sqrt(s);
  }
  return total / n;
}
