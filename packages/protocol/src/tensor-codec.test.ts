import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeEnvelope, encodeEnvelope } from './envelope.js';
import { ErrorCode, ProtocolError } from './errors.js';
import { Reassembler } from './chunking.js';
import { decodeTensorInto, decodeWeights, DType, encodeTensor, encodeWeights, firstNonFinite, type WireTensor } from './tensor-codec.js';
import { layoutOf, sizeOf, type FlatWeights, type WeightSpec } from './weights.js';
import seedrandom from 'seedrandom';

// fast-check is not installed in this workspace, so the property tests below draw their cases from a seeded generator:
// every run sees the same cases and a failure names the seed that produced it.

/** Seeded, so that every figure a test compares against is recomputed from the seed, never remembered. */
const rng = (seed: number): (() => number) => seedrandom(String(seed));

const specs: WeightSpec[] = [
  { name: 'dense_1/kernel', shape: [5, 3] },
  { name: 'dense_1/bias', shape: [3] },
  { name: 'conv/kernel', shape: [2, 2, 1, 2] },
  { name: 'dense_2/bias', shape: [1] },
];
const layout = layoutOf(specs);

function randomValues(r: () => number, n: number, magnitude = 1): Float32Array {
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = (r() * 2 - 1) * magnitude;
  return v;
}

function flat(values: Float32Array): FlatWeights {
  return { layout, values };
}

/** Sends tensors the way peers do: inside an Update envelope, encoded and decoded again by protobufjs. */
function overTheWire(tensors: WireTensor[]): WireTensor[] {
  const bytes = encodeEnvelope({ update: { taskId: 't', delta: tensors, numExamples: 1 } });
  const env = decodeEnvelope(bytes);
  return env.update!.delta!;
}

function bits(v: Float32Array): Uint32Array {
  return new Uint32Array(v.buffer, v.byteOffset, v.length);
}

function code(e: unknown): string {
  assert.ok(e instanceof ProtocolError, `expected a ProtocolError, got ${String(e)}`);
  return e.codeName;
}

function throwsCode(fn: () => unknown, expected: ErrorCode): void {
  assert.throws(fn, (e: unknown) => {
    assert.equal(code(e), ErrorCode[expected]);
    return true;
  });
}

/** Half precision keeps 11 significant bits in its normal range, and steps of 2^-24 below 2^-14 (subnormals). */
function fp16Bound(v: number): number {
  return Math.max(Math.abs(v) * 2 ** -11, 2 ** -25);
}

test('FLOAT32 round-trips bit-exactly, including -0, subnormals and the extremes of float32', () => {
  const values = randomValues(rng(1), layout.totalSize, 1e3);
  const specials = [-0, 1.4e-45, -1.4e-45, 1.1754942e-38, 3.4028235e38, -3.4028235e38, 1 / 3];
  specials.forEach((s, i) => (values[i] = s));
  const decoded = decodeWeights(overTheWire(encodeWeights(flat(values), DType.FLOAT32)), layout);
  assert.deepEqual(bits(decoded), bits(values));
});

test('FLOAT16 round-trips within half-precision rounding error', () => {
  const r = rng(2);
  const values = new Float32Array(layout.totalSize);
  // Magnitudes from the subnormal range of fp16 up to near its maximum (65504).
  for (let i = 0; i < values.length; i++) values[i] = (r() < 0.5 ? -1 : 1) * 2 ** (r() * 40 - 24);
  const wire = overTheWire(encodeWeights(flat(values), DType.FLOAT16));
  for (const t of wire) assert.equal(t.data!.byteLength, sizeOf(t.shape!) * 2, 'two bytes per element');
  const decoded = decodeWeights(wire, layout);
  for (let i = 0; i < values.length; i++) {
    const err = Math.abs(decoded[i]! - values[i]!);
    assert.ok(err <= fp16Bound(values[i]!), `value ${values[i]} decoded as ${decoded[i]}`);
  }
});

