import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type HistoryStats } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import {
  decodeEnvelope,
  DEFAULT_FRAMING,
  encodeEnvelope,
  encodeTensor,
  ErrorCode,
  fedunlearn,
  layerView,
  layoutOf,
  type WeightLayout,
  type WireTensor,
} from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { RawPeer, rawHello } from './raw-peer.js';
import { waitUntil } from './support.js';

// A real coordinator on a real port, spoken to over real socket.io connections: honest SDK clients next to raw peers
// that send what no SDK would. Every refusal must come back as the right Error code and leave the federation's
// durable state exactly as it was.

const WAIT_MS = 15_000;

/** Seeded, so that every figure a test compares against is recomputed from the seed, never remembered. */
const rng = (seed: number): (() => number) => seedrandom(String(seed));

function syntheticData(seed: number, count = 50): LocalDataset {
  const r = rng(seed);
  const x = new Float32Array(count * 784);
  for (let i = 0; i < x.length; i++) x[i] = r();
  const y = Int32Array.from({ length: count }, (_, i) => i % 10);
  return { x, y, inputShape: [784], numClasses: 10, count };
}

function layoutOfTask(task: fedunlearn.v1.ITask): WeightLayout {
  return layoutOf((task.weights ?? []).map((t) => ({ name: t.name ?? '', shape: (t.shape ?? []).map(Number) })));
}

function deltaTensors(layout: WeightLayout, values: Float32Array): WireTensor[] {
  return layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, values, i)));
}

interface Snapshot {
  head: string;
  round: number;
  stats: HistoryStats;
}

let dir: string;
let coordinator: Coordinator;
let url: string;
const honest: FederatedClient[] = [];
const honestErrors: string[] = [];
const peers: RawPeer[] = [];
let before0: Snapshot;
/** Authenticated raw peers, enrolled by the first tests and used again in the round. */
let rawA: RawPeer | undefined;
let rawB: RawPeer | undefined;

async function snapshot(): Promise<Snapshot> {
  const head = await coordinator.store.head();
  return { head: head.version, round: head.round, stats: (await coordinator.store.stats()) };
}

async function assertUnchanged(since: Snapshot, what: string): Promise<void> {
  assert.deepEqual(await snapshot(), since, `${what} changed the federation's state`);
}

async function peer(p: Promise<RawPeer>): Promise<RawPeer> {
  const x = await p;
  peers.push(x);
  return x;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'fedunlearn-hostile-'));
  coordinator = await Coordinator.create({
    store: openSqliteHistory(dir),
    dataDir: dir,
    model: builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 1 }),
    federation: {
      clientsPerRound: 5,
      minClients: 2,
      roundDeadlineMs: 30_000,
      seed: 11,
      hyper: { learningRate: 0.1, batchSize: 25, localEpochs: 1 },
      // One attempt: a round that misses quorum must fail the test, not quietly retry.
      maxRoundAttempts: 1,
      waitForClientsMs: 5_000,
    },
    // Every round keeps full fp32 updates, so that the committed model can be recomputed from what was accepted.
    historyInterval: 1,
    retention: 'fp32',
    enrolment: 'open',
    logger: createLogger({ level: 'silent' }),
  });
  ({ url } = await coordinator.listen(0));
  for (const i of [1, 2]) {
    const c = new FederatedClient({ url, clientId: `honest-${i}`, secret: `honest-secret-${i}`, data: syntheticData(i), reconnect: { attempts: 0 } });
    c.on('error', (e) => honestErrors.push(`honest-${i}: ${e.message}`));
    c.on('serverError', (e) => honestErrors.push(`honest-${i}: ${e.code} ${e.message}`));
    honest.push(c);
  }
  await Promise.all(honest.map((c) => c.connect()));
  before0 = await snapshot();
  assert.equal(before0.round, 0);
});

