import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { frameMessage, Reassembler, ReassemblyBuffer, type FramingLimits } from './chunking.js';
import { decodeEnvelope, encodeEnvelope } from './envelope.js';
import { ErrorCode, ProtocolError } from './errors.js';

// Property tests over the Reassembler: whatever sequence of frames a peer sends, it never holds more than its caps,
// refuses with the code the framing rules give, and reassembles honest interleaved streams exactly.

const fuzzSeed = process.env.FEDUNLEARN_FUZZ_SEED;
const budget = (numRuns: number): fc.Parameters<unknown> => ({ numRuns, ...(fuzzSeed ? { seed: Number(fuzzSeed) } : {}) });

const limits: FramingLimits = { chunkBytes: 32, maxMessageBytes: 512, maxOpenStreams: 3, minChunkBytes: 8 };

/** A message whose encoding is about `n` bytes. */
function message(n: number, tag: string): Uint8Array {
  return encodeEnvelope({ forgetRequest: { requestId: tag, reason: 'x'.repeat(n) } });
}

type Outcome = { kind: 'pending' } | { kind: 'message'; bytes: Uint8Array } | { kind: 'error'; code: ErrorCode };

function accept(r: Reassembler, frame: Uint8Array): Outcome {
  try {
    const env = r.accept(frame);
    const out: Outcome = env ? { kind: 'message', bytes: encodeEnvelope(env) } : { kind: 'pending' };
    // Done with it, as a channel is once its handler returned (a no-op for a reassembler without a shared buffer).
    r.release();
    return out;
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `the reassembler threw ${String(e)} instead of a ProtocolError`);
    return { kind: 'error', code: e.code };
  }
}

/**
 * The framing rules written as a specification, independent of the implementation's buffering: which outcome each
 * frame must have, and how many data bytes each open stream holds (the memory a peer can make the receiver keep).
 */
class FramingSpec {
  readonly open = new Map<string, { total: number; totalBytes: number; nextSeq: number; data: number[] }>();

  constructor(private readonly l: FramingLimits) {}

  expect(frame: Uint8Array): Outcome {
    let env;
    try {
      env = decodeEnvelope(frame);
    } catch {
      return { kind: 'error', code: ErrorCode.MALFORMED_MESSAGE };
    }
    if (env.body !== 'chunk') return { kind: 'message', bytes: encodeEnvelope(env) };
    const c = env.chunk!;
    const id = c.streamId ?? '';
    const seq = c.seq ?? 0;
    const total = c.total ?? 0;
    const totalBytes = Number(c.totalBytes ?? 0);
    const data = c.data ?? new Uint8Array(0);
    const fail = (code: ErrorCode): Outcome => {
      this.open.delete(id);
      return { kind: 'error', code };
    };
    let s = this.open.get(id);
    if (!s) {
      if (seq !== 0) return fail(ErrorCode.MALFORMED_MESSAGE);
      if (totalBytes > this.l.maxMessageBytes) return fail(ErrorCode.MESSAGE_TOO_LARGE);
      if (total < 1 || totalBytes < 1 || total > totalBytes) return fail(ErrorCode.MALFORMED_MESSAGE);
      // No more chunks than the size needs at the minimum chunk size.
      if (total > Math.ceil(totalBytes / this.l.minChunkBytes!)) return fail(ErrorCode.MALFORMED_MESSAGE);
      if (this.open.size >= this.l.maxOpenStreams) return fail(ErrorCode.RATE_LIMITED);
      s = { total, totalBytes, nextSeq: 0, data: [] };
      this.open.set(id, s);
    }
    if (seq !== s.nextSeq || total !== s.total || totalBytes !== s.totalBytes) return fail(ErrorCode.MALFORMED_MESSAGE);
    if (s.data.length + data.byteLength > s.totalBytes) return fail(ErrorCode.MESSAGE_TOO_LARGE);
    // Every chunk but the last holds at least the minimum.
    if (seq + 1 < s.total && data.byteLength < this.l.minChunkBytes!) return fail(ErrorCode.MALFORMED_MESSAGE);
    s.data.push(...data);
    s.nextSeq++;
    if (s.nextSeq < s.total) return { kind: 'pending' };
    this.open.delete(id);
    if (s.data.length !== s.totalBytes) return { kind: 'error', code: ErrorCode.MALFORMED_MESSAGE };
    let inner;
    try {
      inner = decodeEnvelope(Uint8Array.from(s.data));
    } catch {
      return { kind: 'error', code: ErrorCode.MALFORMED_MESSAGE };
    }
    if (inner.body === 'chunk') return { kind: 'error', code: ErrorCode.MALFORMED_MESSAGE };
    return { kind: 'message', bytes: encodeEnvelope(inner) };
  }

