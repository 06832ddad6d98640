import { test } from 'node:test';
import assert from 'node:assert/strict';
import seedrandom from 'seedrandom';
import { frameMessage } from './chunking.js';
import { encodeEnvelope, type Envelope } from './envelope.js';
import { encodeTaskWeights, envelopePieces, framePieces, piecesLength } from './pieces.js';
import { DType, encodeTensor, type WireTensor } from './tensor-codec.js';

/** Plain Uint8Array views: protobufjs returns Buffers on Node, and deepEqual compares prototypes. */
function bytes(x: Uint8Array): Uint8Array {
  return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
}

function concat(pieces: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(piecesLength(pieces));
  let at = 0;
  for (const p of pieces) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

function tensors(r: () => number): WireTensor[] {
  const n = Math.floor(r() * 4);
  return Array.from({ length: n }, (_, i) => {
    const size = [0, 1, 3, 200, 40_000][Math.floor(r() * 5)]!;
    const values = Float32Array.from({ length: size }, () => r() * 2 - 1);
    const dtype = [DType.FLOAT32, DType.FLOAT16, DType.INT8][Math.floor(r() * 3)]!;
    return encodeTensor(`layer${i}/w`, [size], values, dtype);
  });
}

function messages(seed: string): Envelope[] {
  const r = seedrandom(seed);
  const out: Envelope[] = [];
  for (let i = 0; i < 30; i++) {
    const ts = tensors(r);
    out.push({ update: { taskId: r() < 0.2 ? '' : `t${i}`, delta: ts, numExamples: Math.floor(r() * 1e6), ...(r() < 0.5 ? { metrics: { loss: r(), accuracy: r() } } : {}), ...(r() < 0.3 ? { timings: { trainMs: r() * 100 } } : {}) } });
    out.push({
      task: {
        taskId: `task-${i}`,
        kind: 1 + Math.floor(r() * 3),
        round: Math.floor(r() * 1000),
        modelVersion: 'v',
        ...(r() < 0.5 ? { topologyJson: '{"x":1}' } : {}),
        weights: ts,
        hyper: { learningRate: r(), batchSize: 32, localEpochs: 0.5, seed: Math.floor(r() * 2 ** 32), optimizer: 'sgd' },
        deadlineUnixMs: Date.now() + Math.floor(r() * 1e6),
        ...(r() < 0.5 ? { jobId: 'job' } : {}),
        ...(r() < 0.5 ? { uploadGrantedBytes: Math.floor(r() * 2 ** 40) } : {}),
      },
    });
  }
  out.push({ hello: { clientId: 'c', secret: 's', protocolVersion: 1 } });
  out.push({ update: { taskId: 'eval', numExamples: 3, metrics: { loss: 1 } } });
  return out;
}

test('envelopePieces concatenate to exactly what encodeEnvelope gives, for updates, tasks and other messages', () => {
  for (const msg of messages('pieces')) assert.deepEqual(concat(envelopePieces(msg)), bytes(encodeEnvelope(msg)));
});

test('a task with its weights pre-encoded once encodes the same bytes as the task with its weights inline', () => {
  for (const msg of messages('pre')) {
    if (!msg.task || !msg.task.weights?.length) continue;
    const { weights, ...rest } = msg.task;
    const pre = encodeTaskWeights(weights);
    assert.deepEqual(concat(envelopePieces({ task: rest }, pre)), bytes(encodeEnvelope(msg)));
    assert.throws(() => envelopePieces(msg, pre), RangeError);
  }
});

test('tensor data is referenced, not copied, until the frames are cut', () => {
  const values = new Float32Array(1000).fill(0.25);
  const t = encodeTensor('w', [1000], values);
  const pieces = envelopePieces({ update: { taskId: 'x', delta: [t], numExamples: 1 } });
  assert.ok(pieces.some((p) => p.buffer === values.buffer), 'the float32 data is a view of the caller’s buffer');
});

test('framePieces cuts the same frames as frameMessage, for any chunk size, including cuts inside headers', () => {
  const msgs = messages('frames').filter((m) => (m.update?.delta?.length ?? 0) > 0 || (m.task?.weights?.length ?? 0) > 0);
  for (const msg of msgs.slice(0, 12)) {
    const encoded = encodeEnvelope(msg);
    for (const chunkBytes of [1, 7, 64, 1000, encoded.byteLength - 1, encoded.byteLength, 1 << 20]) {
      if (chunkBytes < 1) continue;
      const limits = { chunkBytes, maxMessageBytes: 1 << 26 };
      const want = frameMessage(encoded, 'sid', limits);
      const got = framePieces(envelopePieces(msg), 'sid', limits);
      assert.equal(got.length, want.length);
      for (let i = 0; i < want.length; i++) assert.deepEqual(bytes(got[i]!), bytes(want[i]!), `frame ${i} of ${want.length} at ${chunkBytes}-byte chunks`);
    }
  }
});

test('framePieces refuses a message over the cap before building any frame', () => {
  const t = encodeTensor('w', [100], new Float32Array(100));
  assert.throws(() => framePieces(envelopePieces({ update: { taskId: 'x', delta: [t], numExamples: 1 } }), 's', { chunkBytes: 64, maxMessageBytes: 300 }), /exceeds the 300-byte cap/);
});
