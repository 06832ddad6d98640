import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Channel } from './channel.js';
import type { FramingLimits } from './chunking.js';
import { WIRE_EVENT } from './constants.js';
import { encodeEnvelope } from './envelope.js';
import { ErrorCode, errorCodeName, ProtocolError } from './errors.js';
import type { fedunlearn } from './gen/proto.js';
import { MemorySocket, socketPair } from './memory-socket.test-support.js';

// The protocol package does not depend on socket.io, so these tests join two channels with an in-memory socket pair
// that, like socket.io, delivers each emit asynchronously and in order. The e2e suite (test/) runs the same Channel
// over real socket.io connections.

const pair = socketPair;

const limits: FramingLimits = { chunkBytes: 64, maxMessageBytes: 4096, maxOpenStreams: 2 };

interface End {
  socket: MemorySocket;
  channel: Channel;
  received: fedunlearn.v1.Envelope[];
  refused: ProtocolError[];
}

function end(socket: MemorySocket): End {
  const received: fedunlearn.v1.Envelope[] = [];
  const refused: ProtocolError[] = [];
  const channel = new Channel(socket, { message: (e) => received.push(e), protocolError: (e) => refused.push(e) }, limits);
  return { socket, channel, received, refused };
}

function connected(): [End, End] {
  const [a, b] = pair();
  return [end(a), end(b)];
}

const settle = () => new Promise<void>((r) => setImmediate(r));

test('a message larger than a chunk arrives whole, and both sides count the same bytes', async () => {
  const [a, b] = connected();
  const reason = 'r'.repeat(500);
  const n = a.channel.send({ forgetRequest: { requestId: 'q1', reason } });
  assert.ok(a.socket.sent.length > 1, 'sent as several chunks');
  await settle();
  assert.equal(b.received.length, 1);
  assert.equal(b.received[0]!.forgetRequest!.reason, reason);
  assert.equal(b.channel.lastMessageBytes, n);
  assert.deepEqual(a.channel.stats, { bytesIn: 0, bytesOut: n, messagesIn: 0, messagesOut: 1 });
  assert.deepEqual(b.channel.stats, { bytesIn: n, bytesOut: 0, messagesIn: 1, messagesOut: 0 });
});

test('a non-binary or undecodable frame never reaches the handler and is answered with MALFORMED_MESSAGE', async () => {
  const [a, b] = connected();
  a.socket.emit(WIRE_EVENT, 'text');
  a.socket.emit(WIRE_EVENT, { json: true });
  a.socket.emit(WIRE_EVENT, new Uint8Array([0xff, 0xff, 0xff]));
  await settle();
  assert.equal(b.received.length, 0);
  assert.deepEqual(b.refused.map((e) => e.codeName), ['MALFORMED_MESSAGE', 'MALFORMED_MESSAGE', 'MALFORMED_MESSAGE']);
  assert.deepEqual(a.received.map((e) => errorCodeName(e.error!.code!)), ['MALFORMED_MESSAGE', 'MALFORMED_MESSAGE', 'MALFORMED_MESSAGE']);
  // The channel still works afterwards.
  a.channel.send({ heartbeat: { sentUnixMs: 1 } });
  await settle();
  assert.equal(b.received.length, 1);
});

test('an ArrayBuffer frame (what browsers receive) is accepted like a Buffer', async () => {
  const [a, b] = connected();
  const bytes = encodeEnvelope({ heartbeat: { sentUnixMs: 42 } });
  a.socket.emit(WIRE_EVENT, bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  await settle();
  assert.equal(b.received.length, 1);
  assert.equal(Number(b.received[0]!.heartbeat!.sentUnixMs), 42);
});

test('a stream declared over the receiver cap is answered MESSAGE_TOO_LARGE with the stream as ref', async () => {
  const [a, b] = connected();
  a.socket.emit(WIRE_EVENT, encodeEnvelope({ chunk: { streamId: 'huge', seq: 0, total: 3, totalBytes: limits.maxMessageBytes + 1, data: new Uint8Array(8) } }));
  await settle();
  assert.equal(b.received.length, 0);
  const err = a.received[0]!.error!;
  assert.equal(errorCodeName(err.code!), 'MESSAGE_TOO_LARGE');
  assert.equal(err.ref, 'huge');
});

test('send refuses a message over the cap and puts nothing on the wire', () => {
  const [a] = connected();
  assert.throws(
    () => a.channel.send({ forgetRequest: { requestId: 'q', reason: 'x'.repeat(limits.maxMessageBytes) } }),
    (e: unknown) => e instanceof ProtocolError && e.code === ErrorCode.MESSAGE_TOO_LARGE,
  );
  assert.equal(a.socket.sent.length, 0);
  assert.equal(a.channel.stats.messagesOut, 0);
});

test('a closed channel stops listening and drops its partial streams', async () => {
  const [a, b] = connected();
  b.channel.close();
  a.channel.send({ heartbeat: { sentUnixMs: 1 } });
  await settle();
  assert.equal(b.received.length, 0);
  assert.equal(b.socket.listenerCount(WIRE_EVENT), 0);
});
