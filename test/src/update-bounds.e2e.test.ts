import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { encodeTensor, ErrorCode, fedunlearn, layerView, layoutOf, type WeightLayout, type WireTensor } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { RawPeer } from './raw-peer.js';
import { tempDir, waitUntil } from './support.js';

// Issue 12 sections 3 and 5 over real sockets: no update can break the arithmetic, and clients cannot write the
// fields the coordinator records about a round. Two honest raw peers and one hostile one answer every round; each
// hostile answer seen in the field (a 3e38 spike with 2 examples, a 1e37 spike, 10^9 examples, a `sourceRound`
// metric) must be refused with its code, counted in /metrics, and the round must commit with the honest answers
// only, its model finite and equal to their weighted mean.

const WAIT_MS = 20_000;
const tmp = tempDir('update-bounds');
const def = builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 2 });
let coordinator: Coordinator;
let url: string;
const honest: RawPeer[] = [];
let hostile: RawPeer;

function layoutOfTask(task: fedunlearn.v1.ITask): WeightLayout {
  return layoutOf((task.weights ?? []).map((t) => ({ name: t.name ?? '', shape: (t.shape ?? []).map(Number) })));
}

function tensors(layout: WeightLayout, values: Float32Array): WireTensor[] {
  return layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, values, i)));
}

/** A small honest-looking delta (norm about 0.2), seeded. */
function honestDelta(n: number, seed: string): Float32Array {
  const r = seedrandom(seed);
  return Float32Array.from({ length: n }, () => (r() * 2 - 1) * 1e-3);
}

before(async () => {
  coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: def,
    federation: {
      clientsPerRound: 3,
      minClients: 2,
      roundDeadlineMs: 30_000,
      seed: 5,
      hyper: { learningRate: 0.1, batchSize: 10, localEpochs: 1 },
      // One attempt: a round that fails must fail the test, not retry 76 times a second.
      maxRoundAttempts: 1,
      waitForClientsMs: 10_000,
    },
    historyInterval: 1,
    retention: 'fp32',
    enrolment: 'open',
    logger: createLogger({ level: 'silent' }),
  });
  ({ url } = await coordinator.listen(0));
  for (const i of [1, 2]) honest.push(await RawPeer.enrolled(url, `honest-${i}`, `honest-secret-${i}`));
  // Every peer declares 50 examples at hello (raw-peer's default).
  hostile = await RawPeer.enrolled(url, 'hostile', 'hostile-secret');
});

after(async () => {
  for (const p of [...honest, hostile]) p.close();
  await coordinator.stop();
  tmp.cleanup();
});

async function metric(name: string, reason: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{reason="${reason}"}`));
  return line ? Number(line.split(' ').pop()) : 0;
}

/**
 * Runs one round: the honest peers answer first (so the hostile answer meets a known median), then the hostile one
 * sends `answer`; returns its refusal and checks the committed model is exactly the honest peers' weighted mean.
 */
async function roundWithHostile(round: number, answer: (taskId: string, layout: WeightLayout) => fedunlearn.v1.IUpdate): Promise<fedunlearn.v1.Error> {
  const base = coordinator.model().weights;
  const accepted = coordinator.dispatcher.counters.accepted;
  const done = coordinator.runRounds(1);
  const tasks = await Promise.all([...honest, hostile].map(async (p) => (await p.next('task')).task as fedunlearn.v1.Task));
  const layout = layoutOfTask(tasks[0]!);
  const deltas = honest.map((_, i) => honestDelta(layout.totalSize, `round-${round}-honest-${i}`));
  honest.forEach((p, i) => p.send({ update: { taskId: tasks[i]!.taskId, delta: tensors(layout, deltas[i]!), numExamples: 40 + i * 10, metrics: { loss: 1 + i, accuracy: 0.5 } } }));
  await waitUntil(() => coordinator.dispatcher.counters.accepted === accepted + 2, WAIT_MS, 'the honest answers accepted');
  const hostileTask = tasks[2]!;
  hostile.send({ update: answer(hostileTask.taskId, layout) });
  const refusal = (await hostile.next('error')).error as fedunlearn.v1.Error;
  assert.equal(refusal.ref, hostileTask.taskId, 'the refusal names the task');
  const [outcome] = await done;
  assert.ok(outcome, `round ${round} committed`);
  assert.deepEqual([...outcome.participants].sort(), ['honest-1', 'honest-2']);
  assert.deepEqual(outcome.missing, [{ clientId: 'hostile', reason: 'rejected', detail: refusal.message }]);
  // The committed model: base + the example-weighted mean of the honest deltas, recomputed in float64.
  const got = coordinator.model().weights;
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    assert.ok(Number.isFinite(got[i]!), `weight ${i} is finite`);
    const want = base[i]! + (40 * deltas[0]![i]! + 50 * deltas[1]![i]!) / 90;
    worst = Math.max(worst, Math.abs(got[i]! - want));
  }
  assert.ok(worst <= 1e-6, `the model differs from the honest peers' mean by ${worst}`);
  assert.equal((await coordinator.store.head()).round, round);
  return refusal;
}