test('INT8 round-trips within half a quantisation step, per tensor', () => {
  const r = rng(3);
  const values = randomValues(r, layout.totalSize, 5);
  const wire = overTheWire(encodeWeights(flat(values), DType.INT8));
  const decoded = decodeWeights(wire, layout);
  for (let l = 0; l < specs.length; l++) {
    const off = layout.offsets[l]!;
    const n = layout.sizes[l]!;
    let maxAbs = 0;
    for (let i = off; i < off + n; i++) maxAbs = Math.max(maxAbs, Math.abs(values[i]!));
    const step = maxAbs / 127;
    // The scale travels as a float32; allow for its rounding and the float32 result, nothing more.
    assert.ok(Math.abs(wire[l]!.scale! - step) <= step * 2 ** -23, `scale of ${specs[l]!.name}`);
    assert.equal(wire[l]!.data!.byteLength, n, 'one byte per element');
    for (let i = off; i < off + n; i++) {
      const err = Math.abs(decoded[i]! - values[i]!);
      assert.ok(err <= step / 2 + (Math.abs(values[i]!) + step) * 2 ** -22, `value ${values[i]} decoded as ${decoded[i]} (step ${step})`);
    }
  }
});

test('INT8 of an all-zero tensor decodes to zeros', () => {
  const t = overTheWire([encodeTensor('z', [4], new Float32Array(4), DType.INT8)]);
  const out = new Float32Array(4).fill(7);
  decodeTensorInto(t[0]!, [4], out);
  assert.deepEqual([...out], [0, 0, 0, 0]);
});

test('INT8 of tiny (subnormal) values sends a usable scale and stays within half a step', () => {
  // maxAbs / 127 of these underflows float32, the scale's wire type; the receiver would refuse a scale of 0.
  for (const v of [1.4e-45, 1e-44, 1e-41, 1e-39, 1e-37]) {
    const values = new Float32Array([v, -v / 3, 0]);
    const [t] = overTheWire([encodeTensor('tiny', [3], values, DType.INT8)]);
    assert.ok(t!.scale! > 0, `scale for ${v}`);
    const out = new Float32Array(3);
    decodeTensorInto(t!, [3], out);
    for (let i = 0; i < 3; i++) assert.ok(Math.abs(out[i]! - values[i]!) <= t!.scale! / 2, `${values[i]} -> ${out[i]} (scale ${t!.scale})`);
  }
});

test('INT8 refuses to quantise NaN or Infinity instead of sending a corrupted tensor', () => {
  for (const bad of [NaN, Infinity, -Infinity]) {
    throwsCode(() => encodeTensor('q', [3], new Float32Array([0.5, bad, -0.25]), DType.INT8), ErrorCode.NON_FINITE_VALUES);
  }
});

test('property: random shapes and values round-trip in every dtype', () => {
  for (let seed = 100; seed < 400; seed++) {
    const r = rng(seed);
    const rank = Math.floor(r() * 5); // 0..4; rank 0 is a scalar
    const shape = Array.from({ length: rank }, () => Math.floor(r() * 6)); // a dimension may be 0
    const n = sizeOf(shape);
    const magnitude = 2 ** (r() * 30 - 15);
    const values = randomValues(r, n, magnitude);
    const dtype = [DType.FLOAT32, DType.FLOAT16, DType.INT8][seed % 3]!;
    const ctx = `seed ${seed}, shape [${shape}], ${DType[dtype]}`;
    const [t] = overTheWire([encodeTensor('x', shape, values, dtype)]);
    const out = new Float32Array(n);
    decodeTensorInto(t!, shape, out);
    let maxAbs = 0;
    for (const v of values) maxAbs = Math.max(maxAbs, Math.abs(v));
    for (let i = 0; i < n; i++) {
      const v = values[i]!;
      const err = Math.abs(out[i]! - v);
      if (dtype === DType.FLOAT32) assert.equal(out[i], v, ctx);
      else if (dtype === DType.FLOAT16) assert.ok(err <= fp16Bound(v), `${ctx}: ${v} -> ${out[i]}`);
      else assert.ok(err <= maxAbs / 254 + (Math.abs(v) + maxAbs / 127) * 2 ** -22, `${ctx}: ${v} -> ${out[i]}`);
    }
  }
});