  get heldBytes(): number {
    let n = 0;
    for (const s of this.open.values()) n += s.data.length;
    return n;
  }
}

/** A hostile frame: chunks with plausible-or-not fields over a few stream ids, whole messages, or noise. */
const hostileFrame: fc.Arbitrary<Uint8Array> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc
      .record({
        streamId: fc.constantFrom('a', 'b', 'c', 'd', ''),
        seq: fc.oneof(fc.nat({ max: 4 }), fc.nat({ max: 0xffffffff })),
        total: fc.oneof(fc.nat({ max: 6 }), fc.nat({ max: 0xffffffff })),
        totalBytes: fc.oneof(fc.nat({ max: 600 }), fc.maxSafeNat()),
        data: fc.uint8Array({ maxLength: 200 }),
      })
      .map((chunk) => encodeEnvelope({ chunk })),
  },
  // A well-formed first chunk of a multi-chunk stream: enough of them open more streams than the cap allows.
  {
    weight: 3,
    arbitrary: fc
      .record({ streamId: fc.constantFrom('a', 'b', 'c', 'd', ''), total: fc.integer({ min: 2, max: 6 }), extra: fc.nat({ max: 500 }), data: fc.uint8Array({ minLength: 6, maxLength: 12 }) })
      .map(({ streamId, total, extra, data }) => encodeEnvelope({ chunk: { streamId, seq: 0, total, totalBytes: total + extra + data.byteLength, data } })),
  },
  // A chunk whose payload is itself a chunk: nesting is refused once reassembled.
  { weight: 1, arbitrary: fc.constantFrom('a', 'b').map((id) => {
    const inner = encodeEnvelope({ chunk: { streamId: 'n', seq: 0, total: 1, totalBytes: 1, data: new Uint8Array(1) } });
    return encodeEnvelope({ chunk: { streamId: id, seq: 0, total: 1, totalBytes: inner.byteLength, data: inner } });
  }) },
  { weight: 1, arbitrary: fc.nat({ max: 40 }).map((n) => message(n, 'whole')) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 40 }) },
);

test('any frame sequence: outcomes follow the framing rules and the buffer never exceeds the caps', () => {
  const seen = new Set<string>();
  fc.assert(
    fc.property(fc.array(hostileFrame, { maxLength: 60 }), (frames) => {
      const r = new Reassembler(limits);
      // The same frames into a shared reassembly buffer, as the coordinator's channels do: the same outcomes, and the
      // buffer is never left lent (a refused message gives it back).
      const shared = new ReassemblyBuffer();
      const rs = new Reassembler(limits, shared);
      const spec = new FramingSpec(limits);
      for (const f of frames) {
        const want = spec.expect(f);
        const got = accept(r, f);
        assert.deepEqual(got, want);
        assert.deepEqual(accept(rs, f), want);
        assert.equal(shared.isLent, false);
        seen.add(got.kind === 'error' ? ErrorCode[got.code]! : got.kind);
        // Growth doubles at most, never past a stream's declared size, and never past the per-peer cap.
        assert.ok(r.bufferedBytes <= 2 * spec.heldBytes, `${r.bufferedBytes} bytes buffered for ${spec.heldBytes} received`);
        assert.ok(r.bufferedBytes <= limits.maxOpenStreams * limits.maxMessageBytes);
      }
      r.clear();
      assert.equal(r.bufferedBytes, 0);
    }),
    budget(3000),
  );
  // A generator that never reached a path would prove nothing about it.
  assert.deepEqual([...seen].sort(), ['MALFORMED_MESSAGE', 'MESSAGE_TOO_LARGE', 'RATE_LIMITED', 'message', 'pending']);
});

