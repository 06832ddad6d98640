import { fedunlearn } from './gen/proto.js';
import { ErrorCode, ProtocolError } from './errors.js';
import { decodeHalves, encodeHalves } from './float16.js';
import { layerView, sizeOf, type FlatWeights, type WeightLayout } from './weights.js';

export const DType = fedunlearn.v1.DType;
export type DType = fedunlearn.v1.DType;
export type WireTensor = fedunlearn.v1.ITensor;

const littleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const MIN_NORMAL_FLOAT32 = 2 ** -126;

export function bytesPerElement(dtype: DType): number {
  switch (dtype) {
    case DType.FLOAT32:
      return 4;
    case DType.FLOAT16:
      return 2;
    case DType.INT8:
      return 1;
    default:
      throw new ProtocolError(ErrorCode.DTYPE_MISMATCH, `unsupported dtype ${dtype}`);
  }
}

/** Encodes float32 values as a wire tensor. FLOAT32 shares the caller's memory until the message is encoded. */
export function encodeTensor(name: string, shape: readonly number[], values: Float32Array, dtype: DType = DType.FLOAT32): WireTensor {
  if (values.length !== sizeOf(shape)) {
    throw new ProtocolError(ErrorCode.SHAPE_MISMATCH, `tensor ${name}: ${values.length} values for shape [${shape.join(',')}]`);
  }
  const base = { name, dtype, shape: [...shape] };
  switch (dtype) {
    case DType.FLOAT32: {
      if (littleEndian) return { ...base, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
      const out = new Uint8Array(values.length * 4);
      const dv = new DataView(out.buffer);
      for (let i = 0; i < values.length; i++) dv.setFloat32(i * 4, values[i]!, true);
      return { ...base, data: out };
    }
    case DType.FLOAT16: {
      const out = new Uint8Array(values.length * 2);
      encodeHalves(values, out);
      return { ...base, data: out };
    }
    case DType.INT8: {
      let maxAbs = 0;
      for (let i = 0; i < values.length; i++) maxAbs = Math.max(maxAbs, Math.abs(values[i]!));
      // A NaN would otherwise fall through to scale 1 and quantise every value to a whole number, silently.
      if (!Number.isFinite(maxAbs)) throw new ProtocolError(ErrorCode.NON_FINITE_VALUES, `tensor ${name}: non-finite values cannot be quantised`);
      // The scale travels as a float32: quantise with exactly the value the receiver will multiply by, and keep it
      // at least the smallest normal float32 so that a tensor of tiny values never sends a scale that rounds to 0
      // (which the receiver must refuse) or a subnormal so coarse that maxAbs / scale would overflow int8.
      let scale = maxAbs > 0 ? Math.max(Math.fround(maxAbs / 127), MIN_NORMAL_FLOAT32) : 1;
      // Near the float32 maximum, maxAbs / 127 may round up so far that 127 * scale overflows to Infinity on the
      // receiver, which would refuse a tensor of finite values: step the scale down until the largest level fits.
      while (!Number.isFinite(Math.fround(127 * scale))) scale = previousFloat32(scale);
      const q = new Int8Array(values.length);
      for (let i = 0; i < values.length; i++) q[i] = Math.max(-127, Math.min(127, Math.round(values[i]! / scale)));
      return { ...base, scale, data: new Uint8Array(q.buffer) };
    }
    default:
      throw new ProtocolError(ErrorCode.DTYPE_MISMATCH, `tensor ${name}: unsupported dtype ${dtype}`);
  }
}

/**
 * Decodes a wire tensor into `target` (float32, exactly the tensor's size), checking shape, byte length and
 * finiteness. Throws a ProtocolError naming the tensor; `target` may be partly written on error.
 */
export function decodeTensorInto(t: WireTensor, expectedShape: readonly number[], target: Float32Array): void {
  const name = t.name ?? '';
  const shape = t.shape ?? [];
  if (shape.length !== expectedShape.length || shape.some((d, i) => d !== expectedShape[i])) {
    throw new ProtocolError(ErrorCode.SHAPE_MISMATCH, `tensor ${name}: shape [${shape.join(',')}], expected [${expectedShape.join(',')}]`);
  }
  const n = sizeOf(expectedShape);
  if (target.length !== n) throw new RangeError(`target holds ${target.length} values, tensor ${name} has ${n}`);
  const dtype = (t.dtype ?? DType.DTYPE_UNSPECIFIED) as DType;
  if (!(dtype === DType.FLOAT32 || dtype === DType.FLOAT16 || dtype === DType.INT8)) {
    throw new ProtocolError(ErrorCode.DTYPE_MISMATCH, `tensor ${name}: unsupported dtype ${dtype}`);
  }
  const width = bytesPerElement(dtype);
  const data = t.data ?? new Uint8Array(0);
  if (data.byteLength !== n * width) {
    throw new ProtocolError(ErrorCode.SHAPE_MISMATCH, `tensor ${name}: ${data.byteLength} bytes, expected ${n * width} for ${DType[dtype]}`);
  }
  switch (dtype) {
    case DType.FLOAT32:
      if (littleEndian) {
        // One copy into aligned memory (the wire bytes may sit at any offset of the message buffer), validated a step
        // at a time while the step is still in cache: a separate pass would read the whole tensor from memory again.
        const bytes = new Uint8Array(target.buffer, target.byteOffset, target.byteLength);
        for (let start = 0; start < n; start += COPY_STEP) {
          const end = Math.min(n, start + COPY_STEP);
          bytes.set(data.subarray(start * 4, end * 4), start * 4);
          const bad = firstNonFiniteIn(target, start, end);
          if (bad >= 0) throw new ProtocolError(ErrorCode.NON_FINITE_VALUES, `tensor ${name}: non-finite value at index ${bad}`);
        }
        return;
      } else {
        const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
        for (let i = 0; i < n; i++) target[i] = dv.getFloat32(i * 4, true);
      }
      break;
    case DType.FLOAT16:
      decodeHalves(data, target);
      break;
    case DType.INT8: {
      const scale = t.scale ?? 0;
      if (!Number.isFinite(scale) || scale <= 0) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, `tensor ${name}: int8 scale ${scale}`);
      const q = new Int8Array(data.buffer, data.byteOffset, data.byteLength);
      for (let i = 0; i < n; i++) target[i] = q[i]! * scale;
      break;
    }
  }
  const bad = firstNonFinite(target);
  if (bad >= 0) throw new ProtocolError(ErrorCode.NON_FINITE_VALUES, `tensor ${name}: non-finite value at index ${bad}`);
}

