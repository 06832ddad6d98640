import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decodeEnvelope, encodeEnvelope, pb, type Envelope } from './envelope.js';
import { ErrorCode, ProtocolError } from './errors.js';

// Property tests over the envelope decoder, the first thing every received frame meets. The budget is bounded so the
// file runs in a few seconds; FEDUNLEARN_FUZZ_SEED replays the seed a failing run printed.

const fuzzSeed = process.env.FEDUNLEARN_FUZZ_SEED;
const budget = (numRuns: number): fc.Parameters<unknown> => ({ numRuns, ...(fuzzSeed ? { seed: Number(fuzzSeed) } : {}) });

const u32 = fc.nat({ max: 0xffffffff });
const u64 = fc.maxSafeNat();
const text = fc.string({ unit: 'grapheme', maxLength: 24 });
const bytes = fc.uint8Array({ maxLength: 64 });
// float fields travel as float32: only values a float32 holds round-trip exactly.
const f32 = fc.float();
const enumOf = (e: Record<string, string | number>) => fc.constantFrom(...Object.values(e).filter((v): v is number => typeof v === 'number'));

const tensor = fc.record({ name: text, dtype: enumOf(pb.DType), shape: fc.array(u32, { maxLength: 4 }), data: bytes, scale: f32 });
const body: fc.Arbitrary<Envelope> = fc.oneof(
  fc.record({ hello: fc.record({ clientId: text, secret: text, sdkVersion: text, numExamples: u32, backend: text, protocolVersion: u32 }) }),
  fc.record({
    welcome: fc.record({
      clientId: text,
      sessionId: text,
      coordinatorVersion: text,
      maxMessageBytes: u64,
      chunkBytes: u32,
      heartbeatIntervalMs: u32,
      protocolVersion: u32,
      uploadGrantAboveBytes: u64,
      maxFrameBytes: u64,
      minChunkBytes: u32,
      streamIdleTimeoutMs: u32,
    }),
  }),
  fc.record({
    challenge: fc.record({ nonce: bytes, sessionId: text, keyDerivation: enumOf(pb.KeyDerivation), salt: bytes, scryptLog2N: u32, scryptR: u32, scryptP: u32, enrol: fc.boolean() }),
  }),
  fc.record({ helloProof: fc.record({ proof: bytes, enrolKey: bytes }) }),
  fc.record({ heartbeat: fc.record({ sentUnixMs: u64 }) }),
  fc.record({
    task: fc.record({
      taskId: text,
      kind: enumOf(pb.TaskKind),
      round: u32,
      modelVersion: text,
      topologyJson: text,
      weights: fc.array(tensor, { maxLength: 3 }),
      hyper: fc.record({ learningRate: f32, batchSize: u32, localEpochs: f32, seed: u32, optimizer: text }),
      deadlineUnixMs: u64,
      jobId: text,
    }),
  }),
  fc.record({
    update: fc.record({
      taskId: text,
      delta: fc.array(tensor, { maxLength: 3 }),
      numExamples: u32,
      metrics: fc.dictionary(text.filter((k) => k !== '__proto__'), fc.double(), { maxKeys: 4 }),
      timings: fc.record({ trainMs: fc.double(), encodeMs: fc.double(), decodeMs: fc.double() }),
    }),
  }),
  fc.record({ forgetRequest: fc.record({ requestId: text, reason: text }) }),
  fc.record({ forgetReceipt: fc.record({ requestId: text, jobId: text, state: enumOf(pb.JobState) }) }),
  fc.record({
    jobStatus: fc.record({
      jobId: text,
      state: enumOf(pb.JobState),
      step: u32,
      totalSteps: u32,
      message: text,
      modelVersionBefore: text,
      modelVersionAfter: text,
      sha256Before: text,
      sha256After: text,
      reportJson: text,
    }),
  }),
  fc.record({ error: fc.record({ code: enumOf(pb.ErrorCode), message: text, ref: text }) }),
  fc.record({ chunk: fc.record({ streamId: text, seq: u32, total: u32, totalBytes: u64, data: bytes }) }),
  fc.record({ uploadRequest: fc.record({ taskId: text, bytes: u64 }) }),
  fc.record({ uploadGrant: fc.record({ taskId: text, uploadDeadlineUnixMs: u64 }) }),
);

