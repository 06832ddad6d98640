import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { getFloat16 } from '@petamoriken/float16';
import { ErrorCode, ProtocolError } from './errors.js';
import { decodeTensorInto, DType, encodeTensor, type WireTensor } from './tensor-codec.js';
import { sizeOf } from './weights.js';

// Property tests over the tensor decoder: whatever tensor a peer sends against whatever shape is expected, it decodes
// to finite values of exactly that shape or is refused with the code of the first rule it breaks.

const fuzzSeed = process.env.FEDUNLEARN_FUZZ_SEED;
const budget = (numRuns: number): fc.Parameters<unknown> => ({ numRuns, ...(fuzzSeed ? { seed: Number(fuzzSeed) } : {}) });

const WIDTH: Record<number, number> = { [DType.FLOAT32]: 4, [DType.FLOAT16]: 2, [DType.INT8]: 1 };
const shapeArb = fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 });

/** The decoder's rules as a specification: the first one a tensor breaks names the error; null means it is valid. */
function expectedRefusal(t: WireTensor, expected: number[]): ErrorCode | null {
  const shape = t.shape ?? [];
  if (shape.length !== expected.length || shape.some((d, i) => d !== expected[i])) return ErrorCode.SHAPE_MISMATCH;
  const width = WIDTH[t.dtype ?? 0];
  if (width === undefined) return ErrorCode.DTYPE_MISMATCH;
  const n = sizeOf(expected);
  const data = t.data ?? new Uint8Array(0);
  if (data.byteLength !== n * width) return ErrorCode.SHAPE_MISMATCH;
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const scale = t.scale ?? 0;
  if (t.dtype === DType.INT8 && !(Number.isFinite(scale) && scale > 0)) return ErrorCode.INVALID_ARGUMENT;
  for (let i = 0; i < n; i++) {
    const v = t.dtype === DType.FLOAT32 ? dv.getFloat32(i * 4, true) : t.dtype === DType.FLOAT16 ? getFloat16(dv, i * 2, true) : Math.fround(dv.getInt8(i) * scale);
    if (!Number.isFinite(v)) return ErrorCode.NON_FINITE_VALUES;
  }
  return null;
}

/** A tensor that is right or nearly right for `expected`: each field may be off the way a broken or hostile peer gets it wrong. */
const tensorFor = (expected: number[]): fc.Arbitrary<WireTensor> =>
  fc
    .record({
      dtype: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(DType.FLOAT32, DType.FLOAT16, DType.INT8) }, { weight: 1, arbitrary: fc.integer({ min: -3, max: 9 }) }),
      shape: fc.oneof({ weight: 4, arbitrary: fc.constant(expected) }, { weight: 1, arbitrary: shapeArb }),
      lengthDelta: fc.oneof({ weight: 4, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -8, max: 8 }) }),
      scale: fc.oneof(fc.float({ min: Math.fround(1e-6), max: 10, noNaN: true }), fc.float()),
      seedBytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
      // Bit patterns that are NaN or ±Inf in float32 / float16, planted at a random position.
      poison: fc.option(fc.record({ at: fc.nat(), f32: fc.constantFrom(0x7fc00000, 0x7f800000, 0xff800000, 0x7f800001), f16: fc.constantFrom(0x7e00, 0x7c00, 0xfc00, 0x7c01) })),
    })
    .map(({ dtype, shape, lengthDelta, scale, seedBytes, poison }) => {
      const width = WIDTH[dtype] ?? 4;
      const len = Math.max(0, sizeOf(expected) * width + lengthDelta);
      // Random bytes: as float32/float16 they include NaN and Inf patterns of their own, now and then.
      const data = Uint8Array.from({ length: len }, (_, i) => seedBytes[i % seedBytes.length]! ^ (i * 37));
      const dv = new DataView(data.buffer);
      if (poison && len >= width) {
        const at = (poison.at % Math.floor(len / width)) * width;
        if (dtype === DType.FLOAT32) dv.setUint32(at, poison.f32, true);
        if (dtype === DType.FLOAT16) dv.setUint16(at, poison.f16, true);
      }
      return { name: 'fuzz/kernel', dtype, shape, data, scale } satisfies WireTensor;
    });

test('an arbitrary tensor decodes to finite values of the expected shape or is refused with the rule it breaks', () => {
  const seen = new Set<string>();
  fc.assert(
    fc.property(
      shapeArb.chain((expected) => fc.tuple(fc.constant(expected), tensorFor(expected))),
      ([expected, t]) => {
        const target = new Float32Array(sizeOf(expected));
        const want = expectedRefusal(t, expected);
        let got: ErrorCode | null = null;
        try {
          decodeTensorInto(t, expected, target);
        } catch (e) {
          assert.ok(e instanceof ProtocolError, `decode threw ${String(e)} instead of a ProtocolError`);
          assert.ok(e.message.includes('fuzz/kernel'), 'the error names the tensor');
          got = e.code;
        }
        assert.equal(got === null ? 'accepted' : ErrorCode[got], want === null ? 'accepted' : ErrorCode[want]);
        seen.add(got === null ? 'accepted' : ErrorCode[got]!);
        if (got === null) for (const v of target) assert.ok(Number.isFinite(v));
      },
    ),
    budget(5000),
  );
  assert.deepEqual([...seen].sort(), ['DTYPE_MISMATCH', 'INVALID_ARGUMENT', 'NON_FINITE_VALUES', 'SHAPE_MISMATCH', 'accepted']);
});