/** Values copied and validated per step by decodeTensorInto: 64 KB, which stays in cache between the two. */
const COPY_STEP = 16384;
/** Values summed before branching in firstNonFiniteIn. */
const CHECK_BLOCK = 4096;

/**
 * Index of the first NaN or +-Infinity in `values`, or -1. Validation is a full pass over every update the
 * coordinator receives, so it is the fastest form the JIT gives here (see firstNonFiniteIn).
 */
export function firstNonFinite(values: Float32Array): number {
  return firstNonFiniteIn(values, 0, values.length);
}

/**
 * firstNonFinite over values[start, end). x * 0 is 0 for every finite x and NaN for NaN and +-Infinity, so a block's
 * sum of them is 0 exactly when the block is finite; four independent sums keep the additions from waiting on each
 * other. About 1.4 times as fast as OR-ing the exponent bits of an Int32Array view, and twice Number.isFinite.
 */
function firstNonFiniteIn(values: Float32Array, start: number, end: number): number {
  for (let block = start; block < end; block += CHECK_BLOCK) {
    const stop = Math.min(end, block + CHECK_BLOCK);
    let s0 = 0;
    let s1 = 0;
    let s2 = 0;
    let s3 = 0;
    let i = block;
    for (; i + 4 <= stop; i += 4) {
      s0 += values[i]! * 0;
      s1 += values[i + 1]! * 0;
      s2 += values[i + 2]! * 0;
      s3 += values[i + 3]! * 0;
    }
    for (; i < stop; i++) s0 += values[i]! * 0;
    if (s0 + s1 + s2 + s3 !== 0) {
      for (let j = block; j < stop; j++) if (!Number.isFinite(values[j]!)) return j;
    }
  }
  return -1;
}

/** The largest float32 below a positive finite float32. */
function previousFloat32(x: number): number {
  const f = new Float32Array([x]);
  const bits = new Uint32Array(f.buffer);
  bits[0] = bits[0]! - 1;
  return f[0]!;
}

/** Encodes every layer of a flat buffer (views, no copies for FLOAT32). */
export function encodeWeights(w: FlatWeights, dtype: DType = DType.FLOAT32): WireTensor[] {
  return w.layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(w.layout, w.values, i), dtype));
}

/**
 * Decodes a full set of wire tensors against a layout into `target` (allocated if absent). The tensors must name
 * exactly the layout's layers, in order.
 */
export function decodeWeights(tensors: readonly WireTensor[], layout: WeightLayout, target?: Float32Array): Float32Array {
  if (tensors.length !== layout.specs.length) {
    throw new ProtocolError(ErrorCode.SHAPE_MISMATCH, `${tensors.length} tensors, the model has ${layout.specs.length}`);
  }
  const out = target ?? new Float32Array(layout.totalSize);
  if (out.length !== layout.totalSize) throw new RangeError(`target holds ${out.length} values, layout ${layout.totalSize}`);
  for (let i = 0; i < tensors.length; i++) {
    const t = tensors[i]!;
    const spec = layout.specs[i]!;
    if ((t.name ?? '') !== spec.name) {
      throw new ProtocolError(ErrorCode.SHAPE_MISMATCH, `tensor ${i} is named ${t.name}, expected ${spec.name}`);
    }
    decodeTensorInto(t, spec.shape, layerView(layout, out, i));
  }
  return out;
}
