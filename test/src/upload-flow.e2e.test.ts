import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FederatedClient } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type HistoryStore } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { DEFAULT_FRAMING, encodeEnvelope, encodeTensor, ErrorCode, fedunlearn, layerView, layoutOf, type WeightLayout } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { tinyDataset } from './load/tiny-data.js';
import type { FleetReply, FleetSpec, FleetStats } from './load/messages.js';
import { RawPeer } from './raw-peer.js';
import { tempDir, waitUntil } from './support.js';

// Upload flow control (UploadRequest / UploadGrant) with a real coordinator on a real port: real SDK clients in a
// child process answering a ~1 MB model at about the same time, and raw peers sending what no SDK would.

const WAIT_MS = 20_000;
/** 2,000 inputs: a 264,514-parameter MLP, so an update (about 1.06 MB) travels as three 512 KB chunks. */
const FEATURES = 2000;
const FLEET = fileURLToPath(new URL('./load/fleet.js', import.meta.url));
const children = new Set<ChildProcess>();
const cleanups: (() => void)[] = [];

after(() => {
  for (const p of children) p.kill('SIGKILL');
  for (const c of cleanups) c();
});

const def = builtInDefinition('mlp', { inputShape: [FEATURES], numClasses: 2, seed: 1 });
/** The encoded size of an update of this model (what a client announces in its UploadRequest). */
const UPDATE_BYTES = encodeEnvelope({
  update: { taskId: 'x'.repeat(21), delta: deltaTensors(def.initial.layout, new Float32Array(def.initial.layout.totalSize)), numExamples: 4 },
}).byteLength;

function deltaTensors(layout: WeightLayout, values: Float32Array) {
  return layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, values, i)));
}

/**
 * The real SQLite store on a disk slower than the network: each staging write takes `ms` longer, as on a network
 * volume. Everything else is the store itself. The flow control must hold when the disk, not the clients, is the
 * slow part: that is when answers would otherwise pile up in the coordinator's memory.
 */