test('encodeTensor refuses a value count that does not match the shape', () => {
  throwsCode(() => encodeTensor('w', [2, 3], new Float32Array(5)), ErrorCode.SHAPE_MISMATCH);
});

test('decoding refuses a tensor of another shape (same element count or not)', () => {
  const [t] = overTheWire([encodeTensor('w', [2, 3], randomValues(rng(4), 6))]);
  throwsCode(() => decodeTensorInto(t!, [3, 2], new Float32Array(6)), ErrorCode.SHAPE_MISMATCH);
  throwsCode(() => decodeTensorInto(t!, [2, 3, 1], new Float32Array(6)), ErrorCode.SHAPE_MISMATCH);
  throwsCode(() => decodeTensorInto(t!, [2, 4], new Float32Array(8)), ErrorCode.SHAPE_MISMATCH);
  // The message names the tensor and both shapes: what a client's developer needs to find the mismatched layer.
  assert.throws(() => decodeTensorInto(t!, [3, 2], new Float32Array(6)), { message: /tensor w: shape \[2,3\], expected \[3,2\]/ });
});

test('decodeWeights refuses a missing or extra tensor', () => {
  const wire = overTheWire(encodeWeights(flat(randomValues(rng(5), layout.totalSize))));
  throwsCode(() => decodeWeights(wire.slice(0, -1), layout), ErrorCode.SHAPE_MISMATCH);
  throwsCode(() => decodeWeights([...wire, wire[0]!], layout), ErrorCode.SHAPE_MISMATCH);
});

test('decoding refuses data of the wrong byte length, in every dtype', () => {
  for (const dtype of [DType.FLOAT32, DType.FLOAT16, DType.INT8]) {
    const good = encodeTensor('w', [3, 4], randomValues(rng(6), 12), dtype);
    for (const data of [good.data!.subarray(0, good.data!.byteLength - 1), new Uint8Array(good.data!.byteLength + 1), new Uint8Array(0)]) {
      const [t] = overTheWire([{ ...good, data }]);
      throwsCode(() => decodeTensorInto(t!, [3, 4], new Float32Array(12)), ErrorCode.SHAPE_MISMATCH);
    }
  }
});

test('NaN and ±Infinity are refused with NON_FINITE_VALUES (float32 and float16)', () => {
  for (const bad of [NaN, Infinity, -Infinity]) {
    for (const dtype of [DType.FLOAT32, DType.FLOAT16]) {
      const values = randomValues(rng(7), layout.totalSize);
      values[layout.offsets[2]! + 3] = bad;
      const wire = overTheWire(encodeWeights(flat(values), dtype));
      throwsCode(() => decodeWeights(wire, layout), ErrorCode.NON_FINITE_VALUES);
    }
  }
  // A finite float32 beyond the half-precision range becomes Infinity on the wire, and is refused the same way.
  const [t] = overTheWire([encodeTensor('big', [2], new Float32Array([1, 1e6]), DType.FLOAT16)]);
  throwsCode(() => decodeTensorInto(t!, [2], new Float32Array(2)), ErrorCode.NON_FINITE_VALUES);
});

test('an INT8 tensor without a usable scale, and an unknown dtype, are refused', () => {
  const good = encodeTensor('q', [3], new Float32Array([1, -2, 3]), DType.INT8);
  for (const scale of [0, -1, NaN, Infinity]) {
    const [t] = overTheWire([{ ...good, scale }]);
    throwsCode(() => decodeTensorInto(t!, [3], new Float32Array(3)), ErrorCode.INVALID_ARGUMENT);
  }
  for (const dtype of [DType.DTYPE_UNSPECIFIED, 42 as DType]) {
    const [t] = overTheWire([{ ...encodeTensor('f', [3], new Float32Array(3)), dtype }]);
    throwsCode(() => decodeTensorInto(t!, [3], new Float32Array(3)), ErrorCode.DTYPE_MISMATCH);
  }
  throwsCode(() => encodeTensor('f', [1], new Float32Array(1), 42 as DType), ErrorCode.DTYPE_MISMATCH);
});

