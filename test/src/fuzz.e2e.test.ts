import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { io, type Socket } from 'socket.io-client';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import {
  answerChallenge,
  Channel,
  DEFAULT_FRAMING,
  encodeEnvelope,
  ErrorCode,
  errorCodeName,
  fedunlearn,
  PROTOCOL_VERSION,
  ProtocolError,
  Reassembler,
  WIRE_EVENT,
  type Envelope,
} from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { tempDir, waitUntil } from './support.js';

// A fuzzing peer on a real socket: it says a proper hello, then puts hundreds of generated frames on the wire event
// (noise, mutated envelopes, messages a client may not send, updates for tasks that do not exist, hostile chunk
// streams, non-binary payloads) while honest SDK clients train a round. Every frame a correct coordinator must refuse
// is answered with the Error code the framing and validation rules give, in order; the round commits with the honest
// clients only; the garbage leaves no trace in the history store.

const FRAMES = Number(process.env.FEDUNLEARN_FUZZ_FRAMES ?? 400);
const SEED = Number(process.env.FEDUNLEARN_FUZZ_SEED ?? 20261127);
const WAIT_MS = 20_000;

const tmp = tempDir('fuzz-e2e');
after(() => tmp.cleanup());

function syntheticData(seed: number, count: number): LocalDataset {
  const r = seedrandom(String(seed));
  const x = new Float32Array(count * 784);
  for (let i = 0; i < x.length; i++) x[i] = r();
  return { x, y: Int32Array.from({ length: count }, (_, i) => i % 10), inputShape: [784], numClasses: 10, count };
}

// --- the garbage ---------------------------------------------------------------------------------------------------

const text = fc.string({ maxLength: 12 });
const validBody: fc.Arbitrary<Envelope> = fc.oneof(
  fc.record({ hello: fc.record({ clientId: text, secret: text, numExamples: fc.nat(), protocolVersion: fc.nat({ max: 3 }) }) }),
  fc.record({ welcome: fc.record({ clientId: text, sessionId: text }) }),
  fc.record({ heartbeat: fc.record({ sentUnixMs: fc.maxSafeNat() }) }),
  fc.record({ task: fc.record({ taskId: text, round: fc.nat(), modelVersion: text }) }),
  fc.record({
    update: fc.record({
      taskId: text,
      numExamples: fc.nat(),
      delta: fc.array(fc.record({ name: text, dtype: fc.nat({ max: 4 }), shape: fc.array(fc.nat({ max: 9 }), { maxLength: 2 }), data: fc.uint8Array({ maxLength: 64 }), scale: fc.float() }), { maxLength: 3 }),
      metrics: fc.dictionary(fc.constantFrom('loss', 'accuracy'), fc.double()),
    }),
  }),
  fc.record({ forgetReceipt: fc.record({ requestId: text, jobId: text, state: fc.nat({ max: 4 }) }) }),
  fc.record({ jobStatus: fc.record({ jobId: text, state: fc.nat({ max: 4 }), step: fc.nat() }) }),
  fc.record({ error: fc.record({ code: fc.nat({ max: 17 }), message: text, ref: text }) }),
  fc.record({ forgetRequest: fc.record({ requestId: text, reason: text }) }),
  // The handshake's messages sent again inside a session: the challenge is the coordinator's, the proof spent.
  fc.record({ challenge: fc.record({ nonce: fc.uint8Array({ maxLength: 40 }), sessionId: text, keyDerivation: fc.nat({ max: 3 }), salt: fc.uint8Array({ maxLength: 20 }), enrol: fc.boolean() }) }),
  fc.record({ helloProof: fc.record({ proof: fc.uint8Array({ maxLength: 40 }), enrolKey: fc.uint8Array({ maxLength: 40 }) }) }),
);

const chunkFrame = fc
  .record({
    streamId: fc.constantFrom('s1', 's2', 's3', 's4', 's5', ''),
    seq: fc.oneof(fc.nat({ max: 3 }), fc.nat({ max: 0xffffffff })),
    total: fc.oneof(fc.integer({ min: 1, max: 4 }), fc.nat({ max: 0xffffffff })),
    totalBytes: fc.oneof(fc.integer({ min: 1, max: 400 }), fc.constant(DEFAULT_FRAMING.maxMessageBytes + 1), fc.maxSafeNat()),
    data: fc.uint8Array({ maxLength: 300 }),
  })
  .map((chunk) => encodeEnvelope({ chunk }));

