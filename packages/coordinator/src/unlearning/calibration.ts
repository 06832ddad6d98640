import type { WeightLayout } from '@fedunlearn/protocol';

/**
 * The arithmetic of FedEraser (Liu et al. 2021) and of server-side replay (FedAccum), over flat float32 buffers laid
 * out by a WeightLayout. Pure functions: no I/O, no state. Sums of squares are accumulated in float64 because a layer
 * can hold ~100k values and float32 accumulation loses several digits at that size.
 */

/** A remaining client's contribution to one FedEraser step. */
export interface CalibrationInput {
  /** Û_k: the client's fresh calibration update (locally trained model minus M~_j), laid out like the model. */
  fresh: Float32Array;
  /** ||U_k,l^{t_j}||: per-layer L2 norms of the client's stored update of round t_j, one per layer of the layout. */
  storedNorms: ArrayLike<number>;
  /** n_k: the client's example count, for FedAvg weighting. */
  numExamples: number;
}

/** A remaining client's contribution to one server-side replay step. */
export interface ReplayInput {
  /** U_k^{t}: the client's stored update of the replayed round. */
  stored: Float32Array;
  numExamples: number;
}

function checkLength(what: string, buf: ArrayLike<number>, expected: number): void {
  if (buf.length !== expected) throw new RangeError(`${what} has ${buf.length} values, expected ${expected}`);
}

/**
 * FedEraser step 2 for one client, per layer l: out_l = storedNorm_l * fresh_l / ||fresh_l||.
 * The length comes from the stored update and the direction from the fresh one.
 *
 * If ||fresh_l|| == 0 the calibrated layer is zero: a client whose fresh training did not move a layer gives no
 * direction to scale, and inventing one (e.g. the stored update's) would re-inject the forgotten client's influence.
 *
 * Writes into `out`, which may alias `fresh` (each layer's norm is read before that layer is written).
 */
export function calibrateUpdate(
  layout: WeightLayout,
  fresh: Float32Array,
  storedNorms: ArrayLike<number>,
  out: Float32Array,
): void {
  checkLength('fresh update', fresh, layout.totalSize);
  checkLength('output buffer', out, layout.totalSize);
  checkLength('stored norms', storedNorms, layout.specs.length);
  for (let l = 0; l < layout.specs.length; l++) {
    const target = storedNorms[l]!;
    if (!(target >= 0) || !Number.isFinite(target)) {
      throw new RangeError(`stored norm of layer ${l} is ${target}; a norm must be finite and non-negative`);
    }
    const off = layout.offsets[l]!;
    const end = off + layout.sizes[l]!;
    let sq = 0;
    for (let i = off; i < end; i++) {
      const v = fresh[i]!;
      sq += v * v;
    }
    const norm = Math.sqrt(sq);
    const scale = norm > 0 ? target / norm : 0;
    for (let i = off; i < end; i++) out[i] = fresh[i]! * scale;
  }
}

/** Weighted sum: acc += weight * update (float32 buffer, accumulate in place). */
export function addScaled(acc: Float32Array, update: Float32Array, weight: number): void {
  checkLength('update', update, acc.length);
  if (!Number.isFinite(weight)) throw new RangeError(`weight is ${weight}`);
  for (let i = 0; i < acc.length; i++) acc[i] = acc[i]! + weight * update[i]!;
}

/**
 * Example-count weights renormalised over the given clients: w_k = n_k / sum n. The caller passes only the clients
 * that count (the forgotten client already removed), so the weights of the remaining ones sum to 1.
 * Throws on an empty list, on a negative or non-finite count, and on a zero total.
 */
export function fedAvgWeights(numExamples: number[]): number[] {
  if (numExamples.length === 0) throw new RangeError('no clients to weight');
  let total = 0;
  for (const n of numExamples) {
    if (!(n >= 0) || !Number.isFinite(n)) throw new RangeError(`example count ${n} is not a finite non-negative number`);
    total += n;
  }
  if (total === 0) throw new RangeError('clients hold zero examples in total');
  return numExamples.map((n) => n / total);
}

/**
 * One FedEraser aggregation step: M~_{j+1} = M~_j + sum_k w_k calibrate(fresh_k, storedNorms_k), with w_k the
 * example-count weights over the given (remaining) clients. Each client's update is calibrated on its own before the
 * weighted sum; calibrating the average instead is a known error of public reimplementations.
 * Returns a new buffer; `model` and the clients' buffers are not modified. Throws if `clients` is empty: a round with no
 * remaining participant has no step to take, and the caller decides whether to skip it.
 */
export function federaserStep(layout: WeightLayout, model: Float32Array, clients: readonly CalibrationInput[]): Float32Array {
  checkLength('model', model, layout.totalSize);
  const weights = fedAvgWeights(clients.map((c) => c.numExamples));
  // The aggregate update is summed apart from the model so that small per-client terms are not rounded against the
  // (larger) weights one by one.
  const aggregate = new Float32Array(layout.totalSize);
  const scratch = new Float32Array(layout.totalSize);
  clients.forEach((c, k) => {
    calibrateUpdate(layout, c.fresh, c.storedNorms, scratch);
    addScaled(aggregate, scratch, weights[k]!);
  });
  const next = Float32Array.from(model);
  addScaled(next, aggregate, 1);
  return next;
}

/**
 * FedAccum / server-side replay step: model + sum_k w_k stored_k, with the weights renormalised over the given
 * (remaining) clients. No client computation; approximate, because the stored updates of rounds after the first were
 * computed from models that had already seen the forgotten client.
 * Returns a new buffer. Throws if `clients` is empty.
 */
export function replayStep(model: Float32Array, clients: readonly ReplayInput[]): Float32Array {
  const weights = fedAvgWeights(clients.map((c) => c.numExamples));
  const aggregate = new Float32Array(model.length);
  clients.forEach((c, k) => addScaled(aggregate, c.stored, weights[k]!));
  const next = Float32Array.from(model);
  addScaled(next, aggregate, 1);
  return next;
}