test('tensors in the wrong order are refused even when every shape would fit', () => {
  // Two layers of the same shape: only the names tell them apart.
  const twin = layoutOf([
    { name: 'a/bias', shape: [4] },
    { name: 'b/bias', shape: [4] },
  ]);
  const wire = overTheWire(encodeWeights({ layout: twin, values: randomValues(rng(8), 8) }));
  throwsCode(() => decodeWeights([wire[1]!, wire[0]!], twin), ErrorCode.SHAPE_MISMATCH);
  const renamed = [{ ...wire[0]!, name: 'c/bias' }, wire[1]!];
  throwsCode(() => decodeWeights(renamed, twin), ErrorCode.SHAPE_MISMATCH);
});

test('tensor bytes at an odd offset of a larger buffer decode correctly, in every dtype', () => {
  const values = randomValues(rng(9), 12, 3);
  for (const dtype of [DType.FLOAT32, DType.FLOAT16, DType.INT8]) {
    const t = encodeTensor('w', [3, 4], values, dtype);
    const aligned = new Float32Array(12);
    decodeTensorInto(t, [3, 4], aligned);
    for (const offset of [1, 3, 5]) {
      const big = new Uint8Array(t.data!.byteLength + offset + 7).fill(0xa5);
      big.set(t.data!, offset);
      const odd = big.subarray(offset, offset + t.data!.byteLength);
      const out = new Float32Array(12);
      decodeTensorInto({ ...t, data: odd }, [3, 4], out);
      assert.deepEqual(bits(out), bits(aligned), `${DType[dtype]} at offset ${offset}`);
    }
  }
});

test('a whole encoded message at an odd offset of a larger buffer decodes bit-exactly', () => {
  const values = randomValues(rng(10), layout.totalSize);
  const bytes = encodeEnvelope({ update: { taskId: 't', delta: encodeWeights(flat(values)), numExamples: 3 } });
  const big = new Uint8Array(bytes.byteLength + 3);
  big.set(bytes, 1);
  const env = decodeEnvelope(big.subarray(1, 1 + bytes.byteLength));
  const decoded = decodeWeights(env.update!.delta!, layout);
  assert.deepEqual(bits(decoded), bits(values));
});

test('encoding a layer view sends that layer only, and decodeWeights fills a caller-given target', () => {
  // Layer views share one buffer; a FLOAT32 view must not leak its neighbours' bytes onto the wire.
  const values = randomValues(rng(11), layout.totalSize);
  const wire = encodeWeights(flat(values));
  for (let l = 0; l < specs.length; l++) assert.equal(wire[l]!.data!.byteLength, layout.sizes[l]! * 4);
  const backing = new Float32Array(layout.totalSize + 2);
  const target = backing.subarray(1, 1 + layout.totalSize);
  const out = decodeWeights(overTheWire(wire), layout, target);
  assert.equal(out, target);
  assert.deepEqual(bits(target), bits(values));
  assert.equal(backing[0], 0);
  assert.equal(backing[backing.length - 1], 0);
  assert.throws(() => decodeWeights(overTheWire(wire), layout, new Float32Array(3)), RangeError);
});