function mutate(frame: Uint8Array, flips: [number, number][], cut: number | null): Uint8Array {
  const out = Uint8Array.from(frame);
  for (const [at, bits] of flips) if (out.length > 0) out[at % out.length] = out[at % out.length]! ^ bits;
  return cut === null || out.length === 0 ? out : out.subarray(0, cut % out.length);
}

/** A frame as it goes on the wire: a binary envelope (well-formed or not) or a payload no SDK would emit. */
const garbage: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 300 }) },
  {
    weight: 4,
    arbitrary: fc
      .tuple(validBody, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { maxLength: 3 }), fc.option(fc.nat()))
      .map(([env, flips, cut]) => mutate(encodeEnvelope(env), flips, cut)),
  },
  { weight: 4, arbitrary: validBody.map((env) => encodeEnvelope(env)) },
  { weight: 4, arbitrary: chunkFrame },
  // The well-formed start of a multi-chunk stream: a few of them exceed the open-stream cap.
  {
    weight: 2,
    arbitrary: fc
      // A first chunk of the minimum chunk size (16 KiB) of a 64 KiB message (under the grant size): a stream that opens.
      .record({ streamId: fc.constantFrom('o1', 'o2', 'o3', 'o4', 'o5', 'o6'), total: fc.integer({ min: 2, max: 4 }), fill: fc.nat({ max: 255 }) })
      .map(({ streamId, total, fill }) => encodeEnvelope({ chunk: { streamId, seq: 0, total, totalBytes: 64 * 1024, data: new Uint8Array(16 * 1024).fill(fill) } })),
  },
  { weight: 1, arbitrary: fc.oneof(fc.string(), fc.integer(), fc.constant(null), fc.object({ maxDepth: 1 }), fc.boolean()) },
);

/**
 * What the coordinator must answer to each frame, computed with the protocol's own framing rules (a Reassembler with
 * the coordinator's limits, fed the same frames in the same order) and the session's routing rules: an error code, or
 * null where a correct coordinator stays silent (a chunk that leaves its stream open, a heartbeat, a client's Error).
 * A forget request is never sent: it is a legitimate request that would start a job.
 */
function expectations(frames: unknown[]): { frames: unknown[]; expected: (ErrorCode | null)[] } {
  for (;;) {
    const r = new Reassembler(DEFAULT_FRAMING);
    const expected: (ErrorCode | null)[] = [];
    let legit = -1;
    for (const [i, f] of frames.entries()) {
      if (!(f instanceof Uint8Array)) {
        expected.push(ErrorCode.MALFORMED_MESSAGE);
        continue;
      }
      let env: fedunlearn.v1.Envelope | null;
      try {
        env = r.accept(f);
      } catch (e) {
        assert.ok(e instanceof ProtocolError);
        expected.push(e.code);
        continue;
      }
      if (!env) expected.push(null);
      else if (env.body === 'forgetRequest') {
        legit = i;
        break;
      } else if (env.body === 'heartbeat' || env.body === 'error') expected.push(null);
      // Task ids are nanoids the fuzzer never saw.
      else if (env.body === 'update') expected.push(ErrorCode.UNKNOWN_TASK);
      else expected.push(ErrorCode.MALFORMED_MESSAGE);
    }
    if (legit < 0) return { frames, expected };
    frames = frames.filter((_, i) => i !== legit);
  }
}

class FuzzPeer {
  readonly errors: fedunlearn.v1.Error[] = [];
  readonly other: string[] = [];
  readonly channel: Channel;
  welcomed = false;
  disconnected = false;

  private constructor(readonly socket: Socket) {
    this.channel = new Channel(socket, {
      message: (env) => {
        if (env.body === 'challenge') {
          const c = fedunlearn.v1.Challenge.fromObject(fedunlearn.v1.Challenge.toObject(env.challenge as fedunlearn.v1.Challenge));
          void answerChallenge(c, 'fuzzer', 'fuzzer-secret').then((helloProof) => this.channel.send({ helloProof }));
        } else if (env.body === 'error') this.errors.push(env.error as fedunlearn.v1.Error);
        else if (env.body === 'welcome') this.welcomed = true;
        else this.other.push(env.body ?? '?');
      },
    });
    socket.on('disconnect', () => (this.disconnected = true));
  }

