/**
 * float32 <-> IEEE 754 half precision over whole arrays, with integer arithmetic on the float32 bit patterns: the
 * per-element DataView helpers cost ~1 us a value, which made fp16 history writes run at ~1 MB/s.
 * Rounding is to nearest, ties to even; overflow gives +-Infinity, NaN stays NaN (quiet), tiny values go subnormal
 * then to +-0, exactly as a hardware conversion does.
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The half-precision bit pattern nearest to `bits`, a float32 bit pattern. */
export function float32BitsToHalf(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const e = (bits >>> 23) & 0xff;
  let m = bits & 0x7fffff;
  if (e === 0xff) return sign | 0x7c00 | (m !== 0 ? 0x200 : 0);
  const e16 = e - 112; // rebias 127 -> 15
  if (e16 >= 0x1f) return sign | 0x7c00;
  if (e16 <= 0) {
    if (e16 < -10) return sign;
    m |= 0x800000;
    const shift = 14 - e16;
    let half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1) !== 0)) half++;
    return sign | half;
  }
  let h = sign | (e16 << 10) | (m >>> 13);
  const rem = m & 0x1fff;
  // A carry out of the mantissa correctly bumps the exponent (and the largest values round up to Infinity).
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++;
  return h;
}

export function toHalf(x: number): number {
  f32[0] = x;
  return float32BitsToHalf(u32[0]!);
}

let table: Float32Array | null = null;

/** Every half-precision value as a float32 (256 kB, built on first use): decoding is one lookup a value. */
function halfTable(): Float32Array {
  if (table) return table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) t[h] = sign * m * 2 ** -24;
    else if (e === 0x1f) t[h] = m === 0 ? sign * Infinity : NaN;
    else t[h] = sign * (1 + m / 1024) * 2 ** (e - 15);
  }
  return (table = t);
}

export function fromHalf(h: number): number {
  return halfTable()[h & 0xffff]!;
}

/** Writes `values` as little-endian halves into `out` (2 bytes a value, any byte offset). */
export function encodeHalves(values: Float32Array, out: Uint8Array): void {
  if (out.byteLength !== values.length * 2) throw new RangeError(`${out.byteLength} bytes for ${values.length} halves`);
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  for (let i = 0, j = 0; i < bits.length; i++, j += 2) {
    const h = float32BitsToHalf(bits[i]!);
    out[j] = h & 0xff;
    out[j + 1] = h >>> 8;
  }
}

/** Reads little-endian halves from `data` (any byte offset) into `target`. */
export function decodeHalves(data: Uint8Array, target: Float32Array): void {
  if (data.byteLength !== target.length * 2) throw new RangeError(`${data.byteLength} bytes for ${target.length} halves`);
  const t = halfTable();
  for (let i = 0, j = 0; i < target.length; i++, j += 2) target[i] = t[data[j]! | (data[j + 1]! << 8)]!;
}
