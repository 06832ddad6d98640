import { test } from 'node:test';
import assert from 'node:assert/strict';
import { getFloat16, setFloat16 } from '@petamoriken/float16';
import seedrandom from 'seedrandom';
import { decodeHalves, encodeHalves, fromHalf, toHalf } from './float16.js';

/** The reference: the DataView-based library the codec used before, which follows IEEE 754 exactly. */
function refHalf(x: number): number {
  const dv = new DataView(new ArrayBuffer(2));
  setFloat16(dv, 0, x, true);
  return dv.getUint16(0, true);
}
function refValue(h: number): number {
  const dv = new DataView(new ArrayBuffer(2));
  dv.setUint16(0, h, true);
  return getFloat16(dv, 0, true);
}

test('every one of the 65536 half patterns decodes as the reference does, and encodes back to itself', () => {
  for (let h = 0; h < 65536; h++) {
    const want = refValue(h);
    const got = fromHalf(h);
    if (Number.isNaN(want)) {
      assert.ok(Number.isNaN(got), `half 0x${h.toString(16)}`);
      assert.equal(toHalf(got) & 0x7c00, 0x7c00);
      assert.notEqual(toHalf(got) & 0x3ff, 0);
    } else {
      assert.ok(Object.is(got, want), `half 0x${h.toString(16)}: ${got} vs ${want}`);
      assert.equal(toHalf(got), h, `round trip of half 0x${h.toString(16)}`);
    }
  }
});

test('float32 values round to the nearest half like the reference: random, ties, edges, overflow, subnormals', () => {
  const r = seedrandom('f16');
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const cases: number[] = [0, -0, 65504, 65519.99, 65520, -65520, 1e6, -1e-9, 2 ** -24, 2 ** -25, 2 ** -25 * 1.0001, 3 * 2 ** -26, 2 ** -14, 2 ** -14 - 2 ** -25, Infinity, -Infinity];
  // Exact ties between neighbouring halves (round to even) in the normal and subnormal range.
  for (let h = 0; h < 0x7bff; h += 97) cases.push((refValue(h) + refValue(h + 1)) / 2);
  for (let i = 0; i < 200_000; i++) {
    u[0] = Math.floor(r() * 2 ** 32);
    cases.push(f[0]!);
  }
  for (const x of cases) {
    f[0] = x;
    const v = f[0]!;
    if (Number.isNaN(v)) continue;
    assert.equal(toHalf(v), refHalf(v), `${v}`);
  }
});

test('array helpers: little-endian halves at any byte offset, and length checks', () => {
  const values = Float32Array.from([1, -2, 0.5, 65504, 1e-7, -0]);
  const buf = new Uint8Array(values.length * 2 + 1);
  const out = buf.subarray(1); // odd offset, as inside a protobuf message
  encodeHalves(values, out);
  const dv = new DataView(buf.buffer, 1);
  for (let i = 0; i < values.length; i++) assert.equal(dv.getUint16(i * 2, true), refHalf(values[i]!));
  const back = new Float32Array(values.length);
  decodeHalves(out, back);
  for (let i = 0; i < values.length; i++) assert.ok(Object.is(back[i], refValue(refHalf(values[i]!))));
  assert.throws(() => encodeHalves(values, new Uint8Array(3)), RangeError);
  assert.throws(() => decodeHalves(new Uint8Array(3), back), RangeError);
});
