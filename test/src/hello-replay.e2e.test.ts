import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { decodeEnvelope, ErrorCode, errorCodeName, issuedSecretKey, WIRE_EVENT } from '@fedunlearn/protocol';
import { RawPeer, rawHello } from './raw-peer.js';
import { tempDir, waitUntil } from './support.js';

// Issue 12 section 2: a captured hello cannot be replayed. Challenge-response authentication over real sockets: the
// secret never crosses the wire, a captured exchange replayed on another connection is refused without touching the
// real client's session, and a second session proven by the real secret displaces the first with SESSION_REPLACED,
// which the SDK surfaces as an event and does not answer by reconnecting.

const WAIT_MS = 15_000;
const tmp = tempDir('hello-replay');
const model = builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 1 });
let coordinator: Coordinator;
let url: string;
const peers: RawPeer[] = [];
const clients: FederatedClient[] = [];

function tinyDataset(count = 8): LocalDataset {
  return { x: new Float32Array(count * 784).fill(0.5), y: Int32Array.from({ length: count }, (_, i) => i % 10), inputShape: [784], numClasses: 10, count };
}

function track<T extends RawPeer>(p: T): T {
  peers.push(p);
  return p;
}

/** Whether `needle` occurs anywhere in `hay`. */
function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  return Buffer.from(hay.buffer, hay.byteOffset, hay.byteLength).indexOf(Buffer.from(needle)) >= 0;
}

before(async () => {
  coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model,
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
    // Both kinds of credential: issued ones (sha256 key) and ids that enrol with a secret they chose (scrypt key).
    enrolment: 'open',
    logger: createLogger({ level: 'silent' }),
  });
  ({ url } = await coordinator.listen(0));
});

after(async () => {
  for (const p of peers) p.close();
  await Promise.all(clients.map((c) => c.close()));
  await coordinator.stop();
  tmp.cleanup();
});

for (const kind of ['issued', 'enrolled'] as const) {
  test(`a captured hello and proof (${kind} credential) replayed on another connection are refused, the real session stays, and the secret is never on the wire`, async () => {
    const id = `device-${kind}`;
    const secret = kind === 'issued' ? (await coordinator.issueClient(id)).secret : 'a-secret-this-device-chose';
    const real = track(await RawPeer.enrolled(url, id, secret));
    const session = coordinator.registry.get(id);
    assert.ok(session, 'the real client has a session');

    // What an eavesdropper saw: every frame of the exchange, both ways.
    const sent = real.wire.out.map((f) => decodeEnvelope(f).body);
    assert.deepEqual(sent, ['hello', 'helloProof'], 'the client sent a hello and one proof');
    const received = real.wire.in.map((f) => decodeEnvelope(f).body);
    assert.deepEqual(received, ['challenge', 'welcome']);
    const secretBytes = new TextEncoder().encode(secret);
    for (const f of [...real.wire.out, ...real.wire.in]) {
      assert.ok(!contains(f, secretBytes), 'the secret is not in any frame');
      if (kind === 'issued') assert.ok(!contains(f, issuedSecretKey(secret)), 'nor the key the coordinator stores for it');
    }

    // The replay: the same frames, byte for byte, from another connection.
    const attacker = track(await RawPeer.connect(url));
    attacker.sendRaw(real.wire.out[0]);
    const challenge = await attacker.next('challenge');
    assert.notDeepEqual(Buffer.from(challenge.challenge!.nonce!), Buffer.from(decodeEnvelope(real.wire.in[0]!).challenge!.nonce!), 'a fresh nonce');
    attacker.sendRaw(real.wire.out[1]);
    const refusal = await attacker.expectError(ErrorCode.UNAUTHENTICATED);
    assert.match(refusal.message, /wrong credentials/);
    await attacker.disconnected();
    assert.ok(!attacker.queued.includes('welcome'));
    // The real client was not pushed out, and its session still works.
    assert.equal(coordinator.registry.get(id), session, 'the real session is still the registered one');
    assert.ok(!real.closed);
    real.send({ heartbeat: { sentUnixMs: Date.now() } });
    real.send({ update: { taskId: 'no-such-task', numExamples: 1 } });
    await real.expectError(ErrorCode.UNKNOWN_TASK, 'no-such-task');

    // The proof cannot be spent twice on its own connection either: inside a session it is just a refused message.
    real.sendRaw(real.wire.out[1]);
    await real.expectError(ErrorCode.MALFORMED_MESSAGE);
    assert.equal(coordinator.registry.get(id), session);
  });
}

