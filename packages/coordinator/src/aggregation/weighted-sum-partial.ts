import type { WeightLayout } from '@fedunlearn/protocol';
import type { PartialAggregate } from './strategy.js';

/**
 * The partial aggregate of the sum-based strategies (FedAvg, clipped FedAvg): the float64 running sum Σ w_k·Δ_k, the
 * update count and Σ n_k, and the strategy's parameters (so that replicas configured differently cannot be merged).
 *
 * Bytes (little-endian): a 32-byte header — magic `FUPA`, u16 format version (1), u16 name length, u32 count, u32
 * parameter count, u32 sum length (0 when count is 0), u32 zero, f64 total examples — then the name (UTF-8) padded to
 * 8 bytes, the parameters (f64 each), and the sum (f64 each). A partial of a model of P parameters is 8·P bytes plus
 * its header: twice a float32 model, since the sum must stay exact (see fedavg.ts) until the leader applies it.
 */
export class WeightedSumPartial implements PartialAggregate {
  constructor(
    readonly strategy: string,
    readonly params: readonly number[],
    readonly count: number,
    readonly totalExamples: number,
    /** Null when count is 0. */
    readonly sum: Float64Array | null,
  ) {}

  encode(): Uint8Array {
    const name = new TextEncoder().encode(this.strategy);
    const size = this.sum?.length ?? 0;
    const nameEnd = HEADER + pad8(name.length);
    const sumAt = nameEnd + 8 * this.params.length;
    const out = new Uint8Array(sumAt + 8 * size);
    const view = new DataView(out.buffer);
    out.set(MAGIC, 0);
    view.setUint16(4, VERSION, true);
    view.setUint16(6, name.length, true);
    view.setUint32(8, this.count, true);
    view.setUint32(12, this.params.length, true);
    view.setUint32(16, size, true);
    view.setFloat64(24, this.totalExamples, true);
    out.set(name, HEADER);
    this.params.forEach((p, i) => view.setFloat64(nameEnd + 8 * i, p, true));
    if (this.sum) {
      // sumAt is a multiple of 8, so on a little-endian machine the sum is one copy.
      if (LITTLE_ENDIAN) new Float64Array(out.buffer, sumAt, size).set(this.sum);
      else for (let i = 0; i < size; i++) view.setFloat64(sumAt + 8 * i, this.sum[i]!, true);
    }
    return out;
  }

  /**
   * Reads `bytes` as a partial of `strategy` with `params` for `layout`. Throws RangeError saying what does not match
   * (another strategy or parameters, another model size, a damaged or truncated buffer, a non-finite sum).
   */
  static decode(bytes: Uint8Array, strategy: string, params: readonly number[], layout: WeightLayout): WeightedSumPartial {
    if (bytes.byteLength < HEADER || !MAGIC.every((b, i) => bytes[i] === b)) throw new RangeError('not a partial aggregate (bad magic or too short)');
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const version = view.getUint16(4, true);
    if (version !== VERSION) throw new RangeError(`partial aggregate format ${version}, this build reads ${VERSION}`);
    const nameLength = view.getUint16(6, true);
    const count = view.getUint32(8, true);
    const paramCount = view.getUint32(12, true);
    const size = view.getUint32(16, true);
    const totalExamples = view.getFloat64(24, true);
    const nameEnd = HEADER + pad8(nameLength);
    const sumAt = nameEnd + 8 * paramCount;
    if (bytes.byteLength !== sumAt + 8 * size) throw new RangeError(`partial aggregate of ${bytes.byteLength} bytes, its header describes ${sumAt + 8 * size}`);
    const name = new TextDecoder().decode(bytes.subarray(HEADER, HEADER + nameLength));
    if (name !== strategy) throw new RangeError(`a partial aggregate of ${name} cannot merge into ${strategy}`);
    const got = Array.from({ length: paramCount }, (_, i) => view.getFloat64(nameEnd + 8 * i, true));
    if (got.length !== params.length || got.some((p, i) => !Object.is(p, params[i]))) {
      throw new RangeError(`a partial aggregate of ${strategy} with parameters [${got.join(', ')}] cannot merge into one with [${params.join(', ')}]`);
    }
    if (!(Number.isFinite(totalExamples) && totalExamples >= 0) || (count === 0) !== (totalExamples === 0)) {
      throw new RangeError(`partial aggregate of ${count} updates and ${totalExamples} examples`);
    }
    if (count === 0 ? size !== 0 : size !== layout.totalSize) {
      throw new RangeError(`partial aggregate of ${size} values, the model has ${layout.totalSize}`);
    }
    if (count === 0) return new WeightedSumPartial(strategy, params, 0, 0, null);
    const sum = new Float64Array(size);
    const at = bytes.byteOffset + sumAt;
    if (LITTLE_ENDIAN && at % 8 === 0) sum.set(new Float64Array(bytes.buffer, at, size));
    else for (let i = 0; i < size; i++) sum[i] = view.getFloat64(sumAt + 8 * i, true);
    for (let i = 0; i < size; i++) if (!Number.isFinite(sum[i]!)) throw new RangeError(`partial aggregate value ${i} is ${sum[i]}`);
    return new WeightedSumPartial(strategy, params, count, totalExamples, sum);
  }
}

/**
 * Adds a partial's sum into `sum`, an aggregation's float64 running sum of `folded` updates so far (float64 addition
 * of sums that are exact, see fedavg.ts, so that merging in any grouping gives the bits one aggregator would). The
 * caller adds the partial's count and totalExamples to its own. Throws RangeError on a partial of another strategy,
 * parameters or size.
 */
export function mergeSum(sum: Float64Array, folded: number, partial: PartialAggregate, strategy: string, params: readonly number[]): void {
  if (!(partial instanceof WeightedSumPartial)) throw new RangeError(`${strategy} merges partials it decoded (decodePartial), not ${partial.strategy}'s`);
  if (partial.strategy !== strategy) throw new RangeError(`a partial aggregate of ${partial.strategy} cannot merge into ${strategy}`);
  if (partial.params.length !== params.length || partial.params.some((p, i) => !Object.is(p, params[i]))) {
    throw new RangeError(`a partial aggregate of ${strategy} with parameters [${partial.params.join(', ')}] cannot merge into one with [${params.join(', ')}]`);
  }
  if (partial.count === 0) return;
  const src = partial.sum!;
  if (src.length !== sum.length) throw new RangeError(`partial aggregate of ${src.length} values, the model has ${sum.length}`);
  // The first fold overwrites (a recycled sum may hold anything, as in add).
  if (folded === 0) sum.set(src);
  else for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! + src[i]!;
}

const MAGIC = [0x46, 0x55, 0x50, 0x41]; // "FUPA"
const VERSION = 1;
const HEADER = 32;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function pad8(n: number): number {
  return (n + 7) & ~7;
}
