import type { WeightLayout } from '@fedunlearn/protocol';

/**
 * FedEraser's calibration (Liu et al., IWQoS 2021, Sec. 3.2 step 2), over flat float32 buffers laid out by a
 * WeightLayout. A pure function: no I/O, no state. Sums of squares are accumulated in float64 because a layer can hold
 * ~100k values and float32 accumulation loses several digits at that size.
 *
 * The rest of a FedEraser step is not here on purpose: the weighted mean over the calibrated updates is the injected
 * AggregationStrategy's (rounds/federated-step.ts), the same code a training round uses, so that the arithmetic the
 * product runs is the arithmetic the tests check (test/src/unlearning-arithmetic.e2e.test.ts).
 */

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