test('an endless stream is cut off at its declared size and never buffers more than the cap', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: limits.maxMessageBytes }), fc.integer({ min: limits.minChunkBytes!, max: 64 }), fc.string({ maxLength: 8 }), (declared, per, id) => {
      const r = new Reassembler(limits);
      // More chunks announced than bytes (a stream that could never end): refused at its first frame.
      const endless = accept(r, encodeEnvelope({ chunk: { streamId: id, seq: 0, total: 0xffffffff, totalBytes: declared, data: new Uint8Array(per) } }));
      assert.deepEqual(endless, { kind: 'error', code: ErrorCode.MALFORMED_MESSAGE });
      // An honest-looking header whose data never stops: the frame that crosses the declared size is refused.
      const chunks = Math.ceil(declared / limits.minChunkBytes!);
      let sent = 0;
      for (let seq = 0; ; seq++) {
        const out = accept(r, encodeEnvelope({ chunk: { streamId: id, seq, total: chunks, totalBytes: declared, data: new Uint8Array(per).fill(7) } }));
        sent += per;
        assert.ok(r.bufferedBytes <= declared, `${r.bufferedBytes} bytes buffered, ${declared} declared`);
        if (out.kind === 'error') {
          assert.ok(sent > declared || seq + 1 >= chunks, `refused at ${sent} of ${declared} bytes`);
          assert.ok(out.code === ErrorCode.MESSAGE_TOO_LARGE || out.code === ErrorCode.MALFORMED_MESSAGE);
          break;
        }
        assert.equal(out.kind, 'pending', 'filler bytes never decode as a message before the declared end');
        assert.ok(seq < chunks, 'the stream ends by its declared chunk count at the latest');
      }
      assert.equal(r.bufferedBytes, 0, 'a refused stream is forgotten');
    }),
    budget(500),
  );
});

test('honest messages, chunked and interleaved in any order across streams, reassemble byte for byte', () => {
  fc.assert(
    fc.property(
      fc.array(fc.nat({ max: limits.maxMessageBytes - 40 }), { minLength: 1, maxLength: limits.maxOpenStreams }),
      fc.array(fc.nat(), { maxLength: 200 }),
      (sizes, picks) => {
        const messages = sizes.map((n, i) => message(n, `m${i}`));
        const queues = messages.map((m, i) => frameMessage(m, `stream-${i}`, limits));
        const r = new Reassembler(limits);
        const got = new Map<number, Uint8Array>();
        let p = 0;
        while (queues.some((q) => q.length > 0)) {
          const live = queues.map((q, i) => (q.length > 0 ? i : -1)).filter((i) => i >= 0);
          const i = live[(picks[p++] ?? 0) % live.length]!;
          const env = r.accept(queues[i]!.shift()!);
          assert.ok(r.bufferedBytes <= limits.maxOpenStreams * limits.maxMessageBytes);
          if (env) {
            assert.equal(queues[i]!.length, 0, 'a message completes with its last frame only');
            got.set(i, encodeEnvelope(env));
          }
        }
        assert.equal(got.size, messages.length);
        for (const [i, m] of messages.entries()) assert.deepEqual(got.get(i), m);
        assert.equal(r.bufferedBytes, 0);
      },
    ),
    budget(1500),
  );
});
