import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { DEFAULT_FRAMING, encodeEnvelope, ErrorCode, socketBufferBytes } from '@fedunlearn/protocol';
import { RawPeer } from './raw-peer.js';
import { tempDir, waitUntil } from './support.js';

// Issue 12 section 6 over real sockets: everything a peer can hold on the coordinator is bounded, timed out and
// counted. The cases seen: 4 chunk streams of 65,535 one-byte chunks held +33 MB for as long as the socket stayed
// open; one unchunked 614 KB frame closed the connection with no error and no count.

const WAIT_MS = 15_000;
const IDLE_MS = 400;
const tmp = tempDir('peer-bounds');
let coordinator: Coordinator;
let url: string;
const peers: RawPeer[] = [];

before(async () => {
  coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 1 }),
    federation: {
      clientsPerRound: 2,
      minClients: 2,
      roundDeadlineMs: 20_000,
      seed: 1,
      hyper: { learningRate: 0.1, batchSize: 8, localEpochs: 1 },
      maxRoundAttempts: 1,
      waitForClientsMs: 10_000,
    },
    historyInterval: 1,
    enrolment: 'open',
    // The default framing, with a short stream idle timeout so that the test sees it pass.
    framing: { ...DEFAULT_FRAMING, streamIdleTimeoutMs: IDLE_MS },
    limits: { connectionsPerAddress: 6 },
    logger: createLogger({ level: 'silent' }),
  });
  ({ url } = await coordinator.listen(0));
});

after(async () => {
  for (const p of peers) p.close();
  await coordinator.stop();
  tmp.cleanup();
});

async function enrolled(id: string): Promise<RawPeer> {
  const { peer, answer } = await RawPeer.introduce(url, id, `secret-of-${id}`);
  peers.push(peer);
  assert.equal(answer.body, 'welcome', answer.error?.message ?? '');
  return Object.assign(peer, { welcome: answer.welcome! });
}

async function scrape(): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

function sample(text: string, name: string, label: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${label}}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

test('the welcome advertises the frame limit, the minimum chunk and the stream idle timeout', async () => {
  const peer = (await enrolled('adv')) as RawPeer & { welcome: { maxFrameBytes: unknown; minChunkBytes: number; streamIdleTimeoutMs: number; chunkBytes: number } };
  assert.equal(Number(peer.welcome.maxFrameBytes), socketBufferBytes(DEFAULT_FRAMING.chunkBytes));
  assert.equal(Number(peer.welcome.maxFrameBytes), 576 * 1024);
  assert.equal(peer.welcome.minChunkBytes, 16 * 1024);
  assert.equal(peer.welcome.streamIdleTimeoutMs, IDLE_MS);
});

test('one unchunked 614 KB frame is refused with MESSAGE_TOO_LARGE and the limit, counted, and the connection stays', async () => {
  const peer = await enrolled('big-frame');
  const before = sample(await scrape(), 'fedunlearn_refused_total', 'reason="MESSAGE_TOO_LARGE"');
  const frame = encodeEnvelope({ forgetRequest: { requestId: 'big', reason: 'x'.repeat(614_000) } });
  assert.ok(frame.byteLength > 576 * 1024);
  peer.sendRaw(frame);
  const e = await peer.expectError(ErrorCode.MESSAGE_TOO_LARGE);
  assert.match(e.message, new RegExp(`exceeds the ${576 * 1024}-byte frame limit`));
  assert.equal((await coordinator.store.listJobs()).length, 0, 'the refused frame did nothing');
  // Still a session: it is answered, not disconnected.
  peer.send({ update: { taskId: 'after-the-big-frame', numExamples: 1 } });
  await peer.expectError(ErrorCode.UNKNOWN_TASK, 'after-the-big-frame');
  assert.equal(peer.disconnectReason, null);
  assert.equal(sample(await scrape(), 'fedunlearn_refused_total', 'reason="MESSAGE_TOO_LARGE"'), before + 1);
});

test('a frame too large for the transport to read closes the connection, and is counted as FRAME_TOO_LARGE', async () => {
  const peer = await enrolled('huge-frame');
  peer.sendRaw(new Uint8Array(5 * 1024 * 1024));
  await peer.disconnected();
  await waitUntil(() => (coordinator.transport.counters.refused.FRAME_TOO_LARGE ?? 0) === 1, WAIT_MS, 'FRAME_TOO_LARGE counted');
  assert.equal(sample(await scrape(), 'fedunlearn_refused_total', 'reason="FRAME_TOO_LARGE"'), 1);
});

