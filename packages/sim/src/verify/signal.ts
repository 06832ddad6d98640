/**
 * Which witness of forgetting carries signal in a run: one whose original model stands apart from the exact retrain
 * by more than the figure's own noise. A witness that scores the original and the retrain alike cannot say whether a
 * method forgot anything, however its rows look. The noise comes from the run itself: in one run, the sampling error
 * of each figure (binomial for rates, Hanley–McNeil for an AUC); over seeds, the spread of the original-minus-retrain
 * difference across seeds.
 */

/** One witness's figure on the original model and on the retrain, with what its sampling error depends on. */
export interface WitnessPair {
  name: string;
  original: number;
  retrain: number;
  /** 'rate': a share of `n` examples (TPR, accuracy, attack success); 'auc': an AUC over nPos x nNeg pairs. */
  kind: 'rate' | 'auc';
  /** Examples the rate is over (kind 'rate'), or positives (kind 'auc'). */
  n: number;
  /** Negatives (kind 'auc' only). */
  nNeg?: number;
}

export interface SignalVerdict {
  name: string;
  /** original − retrain (a witness of forgetting scores the original higher). */
  separation: number;
  /** The separation a witness must exceed: 3 standard errors of the difference (one run), or 2 seed standard deviations. */
  noise: number;
  carriesSignal: boolean;
  basis: string;
}

/** Standard error of a rate p over n examples; p kept half an example away from 0 and 1, where the binomial SE is 0. */
function rateSe(p: number, n: number): number {
  const q = Math.min(1 - 0.5 / n, Math.max(0.5 / n, p));
  return Math.sqrt((q * (1 - q)) / n);
}

/** Hanley & McNeil (Radiology 1982) standard error of an AUC A over nPos positives and nNeg negatives. */
export function aucSe(a: number, nPos: number, nNeg: number): number {
  const q1 = a / (2 - a);
  const q2 = (2 * a * a) / (1 + a);
  const v = (a * (1 - a) + (nPos - 1) * (q1 - a * a) + (nNeg - 1) * (q2 - a * a)) / (nPos * nNeg);
  return Math.sqrt(Math.max(v, 0));
}

/** One run: signal iff original − retrain > 3 standard errors of that difference (the two figures independent). */
export function signalInRun(p: WitnessPair): SignalVerdict {
  if (!(p.n > 0) || (p.kind === 'auc' && !((p.nNeg ?? 0) > 0))) throw new RangeError(`${p.name}: no examples to judge a signal on`);
  const se = (v: number) => (p.kind === 'rate' ? rateSe(v, p.n) : aucSe(v, p.n, p.nNeg!));
  const noise = 3 * Math.hypot(se(p.original), se(p.retrain));
  const separation = p.original - p.retrain;
  return { name: p.name, separation, noise, carriesSignal: separation > noise, basis: `3 standard errors of the difference (${p.kind === 'rate' ? `binomial over ${p.n}` : `Hanley-McNeil over ${p.n} x ${p.nNeg}`})` };
}

/**
 * Several seeds: signal iff the mean of (original − retrain) over seeds exceeds twice its standard deviation across
 * seeds (sample SD). Needs at least two seeds.
 */
export function signalOverSeeds(name: string, originals: number[], retrains: number[]): SignalVerdict {
  if (originals.length !== retrains.length) throw new RangeError(`${name}: ${originals.length} originals, ${retrains.length} retrains`);
  if (originals.length < 2) throw new RangeError(`${name}: a seed spread needs at least two seeds`);
  const d = originals.map((o, i) => o - retrains[i]!);
  const { mean, sd } = meanSd(d);
  return { name, separation: mean, noise: 2 * sd, carriesSignal: mean > 2 * sd, basis: `2 standard deviations of the difference over ${d.length} seeds` };
}

/** Mean and sample standard deviation (0 for a single value). */
export function meanSd(v: number[]): { mean: number; sd: number } {
  if (v.length === 0) throw new RangeError('no values');
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  const sd = v.length > 1 ? Math.sqrt(v.reduce((a, b) => a + (b - mean) ** 2, 0) / (v.length - 1)) : 0;
  return { mean, sd };
}