test('a delta of zeros but one 3e38 with numExamples 2 is refused with UPDATE_NORM_TOO_LARGE; the round commits a finite model', async () => {
  const refusal = await roundWithHostile(1, (taskId, layout) => {
    const spike = new Float32Array(layout.totalSize);
    spike[1234] = 3e38;
    return { taskId, delta: tensors(layout, spike), numExamples: 2, metrics: { loss: 0.1 } };
  });
  assert.equal(refusal.code, ErrorCode.UPDATE_NORM_TOO_LARGE, refusal.message);
  assert.match(refusal.message, /norm 3\.000e\+38 is above the bound/);
  assert.equal(await metric('fedunlearn_updates_rejected_total', 'UPDATE_NORM_TOO_LARGE'), 1);
  // Nothing of a failed attempt is left behind: the round's staged files are the two honest updates.
  const record = (await coordinator.store.getRound(1))!;
  assert.equal(await coordinator.store.readUpdate(record.roundId, 'hostile'), null);
});

test('a 1e37 spike, below float32 overflow, is refused too: the model does not climb round after round', async () => {
  const refusal = await roundWithHostile(2, (taskId, layout) => {
    const spike = new Float32Array(layout.totalSize);
    spike[99] = -1e37;
    return { taskId, delta: tensors(layout, spike), numExamples: 50 };
  });
  assert.equal(refusal.code, ErrorCode.UPDATE_NORM_TOO_LARGE, refusal.message);
  let max = 0;
  for (const w of coordinator.model().weights) max = Math.max(max, Math.abs(w));
  assert.ok(max < 10, `largest weight ${max}`);
  assert.equal(await metric('fedunlearn_updates_rejected_total', 'UPDATE_NORM_TOO_LARGE'), 2);
});

test('an update 50 times the round median norm, under the absolute bound, is refused by the relative bound', async () => {
  const refusal = await roundWithHostile(3, (taskId, layout) => {
    // The honest deltas have a norm near 0.19; this one is about 9.4, well under the absolute 1e4.
    const big = honestDelta(layout.totalSize, 'big');
    for (let i = 0; i < big.length; i++) big[i]! *= 50;
    return { taskId, delta: tensors(layout, big), numExamples: 50 };
  });
  assert.equal(refusal.code, ErrorCode.UPDATE_NORM_TOO_LARGE, refusal.message);
  assert.equal(await metric('fedunlearn_updates_rejected_total', 'UPDATE_NORM_TOO_LARGE'), 3);
});

test('an update claiming 10^9 examples, more than the 50 declared at hello, is TOO_MANY_EXAMPLES', async () => {
  const refusal = await roundWithHostile(4, (taskId, layout) => ({ taskId, delta: tensors(layout, honestDelta(layout.totalSize, 'x')), numExamples: 1_000_000_000 }));
  assert.equal(refusal.code, ErrorCode.TOO_MANY_EXAMPLES, refusal.message);
  assert.equal(await metric('fedunlearn_updates_rejected_total', 'TOO_MANY_EXAMPLES'), 1);
});

test('a client metric named sourceRound is METRIC_NOT_ALLOWED and never reaches the round record or the API (which the dashboard and the norms-only FedEraser replay read)', async () => {
  const refusal = await roundWithHostile(5, (taskId, layout) => ({
    taskId,
    delta: tensors(layout, honestDelta(layout.totalSize, 'y')),
    numExamples: 50,
    metrics: { loss: 0.5, sourceRound: 1.75 },
  }));
  assert.equal(refusal.code, ErrorCode.METRIC_NOT_ALLOWED, refusal.message);
  assert.match(refusal.message, /"sourceRound" is not accepted from clients/);
  assert.equal(await metric('fedunlearn_updates_rejected_total', 'METRIC_NOT_ALLOWED'), 1);
  for (let r = 1; r <= 5; r++) {
    const rec = (await coordinator.store.getRound(r))!;
    assert.deepEqual(Object.keys(rec.metrics).sort(), ['accuracy', 'loss'], `round ${r} records the documented metrics only`);
    for (const p of rec.participants) assert.ok(!('sourceRound' in (p.metrics ?? {})));
  }
  const api = (await (await fetch(`${url}/v1/rounds`, { headers: { authorization: `Bearer ${coordinator.operatorToken}` } })).json()) as { rounds: { metrics: Record<string, number> }[] };
  assert.ok(api.rounds.length >= 5);
  for (const r of api.rounds) assert.ok(!('sourceRound' in r.metrics), JSON.stringify(r.metrics));
});