test('4 streams of 65,535 one-byte chunks are refused at their first chunk: nothing is held', async () => {
  const peer = await enrolled('tiny-chunks');
  for (let s = 0; s < 4; s++) {
    const id = `tiny-${s}`;
    peer.sendRaw(encodeEnvelope({ chunk: { streamId: id, seq: 0, total: 65_535, totalBytes: 65_535, data: new Uint8Array(1) } }));
    const e = await peer.expectError(ErrorCode.MALFORMED_MESSAGE, id);
    assert.match(e.message, /chunks but the last must hold at least 16384 bytes/);
    // The following one-byte chunks of a refused stream are refused too, one by one, and buffer nothing.
    peer.sendRaw(encodeEnvelope({ chunk: { streamId: id, seq: 1, total: 65_535, totalBytes: 65_535, data: new Uint8Array(1) } }));
    await peer.expectError(ErrorCode.MALFORMED_MESSAGE, id);
  }
  const held = coordinator.transport.held();
  assert.equal(held.partialStreams, 0);
  assert.equal(held.partialStreamBytes, 0);
  assert.equal(peer.disconnectReason, null);
});

test('a stream that stops arriving is dropped after the idle timeout with STREAM_TIMEOUT; its bytes are freed and counted', async () => {
  const peer = await enrolled('stalled');
  // A well-formed 64 KiB message in four 16 KiB chunks, of which only two ever come.
  for (const seq of [0, 1]) peer.sendRaw(encodeEnvelope({ chunk: { streamId: 'stalled', seq, total: 4, totalBytes: 64 * 1024, data: new Uint8Array(16 * 1024) } }));
  await waitUntil(() => coordinator.transport.held().partialStreamBytes === 32 * 1024, WAIT_MS, 'the two chunks held');
  const m = await scrape();
  assert.equal(sample(m, 'fedunlearn_peer_resources', 'resource="partial_stream_bytes"'), 32 * 1024);
  assert.equal(sample(m, 'fedunlearn_peer_resources', 'resource="partial_streams"'), 1);
  const e = await peer.expectError(ErrorCode.STREAM_TIMEOUT, 'stalled');
  assert.match(e.message, new RegExp(`received nothing for ${IDLE_MS} ms`));
  assert.equal(coordinator.transport.held().partialStreams, 0);
  assert.equal(coordinator.transport.held().partialStreamBytes, 0);
  assert.equal(sample(await scrape(), 'fedunlearn_refused_total', 'reason="STREAM_TIMEOUT"'), 1);
  // The connection itself is fine.
  peer.send({ update: { taskId: 'after-the-stall', numExamples: 1 } });
  await peer.expectError(ErrorCode.UNKNOWN_TASK, 'after-the-stall');
});

test('open connections per address are bounded: the one over the limit is refused with RATE_LIMITED and counted', async () => {
  // Earlier tests left some peers open (one was closed by its huge frame); fill up to the limit of 6 from 127.0.0.1.
  const open = () => coordinator.transport.held().openConnections;
  const extra: RawPeer[] = [];
  while (open() < 6) {
    const p = await RawPeer.connect(url);
    peers.push(p);
    extra.push(p);
    await waitUntil(() => open() >= peers.filter((x) => !x.closed).length, WAIT_MS, 'the connection registered');
  }
  const over = await RawPeer.connect(url);
  peers.push(over);
  const e = await over.expectError(ErrorCode.RATE_LIMITED);
  assert.match(e.message, /more than 6 open connections from this address/);
  await over.disconnected();
  assert.equal(coordinator.transport.counters.refused.TOO_MANY_CONNECTIONS, 1);
  assert.equal(sample(await scrape(), 'fedunlearn_peer_resources', 'resource="open_connections"'), 6);
  // A slot that frees up is usable again.
  extra[0]!.close();
  await waitUntil(() => open() === 5, WAIT_MS, 'a slot freed');
  const again = await RawPeer.connect(url);
  peers.push(again);
  again.hello('per-address', 'secret-of-per-address');
  assert.equal(await again.outcome(), 'welcome');
});