after(async () => {
  for (const p of peers) p.close();
  await Promise.all(honest.map((c) => c.close()));
  await coordinator.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('a non-binary payload and random bytes are MALFORMED_MESSAGE, and the connection can still say hello', async () => {
  const p = await peer(RawPeer.connect(url));
  p.sendRaw('not a protobuf envelope');
  await p.expectError(ErrorCode.MALFORMED_MESSAGE);
  p.sendRaw({ hello: { clientId: 'json-client' } });
  await p.expectError(ErrorCode.MALFORMED_MESSAGE);

  const r = rng(99);
  const noise = Uint8Array.from({ length: 64 }, () => Math.floor(r() * 256));
  assert.throws(() => decodeEnvelope(noise), 'precondition: the noise is not a valid envelope');
  p.sendRaw(noise);
  await p.expectError(ErrorCode.MALFORMED_MESSAGE);
  await assertUnchanged(before0, 'malformed payloads');

  // Garbage before the hello is refused frame by frame, not counted as the first message.
  p.hello('raw-a', 'raw-secret-a');
  const w = await p.next('welcome');
  assert.equal(w.welcome!.clientId, 'raw-a');
  assert.deepEqual(p.queued, []);
  rawA = p;
});

test('a first message that is not hello is UNAUTHENTICATED and the connection is closed', async () => {
  const p = await peer(RawPeer.connect(url));
  p.send({ heartbeat: { sentUnixMs: Date.now() } });
  await p.expectError(ErrorCode.UNAUTHENTICATED);
  assert.equal(await p.disconnected(), 'io server disconnect');

  const q = await peer(RawPeer.connect(url));
  q.send({ update: { taskId: 'x', numExamples: 1 } });
  await q.expectError(ErrorCode.UNAUTHENTICATED);
  await q.disconnected();
  await assertUnchanged(before0, 'unauthenticated messages');
});

test('a hello with the wrong secret for an enrolled client is UNAUTHENTICATED and does not displace it', async () => {
  const session = coordinator.registry.get('honest-1');
  assert.ok(session, 'honest-1 is connected');
  const hashBefore = (await coordinator.store.getClient('honest-1'))!.secretHash;
  const p = await peer(RawPeer.connect(url));
  p.hello('honest-1', 'not-the-right-secret');
  await p.expectError(ErrorCode.UNAUTHENTICATED);
  await p.disconnected();
  assert.equal(coordinator.registry.get('honest-1'), session, 'the genuine session is still the registered one');
  assert.equal((await coordinator.store.getClient('honest-1'))!.secretHash, hashBefore);
  await assertUnchanged(before0, 'a forged hello');
});

test('hostile handshake messages: a challenge from a client, a malformed proof, an enrolment without its key, all refused without a session', async () => {
  // A client may not send the coordinator's Challenge, before the hello or after it.
  const a = await peer(RawPeer.connect(url));
  a.send({ challenge: { nonce: new Uint8Array(32), sessionId: 'forged', keyDerivation: 1 } });
  assert.match((await a.expectError(ErrorCode.UNAUTHENTICATED)).message, /first message must be hello/);
  await a.disconnected();
  const b = await peer(RawPeer.connect(url));
  b.send({ hello: rawHello('honest-1') });
  const c = (await b.next('challenge')).challenge!;
  assert.equal(c.nonce!.byteLength, 32);
  b.send({ challenge: { nonce: c.nonce!, sessionId: c.sessionId!, keyDerivation: c.keyDerivation! } });
  assert.match((await b.expectError(ErrorCode.UNAUTHENTICATED)).message, /expected helloProof, got challenge/);
  await b.disconnected();
  // Proofs of the wrong length, empty, or the right length but wrong: UNAUTHENTICATED, the real session untouched.
  // (Three, with the earlier test's wrong one four: under the lockout of five, so honest-1 could still reconnect.)
  const session = coordinator.registry.get('honest-1');
  for (const proof of [new Uint8Array(0), new Uint8Array(4096), new Uint8Array(32).fill(7)]) {
    const p = await peer(RawPeer.connect(url));
    p.send({ hello: rawHello('honest-1') });
    await p.next('challenge');
    p.send({ helloProof: { proof } });
    assert.match((await p.expectError(ErrorCode.UNAUTHENTICATED)).message, /wrong credentials/);
    await p.disconnected();
  }
  assert.equal(coordinator.registry.get('honest-1'), session);
  // Open enrolment of a new id: a proof without the derived key (or with a short one) enrols nothing.
  for (const enrolKey of [new Uint8Array(0), new Uint8Array(16)]) {
    const p = await peer(RawPeer.connect(url));
    p.send({ hello: rawHello('never-enrolled') });
    const ch = (await p.next('challenge')).challenge!;
    assert.equal(ch.enrol, true);
    p.send({ helloProof: { proof: new Uint8Array(32), enrolKey } });
    assert.match((await p.expectError(ErrorCode.UNAUTHENTICATED)).message, /must carry its 32-byte key/);
    await p.disconnected();
  }
  assert.equal((await coordinator.store.getClient('never-enrolled')), null);
  await assertUnchanged(before0, 'hostile handshake messages');
});

test('an update for an unknown task is UNKNOWN_TASK', async () => {
  const p = await peer(RawPeer.enrolled(url, 'raw-b', 'raw-secret-b'));
  p.send({ update: { taskId: 'no-such-task', delta: [], numExamples: 50 } });
  await p.expectError(ErrorCode.UNKNOWN_TASK, 'no-such-task');
  await assertUnchanged(before0, 'an update for an unknown task');
  rawB = p;
});

test('a round refuses bad shapes, NaN, a foreign and a replayed answer, and commits with the valid ones only', async () => {
  assert.ok(rawA && rawB, 'raw-a and raw-b were welcomed by the earlier tests');
  const rawC = await peer(RawPeer.enrolled(url, 'raw-c', 'raw-secret-c'));
  await waitUntil(() => coordinator.registry.size === 5, WAIT_MS, 'five connected clients');
  const base = coordinator.model();

  const roundDone = coordinator.runRounds(1);
  const [taskA, taskB, taskC] = await Promise.all([rawA, rawB, rawC].map(async (p) => (await p.next('task')).task as fedunlearn.v1.Task));
  const layout = layoutOfTask(taskA!);
  assert.equal(layout.totalSize, base.weights.length);

  // A client answering a task given to another is refused, and the task stays open for its owner.
  rawC.send({ update: { taskId: taskA!.taskId, delta: deltaTensors(layout, new Float32Array(layout.totalSize)), numExamples: 50 } });
  await rawC.expectError(ErrorCode.PERMISSION_DENIED, taskA!.taskId);

  // (a) raw-a: the first layer's shape transposed (same number of values).
  const zeros = new Float32Array(layout.totalSize);
  const wrong = deltaTensors(layout, zeros);
  const first = layout.specs[0]!;
  assert.ok(first.shape.length === 2 && first.shape[0] !== first.shape[1]);
  wrong[0] = { ...wrong[0]!, shape: [first.shape[1]!, first.shape[0]!] };
  rawA.send({ update: { taskId: taskA!.taskId, delta: wrong, numExamples: 50 } });
  await rawA.expectError(ErrorCode.SHAPE_MISMATCH, taskA!.taskId);
  // A corrected retry cannot reopen a task that was refused.
  rawA.send({ update: { taskId: taskA!.taskId, delta: deltaTensors(layout, zeros), numExamples: 50 } });
  await rawA.expectError(ErrorCode.STALE_TASK, taskA!.taskId);

  // (b) raw-b: the right shapes with one NaN deep inside.
  const poisoned = new Float32Array(layout.totalSize);
  poisoned[layout.offsets[1]! + 3] = NaN;
  rawB.send({ update: { taskId: taskB!.taskId, delta: deltaTensors(layout, poisoned), numExamples: 50 } });
  await rawB.expectError(ErrorCode.NON_FINITE_VALUES, taskB!.taskId);

  // (c) raw-c: a valid answer, then the same answer replayed: refused, and counted once.
  const r = rng(5);
  const deltaC = Float32Array.from({ length: layout.totalSize }, () => (r() * 2 - 1) * 1e-3);
  const answerC = encodeEnvelope({ update: { taskId: taskC!.taskId, delta: deltaTensors(layout, deltaC), numExamples: 50, metrics: { loss: 1 } } });
  rawC.sendRaw(answerC);
  rawC.sendRaw(answerC);
  await rawC.expectError(ErrorCode.STALE_TASK, taskC!.taskId);

  const [outcome] = await roundDone;
  assert.ok(outcome);
  const expected = ['honest-1', 'honest-2', 'raw-c'];
  assert.deepEqual([...outcome.participants].sort(), expected);
  const missing = new Map(outcome.missing.map((m) => [m.clientId, m.reason]));
  assert.deepEqual([...missing.entries()].sort(), [['raw-a', 'rejected'], ['raw-b', 'rejected']]);

  const record = await coordinator.store.getRound(1);
  assert.ok(record, 'round 1 is committed');
  assert.deepEqual(record.participants.map((p) => p.clientId).sort(), expected);
  assert.equal((await coordinator.store.head()).round, 1);
  assert.deepEqual(honestErrors, []);

  // The committed model is the example-weighted mean of exactly the accepted updates, recomputed here in float64.
  const storedC = await coordinator.store.readUpdate(record.roundId, 'raw-c');
  assert.deepEqual(storedC, deltaC, "raw-c's update is stored exactly as sent");
  const total = record.participants.reduce((s, p) => s + p.numExamples, 0);
  const want = Float64Array.from(base.weights);
  for (const p of record.participants) {
    const u = await coordinator.store.readUpdate(record.roundId, p.clientId);
    assert.ok(u, `update of ${p.clientId} is stored`);
    for (let i = 0; i < want.length; i++) want[i]! += (p.numExamples / total) * u[i]!;
  }
  const got = await coordinator.store.readModel((await coordinator.store.head()).version);
  let worst = 0;
  for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  assert.ok(worst <= 1e-5, `committed model differs from the recomputed aggregate by ${worst}`);
  assert.deepEqual(coordinator.model().weights, got);
});

test('a chunk stream declared over the cap is MESSAGE_TOO_LARGE and the connection survives', async () => {
  const since = await snapshot();
  assert.equal(since.round, 1);
  const p = await peer(RawPeer.enrolled(url, 'raw-d', 'raw-secret-d'));
  const cap = DEFAULT_FRAMING.maxMessageBytes;
  p.sendRaw(encodeEnvelope({ chunk: { streamId: 'big', seq: 0, total: 1000, totalBytes: cap + 1, data: new Uint8Array(1024) } }));
  await p.expectError(ErrorCode.MESSAGE_TOO_LARGE, 'big');
  // The same session still works: it is answered, not disconnected.
  p.send({ update: { taskId: 'after-the-big-one', numExamples: 50 } });
  await p.expectError(ErrorCode.UNKNOWN_TASK, 'after-the-big-one');
  assert.equal(p.disconnectReason, null);
  assert.ok(coordinator.registry.get('raw-d'));
  await assertUnchanged(since, 'an oversized message');
});

test('NaN and ±Inf past each internal step of the check, deep in the full-size first layer, are refused; the round commits without them', async () => {
  // The MLP's first kernel holds 784 x 128 = 100,352 values: more than the 16,384 values the decoder copies and
  // checks per step. A check that stopped after any step would let one of these through.
  const since = await snapshot();
  // Only the honest clients and the three poisoners are connected, so that the round asks all five.
  for (const p of peers.splice(0)) p.close();
  await waitUntil(() => coordinator.registry.size === 2, WAIT_MS, 'the earlier raw peers to leave');
  const layout = (await coordinator.store.meta()).layout;
  const first = layout.sizes[0]!;
  assert.equal(first, 100_352);
  const poison: [string, number, number][] = [
    ['raw-step1', 16_384, NaN],
    ['raw-step4', 65_536, Infinity],
    ['raw-last', first - 1, -Infinity],
  ];
  const poisoners = await Promise.all(poison.map(([id]) => peer(RawPeer.enrolled(url, id, `${id}-secret`))));
  await waitUntil(() => coordinator.registry.size === 5, WAIT_MS, 'five connected clients');
  const roundDone = coordinator.runRounds(1);
  // Awaited below; until then a failed commit (a NaN that got into the sum) must fail this test, not the process.
  roundDone.catch(() => undefined);
  await Promise.all(
    poisoners.map(async (p, i) => {
      const task = (await p.next('task')).task as fedunlearn.v1.Task;
      const [, at, bad] = poison[i]!;
      const delta = new Float32Array(layoutOfTask(task).totalSize);
      delta[layout.offsets[0]! + at] = bad;
      p.send({ update: { taskId: task.taskId, delta: deltaTensors(layout, delta), numExamples: 50 } });
      const e = await p.expectError(ErrorCode.NON_FINITE_VALUES, task.taskId);
      assert.match(e.message ?? '', new RegExp(`index ${at}$`), `${poison[i]![0]}: ${e.message}`);
    }),
  );
  const [outcome] = await roundDone;
  assert.ok(outcome);
  assert.deepEqual([...outcome.participants].sort(), ['honest-1', 'honest-2']);
  assert.deepEqual(outcome.missing.map((m) => [m.clientId, m.reason]).sort(), poison.map(([id]) => [id, 'rejected']).sort());
  assert.equal((await coordinator.store.head()).round, since.round + 1);
  const record = (await coordinator.store.getRound(since.round + 1))!;
  assert.deepEqual(record.participants.map((p) => p.clientId).sort(), ['honest-1', 'honest-2']);
  const model = await coordinator.store.readModel((await coordinator.store.head()).version);
  assert.ok(model.every((v) => Number.isFinite(v)), 'the committed model is finite');
});