test('property: arbitrary bytes never make decoding throw anything but a ProtocolError', () => {
  const valid = encodeEnvelope({ update: { taskId: 'task', delta: encodeWeights(flat(randomValues(rng(12), layout.totalSize))), numExamples: 5 } });
  const chunk = encodeEnvelope({ chunk: { streamId: 's', seq: 0, total: 2, totalBytes: 20, data: new Uint8Array(10) } });
  const limits = { chunkBytes: 64, maxMessageBytes: 4096, maxOpenStreams: 2 };
  let decoded = 0;
  for (let seed = 1000; seed < 4000; seed++) {
    const r = rng(seed);
    let bytes: Uint8Array;
    if (seed % 3 === 0) {
      bytes = new Uint8Array(Math.floor(r() * 64));
      for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(r() * 256);
    } else {
      // Mutations of valid messages reach deeper than pure noise: past the tag parser into the fields.
      // A copy: encodeEnvelope returns a Buffer in Node, whose slice() is a view that would accumulate mutations.
      bytes = new Uint8Array(seed % 3 === 1 ? valid : chunk);
      const flips = 1 + Math.floor(r() * 4);
      for (let k = 0; k < flips; k++) bytes[Math.floor(r() * bytes.length)] = Math.floor(r() * 256);
      if (r() < 0.2) bytes = bytes.subarray(0, Math.floor(r() * bytes.length));
    }
    try {
      const env = decodeEnvelope(bytes);
      decoded++;
      if (env.body === 'update') decodeWeights(env.update!.delta ?? [], layout);
      new Reassembler(limits).accept(bytes);
    } catch (e) {
      assert.ok(e instanceof ProtocolError, `seed ${seed}: ${String(e)}`);
    }
  }
  // The mutations must not all be rejected at the first byte, or the later stages were never exercised.
  assert.ok(decoded > 100, `only ${decoded} inputs decoded`);
});

test('firstNonFinite finds the first NaN or Infinity at any position, and none among extreme finite values', () => {
  const n = 10_000;
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = (i % 7) - 3;
  v[5] = 3.4028234663852886e38; // the largest finite float32
  v[6] = -3.4028234663852886e38;
  v[7] = 1e-45; // the smallest subnormal
  v[8] = -0;
  assert.equal(firstNonFinite(v), -1);
  for (const bad of [NaN, Infinity, -Infinity]) {
    for (const at of [0, 4095, 4096, 9999]) {
      const w = v.slice();
      w[at] = bad;
      w[n - 1] = bad; // a later one must not be reported first
      assert.equal(firstNonFinite(w), at === 9999 ? 9999 : at, `${bad} at ${at}`);
    }
  }
  assert.equal(firstNonFinite(v.subarray(3, 3)), -1);
  const offsetView = new Float32Array(v.buffer, 4 * 10, 20);
  assert.equal(firstNonFinite(offsetView), -1);
});

/**
 * Positions that straddle the decoder's internal steps on a layer of the MNIST MLP's size (784 x 128 = 100,352 values):
 * the first index past a 4,096-value check block, past the first and the fourth 16,384-value copy step (65,536), the
 * last index of each of those, and the last value of the layer. A check that stopped after any step misses one.
 */
const FULL_LAYER: [number, number] = [784, 128];
const STEP_POSITIONS = [4095, 4096, 16383, 16384, 32768, 65535, 65536, 100351];

test('NaN and ±Infinity past every internal validation step of a full-size layer are refused, at their index', () => {
  const n = FULL_LAYER[0] * FULL_LAYER[1];
  assert.equal(n, 100_352);
  assert.equal(STEP_POSITIONS.at(-1), n - 1);
  const clean = randomValues(rng(17), n);
  for (const dtype of [DType.FLOAT32, DType.FLOAT16]) {
    // The clean layer decodes: the refusals below are the poison's, not the size's.
    const [ok] = overTheWire([encodeTensor('dense1/kernel', FULL_LAYER, clean, dtype)]);
    const target: Float32Array = new Float32Array(n);
    decodeTensorInto(ok!, FULL_LAYER, target);
    if (dtype === DType.FLOAT32) assert.deepEqual(target, clean);
    for (const at of STEP_POSITIONS) {
      for (const bad of [NaN, Infinity, -Infinity]) {
        const v = clean.slice();
        v[at] = bad;
        const [t] = overTheWire([encodeTensor('dense1/kernel', FULL_LAYER, v, dtype)]);
        assert.throws(
          () => decodeTensorInto(t!, FULL_LAYER, new Float32Array(n)),
          (e: unknown) => {
            assert.equal(code(e), 'NON_FINITE_VALUES', `${DType[dtype]}: ${bad} at ${at}`);
            assert.match((e as Error).message, new RegExp(`index ${at}$`), `${DType[dtype]}: ${bad} at ${at}`);
            return true;
          },
        );
        assert.equal(firstNonFinite(v), at);
      }
    }
  }
});