const finite32 = fc.float({ noNaN: true, noDefaultInfinity: true });
const valuesFor = (arb: fc.Arbitrary<number>) =>
  shapeArb.chain((shape) => fc.tuple(fc.constant(shape), fc.array(arb, { minLength: sizeOf(shape), maxLength: sizeOf(shape) })));

function roundTrip(shape: number[], values: number[], dtype: DType): { sent: Float32Array; got: Float32Array; wire: WireTensor } {
  const sent = Float32Array.from(values);
  const wire = encodeTensor('rt', shape, sent, dtype);
  // Through a copy: what arrives is the bytes, never the sender's memory.
  const copy = { ...wire, data: Uint8Array.from(wire.data!) };
  const got = new Float32Array(sent.length);
  decodeTensorInto(copy, shape, got);
  return { sent, got, wire };
}

test('float32 tensors round-trip bit for bit', () => {
  fc.assert(
    fc.property(valuesFor(finite32), ([shape, values]) => {
      const { sent, got } = roundTrip(shape, values, DType.FLOAT32);
      assert.deepEqual(got, sent);
    }),
    budget(2000),
  );
});

test('float16 tensors round-trip within half a float16 step', () => {
  // Beyond float16's range a value becomes Inf, which the receiver refuses: senders must not quantise those.
  const inRange = fc.float({ min: -65000, max: 65000, noNaN: true });
  fc.assert(
    fc.property(valuesFor(inRange), ([shape, values]) => {
      const { sent, got } = roundTrip(shape, values, DType.FLOAT16);
      for (let i = 0; i < sent.length; i++) {
        const x = sent[i]!;
        // 11 significant bits; below 2^-14 the subnormal step 2^-24 applies.
        const tol = Math.max(Math.abs(x) * 2 ** -11, 2 ** -25);
        assert.ok(Math.abs(got[i]! - x) <= tol, `value ${x} came back as ${got[i]} (tolerance ${tol})`);
      }
    }),
    budget(2000),
  );
});

test('int8 tensors round-trip within half a quantisation step', () => {
  fc.assert(
    fc.property(valuesFor(finite32), ([shape, values]) => {
      const { sent, got, wire } = roundTrip(shape, values, DType.INT8);
      const scale = wire.scale!;
      assert.ok(Number.isFinite(scale) && scale > 0);
      for (let i = 0; i < sent.length; i++) {
        const tol = scale * 0.5 * (1 + 1e-6) + Math.abs(sent[i]!) * 1e-6;
        assert.ok(Math.abs(got[i]! - sent[i]!) <= tol, `value ${sent[i]} came back as ${got[i]} (scale ${scale})`);
      }
    }),
    budget(2000),
  );
});

test('encoding refuses a value count that does not fit the shape, and int8 refuses non-finite values', () => {
  fc.assert(
    fc.property(shapeArb, fc.integer({ min: 1, max: 4 }), (shape, extra) => {
      assert.throws(() => encodeTensor('x', shape, new Float32Array(sizeOf(shape) + extra)), (e: unknown) => e instanceof ProtocolError && e.code === ErrorCode.SHAPE_MISMATCH);
    }),
    budget(300),
  );
  fc.assert(
    fc.property(fc.array(finite32, { minLength: 1, maxLength: 20 }), fc.nat(), fc.constantFrom(NaN, Infinity, -Infinity), (values, at, bad) => {
      const v = Float32Array.from(values);
      v[at % v.length] = bad;
      assert.throws(() => encodeTensor('x', [v.length], v, DType.INT8), (e: unknown) => e instanceof ProtocolError && e.code === ErrorCode.NON_FINITE_VALUES);
    }),
    budget(300),
  );
});

/** The MNIST MLP's first layer, 784 x 128 = 100,352 values: larger than every internal step of the decoder's check. */
const FULL_LAYER = [784, 128];
const FULL_SIZE = 784 * 128;
/** First index past each internal step (4,096-value check blocks, 16,384-value copy steps), and the layer's last. */
const STEP_BOUNDARIES = [4096, 16384, 32768, 49152, 65536, 81920, 98304, FULL_SIZE - 1];

test('a full-size layer with NaN or ±Inf anywhere, including just past each internal step, is refused at that index', () => {
  // One clean layer, poisoned one value at a time (restored after): the property is about where the poison sits.
  const clean = new Float32Array(FULL_SIZE);
  for (let i = 0; i < FULL_SIZE; i++) clean[i] = Math.sin(i) * 0.1;
  const target = new Float32Array(FULL_SIZE);
  fc.assert(
    fc.property(
      fc.oneof(fc.constantFrom(...STEP_BOUNDARIES), fc.integer({ min: 0, max: FULL_SIZE - 1 })),
      fc.constantFrom(NaN, Infinity, -Infinity),
      fc.constantFrom(DType.FLOAT32, DType.FLOAT16),
      (at, bad, dtype) => {
        const v = clean.slice();
        v[at] = bad;
        const t = encodeTensor('fuzz/kernel', FULL_LAYER, v, dtype);
        const wire = { ...t, data: Uint8Array.from(t.data!) };
        assert.throws(
          () => decodeTensorInto(wire, FULL_LAYER, target),
          (e: unknown) => e instanceof ProtocolError && e.code === ErrorCode.NON_FINITE_VALUES && e.message.endsWith(`index ${at}`),
        );
      },
    ),
    // Each run decodes 100,352 values: a few dozen runs cover every boundary and some random positions.
    budget(40),
  );
});