test('a protocol 1 hello (secret inside) is refused with PROTOCOL_VERSION and says why; a protocol 2 hello carrying a secret is refused too', async () => {
  const { secret } = await coordinator.issueClient('device-old');
  const old = track(await RawPeer.connect(url));
  old.send({ hello: { ...rawHello('device-old'), secret, protocolVersion: 1 } });
  const e = await old.expectError(ErrorCode.PROTOCOL_VERSION);
  assert.match(e.message, /protocol 1 sent the secret in the hello/);
  assert.match(e.message, /speaks 2/);
  await old.disconnected();

  const leaky = track(await RawPeer.connect(url));
  leaky.send({ hello: { ...rawHello('device-old'), secret } });
  const e2 = await leaky.expectError(ErrorCode.INVALID_ARGUMENT);
  assert.match(e2.message, /must not carry the secret/);
  assert.equal(coordinator.registry.get('device-old'), undefined);
});

test('a message other than the proof after the challenge, and a proof before it, close the connection without a session', async () => {
  const { secret } = await coordinator.issueClient('device-hasty');
  const early = track(await RawPeer.connect(url));
  early.sendRaw(new Uint8Array(0));
  early.send({ helloProof: { proof: new Uint8Array(32) } });
  await early.expectError(ErrorCode.MALFORMED_MESSAGE);
  assert.equal(await early.outcome(), 'UNAUTHENTICATED', 'a proof is not a hello');

  const wrongStep = track(await RawPeer.connect(url));
  wrongStep.send({ hello: rawHello('device-hasty') });
  await wrongStep.next('challenge');
  wrongStep.send({ forgetRequest: { requestId: 'r', reason: '' } });
  const e = await wrongStep.expectError(ErrorCode.UNAUTHENTICATED);
  assert.match(e.message, /expected helloProof/);
  await wrongStep.disconnected();
  assert.equal(coordinator.registry.get('device-hasty'), undefined);
  assert.equal((await coordinator.store.listJobs()).length, 0);
  // The credential itself is fine.
  track(await RawPeer.enrolled(url, 'device-hasty', secret));
});

test('a second session proven with the real secret displaces the first, which is told SESSION_REPLACED; the SDK emits it and does not reconnect', async () => {
  const { secret } = await coordinator.issueClient('device-twice');
  const first = new FederatedClient({ url, clientId: 'device-twice', secret, data: tinyDataset(), backends: ['cpu'], reconnect: { delayMs: 50, maxDelayMs: 100 } });
  clients.push(first);
  // Everything the SDK put on the wire, as the coordinator received it.
  const fromSdk: Uint8Array[] = [];
  coordinator.transport.io.on('connection', (s) =>
    s.on(WIRE_EVENT, (f: unknown) => {
      if (f instanceof Uint8Array) fromSdk.push(new Uint8Array(f));
    }),
  );
  const displaced: { code: string; message: string }[] = [];
  let reconnects = 0;
  first.on('displaced', (d) => displaced.push(d));
  first.on('reconnecting', () => reconnects++);
  await first.connect(WAIT_MS);
  const firstSession = coordinator.registry.get('device-twice')!;
  assert.equal(firstSession.sessionId, first.sessionId);
  assert.ok(fromSdk.length >= 2, 'the SDK sent its hello and proof');
  const secretBytes = new TextEncoder().encode(secret);
  for (const f of fromSdk) assert.ok(!contains(f, secretBytes), 'the SDK never sends the secret');

  // The same device again (a restarted process, a half-open connection): it proves the secret and takes over.
  const second = track(await RawPeer.enrolled(url, 'device-twice', secret));
  await waitUntil(() => displaced.length === 1, WAIT_MS, "the first SDK's displaced event");
  assert.equal(displaced[0]!.code, errorCodeName(ErrorCode.SESSION_REPLACED));
  assert.match(displaced[0]!.message, /another connection proved the credential/);
  const now = coordinator.registry.get('device-twice')!;
  assert.notEqual(now, firstSession);
  assert.ok(!second.closed);
  // socket.io schedules no reconnection after the server closed the socket, and the SDK adds none on this code.
  await waitUntil(() => !(first as unknown as { socket: { connected: boolean } }).socket.connected, WAIT_MS, 'the first SDK disconnected');
  assert.equal((first as unknown as { socket: { active: boolean } }).socket.active, false, 'no reconnection is scheduled');
  assert.equal(reconnects, 0);
  assert.equal(coordinator.registry.get('device-twice'), now, 'the newer session stays');

  // The documented way back: connect() again, which displaces the raw peer in turn.
  await first.connect(WAIT_MS);
  assert.equal(coordinator.registry.get('device-twice')!.sessionId, first.sessionId);
  const e = await second.expectError(ErrorCode.SESSION_REPLACED);
  assert.match(e.message, /is closed/);
  await second.disconnected();
});
