import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Channel } from './channel.js';
import { Reassembler, ReassemblyBuffer, type FramingLimits } from './chunking.js';
import { WIRE_EVENT } from './constants.js';
import { encodeEnvelope, expectBody } from './envelope.js';
import type { fedunlearn } from './gen/proto.js';
import { socketPair } from './memory-socket.test-support.js';
import { envelopePieces, framePieces } from './pieces.js';
import { decodeWeights, encodeWeights } from './tensor-codec.js';
import { layoutOf } from './weights.js';

// A shared reassembly buffer is reused across messages: these tests hold on to messages the way a buggy consumer
// would, and check that nothing still referenced is ever overwritten.

const limits: FramingLimits = { chunkBytes: 256, maxMessageBytes: 1 << 20, maxOpenStreams: 4, minChunkBytes: 1 };
const layout = layoutOf([
  { name: 'k', shape: [30, 20] },
  { name: 'b', shape: [20] },
]);

function values(seed: number): Float32Array {
  return Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(seed * 1000 + i));
}

/** An Update of `values(seed)`, as the frames a client sends. */
function updateFrames(seed: number, stream: string): Uint8Array[] {
  const pieces = envelopePieces({ update: { taskId: `t${seed}`, delta: encodeWeights({ layout, values: values(seed) }), numExamples: 3 } });
  return framePieces(pieces, stream, limits);
}

function feed(r: Reassembler, frames: Uint8Array[]): fedunlearn.v1.Envelope {
  let env: fedunlearn.v1.Envelope | null = null;
  for (const f of frames) {
    assert.equal(env, null, 'a message completes with its last frame only');
    env = r.accept(f);
  }
  assert.ok(env);
  return env;
}

function delta(env: fedunlearn.v1.Envelope): Float32Array {
  return decodeWeights(expectBody(env, 'update').delta ?? [], layout);
}

function dataBuffer(env: fedunlearn.v1.Envelope): ArrayBufferLike {
  return expectBody(env, 'update').delta![0]!.data!.buffer;
}

test('a released message\'s memory is reused for the next one, which decodes exactly', () => {
  const shared = new ReassemblyBuffer();
  const r = new Reassembler(limits, shared);
  const first = feed(r, updateFrames(1, 's1'));
  assert.deepEqual(delta(first), values(1));
  const firstMemory = dataBuffer(first);
  r.release();
  assert.equal(shared.isLent, false);
  const second = feed(r, updateFrames(2, 's2'));
  assert.equal(dataBuffer(second), firstMemory, 'the same memory was reused');
  assert.deepEqual(delta(second), values(2));
  r.release();
});

test('two messages in a row while the first is still referenced: the first is never overwritten', () => {
  const shared = new ReassemblyBuffer();
  const r = new Reassembler(limits, shared);
  const first = feed(r, updateFrames(1, 's1'));
  // Not released: a consumer that still holds `first` (its tensors are views of the shared memory).
  const second = feed(r, updateFrames(2, 's2'));
  assert.notEqual(dataBuffer(second), dataBuffer(first));
  assert.deepEqual(delta(first), values(1));
  assert.deepEqual(delta(second), values(2));
  // One release declares both dead; the buffer is then free again.
  r.release();
  assert.equal(shared.isLent, false);
  const third = feed(r, updateFrames(3, 's3'));
  assert.equal(dataBuffer(third), dataBuffer(first));
  assert.deepEqual(delta(third), values(3));
});

test('one buffer shared by two reassemblers (two connections): a message held by one is safe from the other', () => {
  const shared = new ReassemblyBuffer();
  const a = new Reassembler(limits, shared);
  const b = new Reassembler(limits, shared);
  const fromA = feed(a, updateFrames(1, 'x'));
  const fromB = feed(b, updateFrames(2, 'x'));
  assert.deepEqual(delta(fromA), values(1));
  assert.deepEqual(delta(fromB), values(2));
  b.release(); // b got fresh memory: its release must not free a's buffer
  assert.equal(shared.isLent, true);
  const fromB2 = feed(b, updateFrames(3, 'y'));
  assert.deepEqual(delta(fromA), values(1));
  assert.deepEqual(delta(fromB2), values(3));
  a.release();
  assert.equal(shared.isLent, false);
});

test('a message refused once reassembled gives the buffer back, unless an earlier one still holds it', () => {
  const shared = new ReassemblyBuffer();
  const r = new Reassembler(limits, shared);
  const nested = encodeEnvelope({ chunk: { streamId: 'n', seq: 0, total: 1, totalBytes: 1, data: new Uint8Array(1) } });
  const bad = (id: string) => [
    encodeEnvelope({ chunk: { streamId: id, seq: 0, total: 2, totalBytes: nested.byteLength, data: nested.subarray(0, 4) } }),
    encodeEnvelope({ chunk: { streamId: id, seq: 1, total: 2, totalBytes: nested.byteLength, data: nested.subarray(4) } }),
  ];
  const [b0, b1] = bad('bad');
  assert.equal(r.accept(b0!), null);
  assert.throws(() => r.accept(b1!), /nested chunk/);
  assert.equal(shared.isLent, false);

  const held = feed(r, updateFrames(1, 'ok'));
  const [c0, c1] = bad('bad2');
  r.accept(c0!);
  assert.throws(() => r.accept(c1!), /nested chunk/);
  assert.equal(shared.isLent, true, 'the held message keeps its memory');
  assert.deepEqual(delta(held), values(1));
  r.release();
});

test('a channel gives the buffer back once its handler returned, and each message decodes exactly', async () => {
  const [a, b] = socketPair();
  const shared = new ReassemblyBuffer();
  const decoded: Float32Array[] = [];
  const lentDuring: boolean[] = [];
  const memory = new Set<ArrayBufferLike>();
  let done!: () => void;
  const all = new Promise<void>((resolve) => (done = resolve));
  const receiver = new Channel(b, {
    message: (env) => {
      lentDuring.push(shared.isLent);
      memory.add(dataBuffer(env));
      decoded.push(delta(env)); // decoded synchronously, as the dispatcher does
      if (decoded.length === 3) done();
    },
  }, limits, shared);
  const sender = new Channel(a, { message: () => {} }, limits);
  for (const seed of [1, 2, 3]) sender.send({ update: { taskId: `t${seed}`, delta: encodeWeights({ layout, values: values(seed) }), numExamples: 3 } });
  await all;
  assert.deepEqual(lentDuring, [true, true, true]);
  assert.equal(memory.size, 1, 'all three were reassembled into the one shared buffer');
  assert.equal(shared.isLent, false);
  assert.deepEqual(decoded, [values(1), values(2), values(3)]);
  receiver.close();
  sender.close();
});
