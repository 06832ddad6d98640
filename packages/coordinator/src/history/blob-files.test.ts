import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { layoutOf } from '@fedunlearn/protocol';
import { blobPayload, decodeBlob, encodeBlob, readBlobHeader, unlinkDurable, weightsSha256, writeFileDurableSync } from './blob-files.js';

const layout = layoutOf([
  { name: 'dense/kernel', shape: [7, 5] },
  { name: 'dense/bias', shape: [5] },
  { name: 'out/kernel', shape: [5, 3] },
]);

/** Values spanning several magnitudes per layer, deterministic. */
function sample(scaleByLayer: number[]): Float32Array {
  const v = new Float32Array(layout.totalSize);
  for (let l = 0; l < layout.specs.length; l++) {
    for (let i = 0; i < layout.sizes[l]!; i++) v[layout.offsets[l]! + i] = Math.sin(1 + i * 12.9898 + l) * scaleByLayer[l]! * (i % 3 === 0 ? 1e-3 : 1);
  }
  return v;
}

test('fp32 blobs round-trip bit-exactly and their payload is the little-endian weights', () => {
  const v = sample([1, 0.01, 50]);
  const { bytes, encoding } = encodeBlob(layout, v, 'fp32');
  assert.equal(encoding, 'fp32');
  const back = decodeBlob(layout, bytes).values;
  assert.deepEqual(new Uint8Array(back.buffer), new Uint8Array(v.buffer));
  const le = Buffer.alloc(v.length * 4);
  v.forEach((x, i) => le.writeFloatLE(x, i * 4));
  assert.deepEqual(Buffer.from(blobPayload(layout, bytes)), le);
  assert.equal(weightsSha256(v), createHash('sha256').update(le).digest('hex'));
});

test('fp16 blobs are half the payload and within float16 rounding', () => {
  const v = sample([1, 0.01, 50]);
  const { bytes, encoding } = encodeBlob(layout, v, 'fp16');
  assert.equal(encoding, 'fp16');
  assert.equal(bytes.byteLength - readBlobHeader(layout, bytes).payloadOffset, v.length * 2);
  const back = decodeBlob(layout, bytes).values;
  for (let i = 0; i < v.length; i++) {
    // float16 has an 11-bit significand (relative step 2^-10, rounding error half that); below 2^-14 it is
    // subnormal with an absolute step of 2^-24.
    assert.ok(Math.abs(back[i]! - v[i]!) <= Math.abs(v[i]!) * 2 ** -11 + 2 ** -25, `index ${i}: ${v[i]} -> ${back[i]}`);
  }
});

test('fp16 falls back to exact fp32 when a value is out of float16 range', () => {
  const v = sample([1, 1, 1]);
  v[3] = 70000;
  const { bytes, encoding } = encodeBlob(layout, v, 'fp16');
  assert.equal(encoding, 'fp32');
  assert.deepEqual(decodeBlob(layout, bytes).values, v);
});

test('int8 blobs quantise per layer within half a step of that layer', () => {
  const v = sample([1, 0.01, 50]);
  const { bytes, encoding } = encodeBlob(layout, v, 'int8');
  assert.equal(encoding, 'int8');
  const back = decodeBlob(layout, bytes).values;
  for (let l = 0; l < layout.specs.length; l++) {
    const off = layout.offsets[l]!;
    const layer = v.subarray(off, off + layout.sizes[l]!);
    const maxAbs = Math.max(...Array.from(layer, Math.abs));
    for (let i = 0; i < layer.length; i++) {
      // Symmetric quantisation with step maxAbs/127 rounds to within half a step (plus float32 slack).
      assert.ok(Math.abs(back[off + i]! - layer[i]!) <= (maxAbs / 127) * 0.5 * (1 + 1e-5), `layer ${l} index ${i}`);
    }
  }
  // The small layer keeps its own scale: a single blob-wide scale would have flattened it to zero.
  assert.ok(back.subarray(layout.offsets[1]!, layout.offsets[2]!).some((x) => x !== 0));
});

test('a damaged or foreign blob is refused', () => {
  const { bytes } = encodeBlob(layout, sample([1, 1, 1]), 'fp32');
  const badMagic = bytes.slice();
  badMagic[0] = badMagic[0]! ^ 0xff;
  assert.throws(() => decodeBlob(layout, badMagic), /magic/);
  assert.throws(() => decodeBlob(layout, bytes.subarray(0, bytes.length - 1)), /bytes, expected/);
  const other = layoutOf([{ name: 'x', shape: [3] }]);
  assert.throws(() => decodeBlob(other, bytes), /layers/);
  const nan = sample([1, 1, 1]);
  nan[0] = Number.NaN;
  assert.throws(() => encodeBlob(layout, nan, 'fp32'), /non-finite/);
});

test('durable writes leave only the final file, and unlinks report the bytes freed', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-blobs-'));
  try {
    const a = path.join(dir, 'sub', 'a.bin');
    const b = path.join(dir, 'sub', 'b.bin');
    writeFileDurableSync(a, new Uint8Array([1, 2, 3]));
    writeFileDurableSync(b, new Uint8Array([4, 5, 6, 7]));
    writeFileDurableSync(b, new Uint8Array([8, 9])); // replaces atomically
    assert.deepEqual(fs.readdirSync(path.join(dir, 'sub')).sort(), ['a.bin', 'b.bin']);
    assert.deepEqual([...fs.readFileSync(b)], [8, 9]);
    assert.equal(await unlinkDurable([a, b, path.join(dir, 'sub', 'missing.bin')]), 5);
    assert.deepEqual(fs.readdirSync(path.join(dir, 'sub')), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
