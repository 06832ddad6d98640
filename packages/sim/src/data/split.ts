import { makeRng, permutation, shuffleInPlace } from './rng.js';
import { subset, type LocalDataset } from './types.js';

export interface StratifiedSplitOptions {
  seed: number;
  /** Share of each class that goes to the test side, in [0, 1). */
  testFraction: number;
  /** Take at most this many examples of each class (a seeded random choice) before splitting. */
  limitPerClass?: number;
}

/**
 * Seeded, stratified train/test split of example indices: every class is shuffled on its own stream and cut at
 * round(n_c * testFraction), so both sides keep the class proportions of the source. Each side comes back shuffled
 * (so the train set is not sorted by class).
 */
export function stratifiedSplitIndices(
  labels: ArrayLike<number>,
  numClasses: number,
  opts: StratifiedSplitOptions,
): { train: Int32Array; test: Int32Array } {
  const { seed, testFraction, limitPerClass } = opts;
  if (!(testFraction >= 0 && testFraction < 1)) throw new RangeError(`testFraction ${testFraction} must be in [0, 1)`);
  if (limitPerClass !== undefined && !(Number.isInteger(limitPerClass) && limitPerClass > 0)) {
    throw new RangeError(`limitPerClass ${limitPerClass} must be a positive integer`);
  }
  const byClass: number[][] = Array.from({ length: numClasses }, () => []);
  for (let i = 0; i < labels.length; i++) {
    const c = labels[i]!;
    const bucket = byClass[c];
    if (!bucket) throw new RangeError(`label ${c} at ${i} outside [0, ${numClasses})`);
    bucket.push(i);
  }
  const train: number[] = [];
  const test: number[] = [];
  byClass.forEach((members, c) => {
    shuffleInPlace(members, makeRng(seed, 'stratified', c));
    const kept = limitPerClass === undefined ? members : members.slice(0, limitPerClass);
    const nTest = Math.round(kept.length * testFraction);
    for (let i = 0; i < kept.length; i++) (i < nTest ? test : train).push(kept[i]!);
  });
  const order = (idx: number[], side: string): Int32Array => {
    const p = permutation(idx.length, makeRng(seed, 'stratified-order', side));
    return Int32Array.from(p, (k) => idx[k]!);
  };
  return { train: order(train, 'train'), test: order(test, 'test') };
}

/** {@link stratifiedSplitIndices} applied to a dataset: two new datasets, copies of the chosen examples. */
export function stratifiedSplit(ds: LocalDataset, opts: StratifiedSplitOptions): { train: LocalDataset; test: LocalDataset } {
  const { train, test } = stratifiedSplitIndices(ds.y.subarray(0, ds.count), ds.numClasses, opts);
  return { train: subset(ds, train), test: subset(ds, test) };
}