/** A byte-level corruption of a valid frame: what a buggy or hostile peer sends. */
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bits: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), junk: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('append' as const), junk: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer M> ? M : never;

function mutate(frame: Uint8Array, ms: Mutation[]): Uint8Array {
  let out = Uint8Array.from(frame);
  for (const m of ms) {
    const at = out.length === 0 ? 0 : ('at' in m ? m.at : 0) % out.length;
    switch (m.kind) {
      case 'flip':
        if (out.length > 0) out[at] = out[at]! ^ m.bits;
        break;
      case 'truncate':
        out = out.subarray(0, at);
        break;
      case 'insert':
        out = Uint8Array.from([...out.subarray(0, at), ...m.junk, ...out.subarray(at)]);
        break;
      case 'delete':
        out = Uint8Array.from([...out.subarray(0, at), ...out.subarray(at + m.n)]);
        break;
      case 'append':
        out = Uint8Array.from([...out, ...m.junk]);
        break;
    }
  }
  return out;
}

/** The decoder's contract: exactly one message with a body, or a MALFORMED_MESSAGE ProtocolError, nothing else. */
function decodesOrRefuses(frame: Uint8Array): void {
  let env;
  try {
    env = decodeEnvelope(frame);
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `decode threw ${String(e)} instead of a ProtocolError`);
    assert.equal(e.code, ErrorCode.MALFORMED_MESSAGE, e.message);
    return;
  }
  assert.ok(env.body, 'a decoded envelope names its body');
  assert.ok(env[env.body] != null, `the ${env.body} field of a decoded envelope is set`);
  // Whatever was accepted must be re-encodable: handlers re-send and log decoded messages.
  assert.doesNotThrow(() => encodeEnvelope(env));
}

const plain = { longs: Number, enums: Number, bytes: Array, defaults: true, arrays: true, objects: true } as const;

test('arbitrary bytes decode to an envelope with a body or are refused with MALFORMED_MESSAGE', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 256 }), (b) => {
      decodesOrRefuses(b);
      decodesOrRefuses(Buffer.from(b));
    }),
    budget(20_000),
  );
});

test('mutated valid envelopes decode to an envelope with a body or are refused with MALFORMED_MESSAGE', () => {
  let refused = 0;
  fc.assert(
    fc.property(body, fc.array(mutation, { minLength: 1, maxLength: 4 }), (msg, ms) => {
      const frame = mutate(encodeEnvelope(msg), ms);
      try {
        decodeEnvelope(frame);
      } catch {
        refused++;
      }
      decodesOrRefuses(frame);
    }),
    budget(6000),
  );
  // A fuzzer whose mutations never reach the error path would prove nothing about it.
  assert.ok(refused > 0, 'some mutated frames were refused');
});

test('a frame decodes the same from a Node Buffer as from a plain Uint8Array (servers receive Buffers)', () => {
  const outcome = (f: Uint8Array): unknown => {
    try {
      return pb.Envelope.toObject(decodeEnvelope(f), plain);
    } catch (e) {
      return e instanceof ProtocolError ? e.codeName : `unexpected ${String(e)}`;
    }
  };
  fc.assert(
    fc.property(body, fc.array(mutation, { maxLength: 3 }), (msg, ms) => {
      const frame = mutate(encodeEnvelope(msg), ms);
      assert.deepEqual(outcome(Buffer.from(frame)), outcome(Uint8Array.from(frame)));
    }),
    budget(6000),
  );
});

test('every valid message survives an encode/decode round trip field for field', () => {
  fc.assert(
    fc.property(body, (msg) => {
      const bytesOut = encodeEnvelope(msg);
      const env = decodeEnvelope(bytesOut);
      assert.equal(env.body, Object.keys(msg)[0]);
      assert.deepEqual(pb.Envelope.toObject(env, plain), pb.Envelope.toObject(pb.Envelope.fromObject(msg as Record<string, unknown>), plain));
      assert.deepEqual(encodeEnvelope(env), bytesOut, 're-encoding the decoded message gives the same bytes');
    }),
    budget(3000),
  );
});

test('an empty or bodiless frame is MALFORMED_MESSAGE', () => {
  for (const frame of [new Uint8Array(0), encodeEnvelope({})]) {
    assert.throws(() => decodeEnvelope(frame), (e: unknown) => e instanceof ProtocolError && e.code === ErrorCode.MALFORMED_MESSAGE);
  }
});