function onSlowDisk(store: HistoryStore, ms: number): HistoryStore {
  return new Proxy(store, {
    get(target, key) {
      if (key === 'stageUpdate') {
        return async (roundId: string, clientId: string, update: Float32Array) => {
          // The update is encoded (held) by stageUpdate's first step; the slow part is the write.
          const written = target.stageUpdate(roundId, clientId, update);
          await new Promise((r) => setTimeout(r, ms));
          await written;
        };
      }
      const v = Reflect.get(target, key, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

async function start(uploads: { windowBytes?: number; grantAboveBytes?: number; uploadTimeoutMs?: number }, clients: number, stageDelayMs = 0, minClients = clients) {
  const { dir, cleanup } = tempDir('upload-flow');
  cleanups.push(cleanup);
  const store = openSqliteHistory(dir);
  const coordinator = await Coordinator.create({
    store: stageDelayMs > 0 ? onSlowDisk(store, stageDelayMs) : store,
    dataDir: dir,
    model: def,
    federation: {
      clientsPerRound: clients,
      minClients,
      roundDeadlineMs: 60_000,
      seed: 3,
      hyper: { learningRate: 0.1, batchSize: 4, localEpochs: 1 },
      maxRoundAttempts: 1,
      waitForClientsMs: WAIT_MS,
    },
    historyInterval: 1,
    retention: 'fp32',
    enrolment: 'open',
    uploads,
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  return { coordinator, url };
}

/** `count` real SDK clients in a child process (test/src/load/fleet.ts), sharing one trainer. */
async function fleet(url: string, count: number): Promise<{ stats(): Promise<FleetStats>; close(): Promise<void> }> {
  const proc = fork(FLEET, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(proc);
  proc.on('exit', () => children.delete(proc));
  const waiting = new Map<number, (s: FleetStats) => void>();
  let nextId = 0;
  let onClosed!: () => void;
  const closed = new Promise<void>((r) => (onClosed = r));
  const started = new Promise<Extract<FleetReply, { type: 'started' }>>((resolve, reject) => {
    proc.on('message', (m: FleetReply) => {
      if (m.type === 'started') resolve(m);
      else if (m.type === 'stats') waiting.get(m.id)?.(m.stats);
      else if (m.type === 'closed') onClosed();
      else if (m.type === 'fatal') reject(new Error(`fleet failed: ${m.message}`));
    });
  });
  const spec: FleetSpec = {
    url,
    prefix: 'device',
    count,
    secrets: Array.from({ length: count }, (_, i) => `secret-of-device-${i}`),
    seed: 1,
    examples: 4,
    features: FEATURES,
    reconnectDelayMs: 200,
    reconnectMaxDelayMs: 1_000,
    connectTimeoutMs: WAIT_MS,
  };
  proc.send({ type: 'start', spec });
  const s = await started;
  assert.equal(s.failed, 0, `fleet clients failed to connect: ${s.firstFailure}`);
  return {
    stats: () =>
      new Promise((resolve) => {
        const id = nextId++;
        waiting.set(id, (st) => {
          waiting.delete(id);
          resolve(st);
        });
        proc.send({ type: 'stats', id });
      }),
    close: async () => {
      proc.send({ type: 'close' });
      await Promise.race([closed, new Promise((r) => setTimeout(r, 10_000))]);
      proc.kill('SIGKILL');
    },
  };
}

/** One round of `clients` SDK clients answering at about the same time; returns what the coordinator held at most. */
async function crowdedRound(uploads: { windowBytes?: number; grantAboveBytes?: number }, clients: number, stageDelayMs: number) {
  const { coordinator, url } = await start(uploads, clients, stageDelayMs);
  const devices = await fleet(url, clients);
  try {
    await waitUntil(() => coordinator.registry.size === clients, WAIT_MS, `${clients} connected clients`);
    const [outcome] = await coordinator.runRounds(1);
    const stats = await devices.stats();
    const metrics = await (await fetch(`${url}/metrics`)).text();
    const record = await coordinator.store.getRound(1);
    const stored = record ? await Promise.all(record.participants.map((p) => coordinator.store.readUpdate(record.roundId, p.clientId))) : [];
    return { outcome: outcome!, counters: { ...coordinator.dispatcher.counters }, head: await coordinator.store.head(), record, stored, stats, metrics };
  } finally {
    await devices.close();
    await coordinator.stop();
  }
}

test('many clients answering a large model at once: the coordinator holds at most the upload window plus one update, and every update is taken', { timeout: 180_000 }, async () => {
  const CLIENTS = 12;
  // Each staging takes 400 ms on this disk, twelve answers arrive within a fraction of that.
  const STAGE_MS = 400;
  // One update fits in the window, two do not: uploads go one after another.
  const window = Math.round(UPDATE_BYTES * 1.5);
  // The wire size of an update (its chunk frames) is a few bytes over its encoded size.
  const oneUpdate = UPDATE_BYTES + 1024;

  // The same round without flow control: the answers pile up while the disk is busy. This shows the scenario does
  // what the test needs; it is the failure the flow control exists to prevent.
  const free = await crowdedRound({ windowBytes: window, grantAboveBytes: 0 }, CLIENTS, STAGE_MS);
  assert.equal(free.outcome.participants.length, CLIENTS);
  assert.equal(free.counters.uploadGrants, 0, 'no grants without flow control');
  assert.ok(
    free.counters.peakHeldUpdateBytes > window + oneUpdate,
    `without flow control the coordinator held at most ${free.counters.peakHeldUpdateBytes} bytes: the scenario does not crowd it (window ${window})`,
  );

  const ruled = await crowdedRound({ windowBytes: window, grantAboveBytes: 256 * 1024 }, CLIENTS, STAGE_MS);
  assert.ok(
    ruled.counters.peakHeldUpdateBytes <= window + oneUpdate,
    `held ${ruled.counters.peakHeldUpdateBytes} bytes at most, over the window ${window} + one update ${oneUpdate}`,
  );
  assert.ok(ruled.counters.peakHeldUpdateBytes >= UPDATE_BYTES, 'the gauge saw the updates');
  console.log(`# update ${UPDATE_BYTES} bytes, window ${window}: peak held without flow control ${free.counters.peakHeldUpdateBytes}, with ${ruled.counters.peakHeldUpdateBytes}`);
  assert.deepEqual(ruled.outcome.missing, [], 'every client answered in time');
  assert.equal(ruled.outcome.participants.length, CLIENTS);
  assert.equal(ruled.counters.uploadGrants, CLIENTS, 'every update was granted');
  // The window had room for one answer when the tasks went out: that task came with its grant, the others asked.
  assert.equal(ruled.counters.uploadGrantsWithTask, 1, 'one task carried its grant');
  assert.equal(ruled.counters.heldUpdateBytes, 0, 'nothing is held after the round');
  assert.equal(ruled.counters.grantedUploadBytes, 0, 'every grant was released');
  assert.deepEqual(ruled.counters.rejected, {}, 'no update was refused');
  assert.equal(ruled.stats.tasks, CLIENTS);
  assert.deepEqual(ruled.stats.errors, []);
  // The round committed with every update durable and readable.
  assert.equal(ruled.head.round, 1);
  assert.equal(ruled.record?.participants.length, CLIENTS);
  assert.equal(ruled.stored.filter((u) => u?.length === def.initial.layout.totalSize).length, CLIENTS, 'every update is stored');
  // What an operator sees.
  assert.match(ruled.metrics, new RegExp(`fedunlearn_update_bytes_held\\{stat="peak"\\} ${ruled.counters.peakHeldUpdateBytes}\\b`));
  assert.match(ruled.metrics, new RegExp(`fedunlearn_upload_grants_total ${CLIENTS}\\b`));
});

test('upload requests and ungranted updates from raw peers are refused with clear codes and change nothing', { timeout: 120_000 }, async () => {
  // A window of one update: no task can come with its grant (that reserves the update plus room for its other fields),
  // so every large answer must ask, one upload at a time.
  const { coordinator, url } = await start({ windowBytes: UPDATE_BYTES, grantAboveBytes: 256 * 1024, uploadTimeoutMs: 1_500 }, 4, 0, 3);
  const peers: RawPeer[] = [];
  const honest: FederatedClient[] = [];
  try {
    // Before the welcome, a large chunked message cannot hold a grant: refused at its first chunk.
    const stranger = await RawPeer.connect(url);
    peers.push(stranger);
    stranger.sendRaw(encodeEnvelope({ chunk: { streamId: 'early', seq: 0, total: 4, totalBytes: 2 * 1024 * 1024, data: new Uint8Array(1024) } }));
    await stranger.expectError(ErrorCode.UPLOAD_NOT_GRANTED, 'early');

    const rng = seedrandom('upload-flow');
    for (const i of [0, 1]) {
      const c = new FederatedClient({ url, clientId: `honest-${i}`, secret: `secret-of-honest-${i}`, data: tinyDataset(rng, 4, FEATURES), reconnect: { attempts: 0 } });
      honest.push(c);
    }
    await Promise.all(honest.map((c) => c.connect()));
    const { peer: rawA, answer: welcome } = await RawPeer.introduce(url, 'raw-a', 'secret-of-raw-a');
    peers.push(rawA);
    assert.equal(Number(welcome.welcome?.uploadGrantAboveBytes), 256 * 1024, 'the welcome says which answers need a grant');
    const rawB = await RawPeer.enrolled(url, 'raw-b', 'secret-of-raw-b');
    peers.push(rawB);
    await waitUntil(() => coordinator.registry.size === 4, WAIT_MS, 'four connected clients');

    const roundDone = coordinator.runRounds(1);
    const [taskA, taskB] = await Promise.all([rawA, rawB].map(async (p) => (await p.next('task')).task as fedunlearn.v1.Task));
    const layout = layoutOf((taskA!.weights ?? []).map((t) => ({ name: t.name ?? '', shape: (t.shape ?? []).map(Number) })));
    const answerA = { update: { taskId: taskA!.taskId, delta: deltaTensors(layout, new Float32Array(layout.totalSize).fill(1e-3)), numExamples: 4 } };
    const bytesA = encodeEnvelope(answerA).byteLength;
    assert.ok(bytesA > DEFAULT_FRAMING.chunkBytes, 'precondition: the answer travels as chunks');

    rawA.send({ uploadRequest: { taskId: 'no-such-task', bytes: bytesA } });
    await rawA.expectError(ErrorCode.UNKNOWN_TASK, 'no-such-task');
    rawA.send({ uploadRequest: { taskId: taskB!.taskId, bytes: bytesA } });
    await rawA.expectError(ErrorCode.PERMISSION_DENIED, taskB!.taskId);
    rawA.send({ uploadRequest: { taskId: taskA!.taskId, bytes: 0 } });
    await rawA.expectError(ErrorCode.INVALID_ARGUMENT, taskA!.taskId);
    rawA.send({ uploadRequest: { taskId: taskA!.taskId, bytes: DEFAULT_FRAMING.maxMessageBytes + 1 } });
    await rawA.expectError(ErrorCode.MESSAGE_TOO_LARGE, taskA!.taskId);

    // The update sent without a grant: its stream is refused at the first chunk (each later chunk of the refused
    // stream is then malformed: it starts no stream), and the task stays open.
    rawA.send(answerA);
    await rawA.expectError(ErrorCode.UPLOAD_NOT_GRANTED);
    await rawA.expectError(ErrorCode.MALFORMED_MESSAGE);
    await rawA.expectError(ErrorCode.MALFORMED_MESSAGE);
    assert.equal(coordinator.transport.counters.refused.UPLOAD_NOT_GRANTED, 2, "the early stream and this one");

    // Asked properly, it is granted once; a second request for the task is refused, and the grant still stands.
    rawA.send({ uploadRequest: { taskId: taskA!.taskId, bytes: bytesA } });
    const grant = (await rawA.next('uploadGrant')).uploadGrant!;
    assert.equal(grant.taskId, taskA!.taskId);
    assert.ok(Number(grant.uploadDeadlineUnixMs) > Date.now());
    rawA.send({ uploadRequest: { taskId: taskA!.taskId, bytes: bytesA } });
    await rawA.expectError(ErrorCode.DUPLICATE_UPLOAD_REQUEST, taskA!.taskId);
    rawA.send(answerA);

    // raw-b is granted and never uploads: its task ends missing at the upload deadline, not the round's.
    rawB.send({ uploadRequest: { taskId: taskB!.taskId, bytes: bytesA } });
    await rawB.next('uploadGrant');

    const [outcome] = await roundDone;
    assert.deepEqual([...outcome!.participants].sort(), ['honest-0', 'honest-1', 'raw-a']);
    assert.equal(outcome!.missing.length, 1);
    assert.equal(outcome!.missing[0]!.clientId, 'raw-b');
    assert.equal(outcome!.missing[0]!.reason, 'deadline');
    assert.match(outcome!.missing[0]!.detail ?? '', /granted upload did not arrive within 1500 ms/);
    const stored = await coordinator.store.readUpdate(outcome!.roundId, 'raw-a');
    assert.ok(stored && stored.every((v) => Math.abs(v - 1e-3) < 1e-9), "raw-a's granted update is the one stored");

    // The answered task is closed: asking again is STALE_TASK.
    rawA.send({ uploadRequest: { taskId: taskA!.taskId, bytes: bytesA } });
    await rawA.expectError(ErrorCode.STALE_TASK, taskA!.taskId);
    assert.equal(coordinator.dispatcher.counters.grantedUploadBytes, 0, 'every grant was released');
    assert.equal(coordinator.dispatcher.counters.heldUpdateBytes, 0);
  } finally {
    for (const p of peers) p.close();
    await Promise.all(honest.map((c) => c.close()));
    await coordinator.stop();
  }
});

test('a task sent while the window has room carries its grant: the answer goes without asking, and asking anyway is granted once', { timeout: 60_000 }, async () => {
  const { coordinator, url } = await start({ windowBytes: UPDATE_BYTES * 8, grantAboveBytes: 256 * 1024, uploadTimeoutMs: 5_000 }, 2);
  const peers: RawPeer[] = [];
  try {
    const quiet = await RawPeer.enrolled(url, 'quiet', 'secret-of-quiet');
    const asker = await RawPeer.enrolled(url, 'asker', 'secret-of-asker');
    peers.push(quiet, asker);
    await waitUntil(() => coordinator.registry.size === 2, WAIT_MS, 'two connected clients');

    const roundDone = coordinator.runRounds(1);
    // Stopping the coordinator after a failed assertion rejects the round too: that must not hide the assertion.
    roundDone.catch(() => undefined);
    const [taskQ, taskA] = await Promise.all([quiet, asker].map(async (p) => (await p.next('task')).task as fedunlearn.v1.Task));
    const layout = layoutOf((taskQ!.weights ?? []).map((t) => ({ name: t.name ?? '', shape: (t.shape ?? []).map(Number) })));
    const answer = (taskId: string) => ({ update: { taskId, delta: deltaTensors(layout, new Float32Array(layout.totalSize).fill(1e-3)), numExamples: 4 } });
    for (const t of [taskQ!, taskA!]) assert.ok(Number(t.uploadGrantedBytes) >= encodeEnvelope(answer(t.taskId)).byteLength, `the task reserved ${String(t.uploadGrantedBytes)} bytes for an answer of ${encodeEnvelope(answer(t.taskId)).byteLength}`);

    // One peer just answers, as the SDK does with a task that carries its grant.
    quiet.send(answer(taskQ!.taskId));
    // The other asks as an older client would: granted at once; asking again is a duplicate.
    const bytes = encodeEnvelope(answer(taskA!.taskId)).byteLength;
    asker.send({ uploadRequest: { taskId: taskA!.taskId, bytes } });
    assert.equal((await asker.next('uploadGrant')).uploadGrant!.taskId, taskA!.taskId);
    asker.send({ uploadRequest: { taskId: taskA!.taskId, bytes } });
    await asker.expectError(ErrorCode.DUPLICATE_UPLOAD_REQUEST, taskA!.taskId);
    asker.send(answer(taskA!.taskId));

    const [outcome] = await roundDone;
    assert.deepEqual([...outcome!.participants].sort(), ['asker', 'quiet']);
    assert.equal(coordinator.dispatcher.counters.uploadGrantsWithTask, 2);
    assert.deepEqual(coordinator.dispatcher.counters.rejected, { DUPLICATE_UPLOAD_REQUEST: 1 });
    assert.equal(coordinator.dispatcher.counters.grantedUploadBytes, 0, 'every reservation was released');
  } finally {
    for (const p of peers) p.close();
    await coordinator.stop();
  }
});