test('a full-size layer poisoned past a step is refused inside a whole update too (decodeWeights)', () => {
  const big = layoutOf([
    { name: 'dense1/kernel', shape: FULL_LAYER },
    { name: 'dense1/bias', shape: [128] },
  ]);
  const values = randomValues(rng(19), big.totalSize);
  for (const at of STEP_POSITIONS) {
    const v = values.slice();
    v[at] = NaN;
    throwsCode(() => decodeWeights(overTheWire(encodeWeights({ layout: big, values: v })), big), ErrorCode.NON_FINITE_VALUES);
  }
  assert.deepEqual(decodeWeights(overTheWire(encodeWeights({ layout: big, values })), big), values);
});

test('decoding refusals say exactly what is wrong (shape, byte count, target size, tensor count and names)', () => {
  const t = encodeTensor('w', [2, 2], Float32Array.of(1, 2, 3, 4));
  const [wire] = overTheWire([t]);
  assert.throws(() => decodeTensorInto(wire!, [4], new Float32Array(4)), { message: 'tensor w: shape [2,2], expected [4]' });
  assert.throws(() => decodeTensorInto(wire!, [4, 1], new Float32Array(4)), { message: 'tensor w: shape [2,2], expected [4,1]' });
  assert.throws(() => decodeTensorInto({ ...wire!, name: undefined }, [4], new Float32Array(4)), { message: 'tensor : shape [2,2], expected [4]' });
  assert.throws(() => decodeTensorInto({ ...wire!, data: wire!.data!.subarray(0, 12) }, [2, 2], new Float32Array(4)), { message: 'tensor w: 12 bytes, expected 16 for FLOAT32' });
  assert.throws(() => decodeTensorInto(wire!, [2, 2], new Float32Array(3)), { name: 'RangeError', message: 'target holds 3 values, tensor w has 4' });
  assert.throws(() => decodeTensorInto(wire!, [2, 2], new Float32Array(5)), { name: 'RangeError', message: 'target holds 5 values, tensor w has 4' });
  // A tensor without a shape is a scalar: it decodes against the empty shape.
  const scalar = encodeTensor('s', [], Float32Array.of(7));
  const got = new Float32Array(1);
  decodeTensorInto({ ...scalar, shape: undefined }, [], got);
  assert.deepEqual([...got], [7]);

  const two = layoutOf([
    { name: 'a', shape: [2] },
    { name: 'b', shape: [1] },
  ]);
  const tensors = encodeWeights({ layout: two, values: Float32Array.of(1, 2, 3) });
  assert.throws(() => decodeWeights(tensors.slice(0, 1), two), { message: '1 tensors, the model has 2' });
  assert.throws(() => decodeWeights([tensors[1]!, tensors[0]!], two), { message: 'tensor 0 is named b, expected a' });
  assert.throws(() => decodeWeights(tensors, two, new Float32Array(2)), { name: 'RangeError', message: 'target holds 2 values, layout 3' });
  // A layer with an empty name is matched by a tensor without one.
  const unnamed = layoutOf([{ name: '', shape: [1] }]);
  assert.deepEqual(decodeWeights([{ ...encodeTensor('', [1], Float32Array.of(5)), name: undefined }], unnamed), Float32Array.of(5));
});

test('a NaN or Infinity at any of the last positions of a 4,096-value check block is found (the unrolled sums cover each)', () => {
  const v = new Float32Array(3 * 4096 + 3);
  for (let i = 0; i < v.length; i++) v[i] = i % 5;
  for (const bad of [NaN, Infinity]) {
    for (const at of [4088, 4089, 4090, 4091, 4092, 4093, 4094, 4095, 8190, 12287, 12288, 12289, 12290]) {
      const w = v.slice();
      w[at] = bad;
      assert.equal(firstNonFinite(w), at, `${bad} at ${at}`);
      const [t] = overTheWire([encodeTensor('x', [w.length], w)]);
      assert.throws(() => decodeTensorInto(t!, [w.length], new Float32Array(w.length)), { message: `tensor x: non-finite value at index ${at}` });
    }
  }
});