  static async connect(url: string): Promise<FuzzPeer> {
    const socket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('connect_error', reject);
    });
    return new FuzzPeer(socket);
  }

  close(): void {
    this.channel.close();
    this.socket.disconnect();
  }
}

test(`${FRAMES} fuzzed frames on a live socket during a round: each refusal has its code, the round and the store are untouched`, async () => {
  const def = builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 3 });
  const coordinator = await Coordinator.create({
    enrolment: 'open',
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: def,
    federation: {
      clientsPerRound: 2,
      minClients: 2,
      roundDeadlineMs: 60_000,
      seed: 5,
      hyper: { learningRate: 0.1, batchSize: 20, localEpochs: 2 },
      maxRoundAttempts: 1,
      waitForClientsMs: 10_000,
    },
    historyInterval: 1,
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  const refusalsBefore = await refusalsByReason(coordinator);
  const honestErrors: string[] = [];
  const honest = [1, 2].map((i) => {
    const c = new FederatedClient({ url, clientId: `honest-${i}`, secret: `honest-secret-${i}`, data: syntheticData(i, 600), backends: ['cpu'], reconnect: { attempts: 0 } });
    c.on('serverError', (e) => honestErrors.push(`honest-${i}: ${e.code} ${e.message}`));
    return c;
  });
  let peer: FuzzPeer | undefined;
  try {
    await Promise.all(honest.map((c) => c.connect(WAIT_MS)));
    const store = coordinator.store;
    const statsBefore = await store.stats();
    assert.equal((await store.head()).round, 0);

    const generated = fc.sample(garbage, { numRuns: FRAMES, seed: SEED });
    const { frames, expected } = expectations(generated);
    const wantErrors = expected.filter((c): c is ErrorCode => c !== null);
    // The round's two tasks go to the honest clients before the fuzzer exists, so it is never selected.
    const round = coordinator.runRounds(1);
    // A session has sent its welcome, then the task.
    const tasked = () => honest.every((_, i) => (coordinator.registry.get(`honest-${i + 1}`)?.channel.stats.messagesOut ?? 0) >= 2);
    await waitUntil(tasked, WAIT_MS, 'tasks sent to the honest clients');
    peer = await FuzzPeer.connect(url);
    peer.channel.send({ hello: { clientId: 'fuzzer', sdkVersion: 'fuzz', numExamples: 1, backend: 'none', protocolVersion: PROTOCOL_VERSION } });
    await waitUntil(() => peer!.welcomed, WAIT_MS, 'welcome');

    // Sent in batches, each answered before the next, so that a flood limiter cannot be the reason for a refusal.
    const fuzzer = peer;
    let sent = 0;
    for (let i = 0; i < frames.length; i += 25) {
      const batch = frames.slice(i, i + 25);
      for (const f of batch) fuzzer.socket.emit(WIRE_EVENT, f);
      sent += batch.length;
      const due = expected.slice(0, sent).filter((c) => c !== null).length;
      const answered = await waitUntil(() => fuzzer.errors.length >= due || fuzzer.disconnected, WAIT_MS, 'error replies').then(
        () => true,
        () => false,
      );
      // A missing answer fails below, with the first frame whose answer differs.
      if (!answered) break;
    }
    // A barrier instead of a fixed wait: the session answers its frames in order, so once the answer to one last,
    // well-formed update for an unknown task is in, an answer still owed to an earlier frame (or an extra one) is too.
    const barrierSent = !fuzzer.disconnected;
    if (barrierSent) {
      fuzzer.channel.send({ update: { taskId: 'fuzz-barrier', numExamples: 1 } });
      await waitUntil(() => fuzzer.errors.some((e) => e.ref === 'fuzz-barrier') || fuzzer.disconnected, WAIT_MS, 'the barrier answer');
      const barrier = fuzzer.errors.pop()!;
      assert.equal(barrier.ref, 'fuzz-barrier', 'the barrier is answered last: no answer to a fuzzed frame came after it');
      assert.equal(errorCodeName(barrier.code), 'UNKNOWN_TASK');
    }
    const roundStillOpen = (await Promise.race([round.then(() => false), Promise.resolve(true)])) as boolean;

    assert.equal(fuzzer.disconnected, false, 'garbage is refused frame by frame, the session stays up');
    assert.deepEqual(fuzzer.other, [], `nothing but errors came back (${fuzzer.errors.length} errors)`);
    const got = fuzzer.errors.map((e) => errorCodeName(e.code));
    const want = wantErrors.map(errorCodeName);
    const first = want.findIndex((c, i) => got[i] !== c);
    if (first >= 0 || got.length !== want.length) {
      const at = first >= 0 ? first : Math.min(got.length, want.length);
      const frameIndex = expected.findIndex((_, i) => expected.slice(0, i + 1).filter((c) => c !== null).length === at + 1);
      const f = frames[frameIndex];
      assert.fail(
        `error ${at}: got ${got[at]} (${fuzzer.errors[at]?.message}), expected ${want[at]} for frame ${frameIndex} ` +
          `${f instanceof Uint8Array ? Buffer.from(f).toString('hex').slice(0, 200) : JSON.stringify(f)}; ${got.length} errors for ${want.length} expected`,
      );
    }

    // Every refusal is counted in /metrics under its code, once: by the transport (frames, chunks, messages) or by the
    // dispatcher (updates).
    const refusalsAfter = await refusalsByReason(coordinator);
    const counted = new Map<string, number>();
    for (const [k, n] of refusalsAfter) if (n - (refusalsBefore.get(k) ?? 0) > 0) counted.set(k, n - (refusalsBefore.get(k) ?? 0));
    const refused = new Map<string, number>();
    for (const c of got) refused.set(c, (refused.get(c) ?? 0) + 1);
    // The barrier's own refusal is counted too.
    if (barrierSent) refused.set('UNKNOWN_TASK', (refused.get('UNKNOWN_TASK') ?? 0) + 1);
    assert.deepEqual(Object.fromEntries([...counted].sort()), Object.fromEntries([...refused].sort()), 'the metrics count each refusal under its code');

    const [outcome] = await round;
    assert.ok(outcome);
    assert.deepEqual([...outcome.participants].sort(), ['honest-1', 'honest-2']);
    assert.deepEqual(honestErrors, []);

    // The store holds the honest round and nothing else: no extra rounds, models, updates, jobs or participants.
    const statsAfter = await store.stats();
    assert.equal(statsAfter.rounds, statsBefore.rounds + 1);
    assert.equal(statsAfter.models, statsBefore.models + 1);
    assert.equal(statsAfter.updates, statsBefore.updates + 2);
    assert.equal((await store.head()).round, 1);
    assert.deepEqual((await store.listRounds()).map((r) => r.participants.map((p) => p.clientId).sort()), [['honest-1', 'honest-2']]);
    assert.deepEqual((await store.listJobs()), []);
    assert.deepEqual((await store.listClients()).map((c) => c.clientId).sort(), ['fuzzer', 'honest-1', 'honest-2']);
    await store.readModel((await store.head()).version);

    // Training goes on: once the fuzzer leaves, the next round commits with the honest clients.
    fuzzer.close();
    await waitUntil(() => coordinator.registry.connected().length === 2, WAIT_MS, 'the fuzzer gone');
    const [next] = await coordinator.runRounds(1);
    assert.deepEqual([...next!.participants].sort(), ['honest-1', 'honest-2']);
    assert.equal((await store.head()).round, 2);

    const codes = new Map<string, number>();
    for (const c of wantErrors) codes.set(errorCodeName(c), (codes.get(errorCodeName(c)) ?? 0) + 1);
    console.log(
      `fuzz.e2e: ${frames.length} frames sent (seed ${SEED}), ${fuzzer.errors.length} refused (${[...codes].map(([k, n]) => `${k} ${n}`).join(', ')}), ` +
        `${expected.length - wantErrors.length} silent by the rules; round ${roundStillOpen ? 'still open' : 'already committed'} when the garbage ended`,
    );
  } finally {
    peer?.close();
    await Promise.all(honest.map((c) => c.close()));
    await coordinator.stop();
  }
});

/** fedunlearn_refused_total + fedunlearn_updates_rejected_total by reason, read from the coordinator's /metrics text. */
async function refusalsByReason(c: Coordinator): Promise<Map<string, number>> {
  const { body } = await c.metrics.scrape();
  const out = new Map<string, number>();
  for (const m of body.matchAll(/^fedunlearn_(?:refused|updates_rejected)_total\{reason="([A-Z_]+)"\} (\d+)$/gm)) {
    out.set(m[1]!, (out.get(m[1]!) ?? 0) + Number(m[2]));
  }
  return out;
}
