import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { Coordinator, createLogger, openSqliteHistory, taskSeed, type JobReport } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { encodeTensor, fedunlearn, layerView, layoutOf, type WeightLayout, type WireTensor } from '@fedunlearn/protocol';
import { RawPeer } from './raw-peer.js';
import { tempDir, waitUntil } from './support.js';

// The committed model of an unlearning job, checked against M~_{j+1} computed by hand from the paper's formulas.
//
// A real coordinator; three peers that speak the protocol by hand, so that every update the history stores and every
// fresh calibration update is a value chosen here. Each layer of an update is filled with one value v, times 1 on
// even and 2 on odd indices of the layer (every layer of this model has an even size), so that
//   ||U_l|| = |v| * sqrt(n_l/2 * 1 + n_l/2 * 4) = |v| * sqrt(2.5 n_l)
// and FedEraser's calibrated update (Liu et al. 2021, Sec. 3.2: storedNorm_l * fresh_l / ||fresh_l||) is, per value,
//   |a| * sqrt(2.5 n_l) * c * p_i / (|c| * sqrt(2.5 n_l)) = |a| * sign(c) * p_i,   p_i in {1, 2},
// where a is the stored update's value and c the fresh one's. FedAvg then weights the remaining clients by examples.
// |c| differs from |a| everywhere, so applying the raw fresh update, calibrating the mean, or weighting uniformly all
// give another model.

const def = builtInDefinition('mlp', { inputShape: [2], numClasses: 2, seed: 3 });
const dirs: { cleanup(): void }[] = [];
after(() => dirs.forEach((d) => d.cleanup()));

/** Examples each peer reports: weights 20/60, 10/60, 30/60 in training; 10/40 and 30/40 once raw-0 is forgotten. */
const EXAMPLES: Record<string, number> = { 'raw-0': 20, 'raw-1': 10, 'raw-2': 30 };

/** The value of layer l in the stored update of `client` for training round t (dyadic: float32 holds it exactly). */
function storedValue(client: string, t: number, l: number): number {
  const k = Number(client.slice(-1));
  return ((k + 1) * (l % 2 === 0 ? 1 : -1) * (t === 1 ? 0.25 : 0.125)) / 8;
}

/** The value of layer l in the fresh calibration update `client` sends for replay step j (1-based). */
function freshValue(client: string, j: number, l: number): number {
  const k = Number(client.slice(-1));
  // Magnitudes 3 to 6 times the stored ones, and a sign that flips with the client and the step.
  return ((k + j + l) % 3 === 0 ? -1 : 1) * (0.5 + 0.25 * k) * (j === 1 ? 0.5 : 0.25);
}

/** A delta whose layer l is value(l) times 1 (even index) or 2 (odd index). */
function patterned(layout: WeightLayout, value: (l: number) => number): Float32Array {
  const out = new Float32Array(layout.totalSize);
  for (let l = 0; l < layout.specs.length; l++) {
    const view = layerView(layout, out, l);
    for (let i = 0; i < view.length; i++) view[i] = value(l) * (i % 2 === 0 ? 1 : 2);
  }
  return out;
}

function tensors(layout: WeightLayout, values: Float32Array): WireTensor[] {
  return layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, values, i)));
}

/** Answers the next `count` tasks of `peer` with the delta `deltaFor` gives; resolves with the tasks it saw. */
async function answer(peer: RawPeer, clientId: string, count: number, deltaFor: (task: fedunlearn.v1.Task, layout: WeightLayout) => Float32Array): Promise<fedunlearn.v1.Task[]> {
  const seen: fedunlearn.v1.Task[] = [];
  for (let n = 0; n < count; n++) {
    const task = (await peer.next('task', 60_000)).task as fedunlearn.v1.Task;
    const layout = layoutOf((task.weights ?? []).map((t) => ({ name: t.name ?? '', shape: (t.shape ?? []).map(Number) })));
    peer.send({ update: { taskId: task.taskId, delta: tensors(layout, deltaFor(task, layout)), numExamples: EXAMPLES[clientId]!, metrics: { loss: 1 } } });
    seen.push(task);
  }
  return seen;
}

type Federation = Awaited<ReturnType<typeof federation>>;

async function federation(prefix: string, minClients = 2) {
  const tmp = tempDir(prefix);
  dirs.push(tmp);
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: def,
    federation: {
      clientsPerRound: 3,
      minClients,
      roundDeadlineMs: 30_000,
      seed: 5,
      hyper: { learningRate: 0.1, batchSize: 10, localEpochs: 2 },
      maxRoundAttempts: 1,
      waitForClientsMs: 10_000,
    },
    historyInterval: 1,
    retention: 'fp32',
    enrolment: 'open',
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  const peers = new Map<string, RawPeer>();
  for (const id of Object.keys(EXAMPLES)) peers.set(id, await RawPeer.enrolled(url, id, `secret-of-${id}`));
  await waitUntil(() => coordinator.registry.size === 3, 10_000, 'three connected peers');
  const layout = (await coordinator.store.meta()).layout;
  // Two training rounds whose every stored update is chosen here.
  const [outcomes] = await Promise.all([
    coordinator.runRounds(2),
    ...[...peers].map(([id, p]) => answer(p, id, 2, (task, l) => patterned(l, (layer) => storedValue(id, task.round, layer)))),
  ]);
  assert.equal(outcomes.length, 2);
  const rounds = await coordinator.store.listRounds();
  assert.deepEqual(rounds.map((r) => r.round), [1, 2]);
  assert.ok(rounds.every((r) => r.updatesStored && r.participants.length === 3));
  const initial = await coordinator.store.readModel(rounds[0]!.modelBefore);
  return {
    coordinator,
    url,
    peers,
    layout,
    initial,
    async close() {
      for (const p of peers.values()) p.close();
      await coordinator.stop();
    },
  };
}

/** The largest absolute difference, and where it is. */
function worst(got: Float32Array, want: Float64Array): { diff: number; at: number } {
  let diff = 0;
  let at = -1;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i]! - want[i]!);
    if (!(d <= diff)) {
      diff = d;
      at = i;
    }
  }
  return { diff, at };
}

/** Layer index of each flat position. */
function layerOf(layout: WeightLayout): Int32Array {
  const out = new Int32Array(layout.totalSize);
  layout.offsets.forEach((off, l) => out.fill(l, off, off + layout.sizes[l]!));
  return out;
}

test('FedEraser: the committed model is M~_1 plus, per stored round, the example-weighted mean of the calibrated fresh updates', async () => {
  const fed = await federation('federaser-arithmetic');
  try {
    await federaserCase(fed);
  } finally {
    await fed.close();
  }
});

async function federaserCase({ coordinator, peers, layout, initial }: Federation): Promise<void> {
  const layerAt = layerOf(layout);
  // The stored norms really are the hand-computed |a| * sqrt(2.5 n_l): the history holds what the peers sent.
  for (const r of (await coordinator.store.listRounds())) {
    for (const p of r.participants) {
      p.norms.forEach((norm, l) => {
        const want = Math.abs(storedValue(p.clientId, r.round, l)) * Math.sqrt(2.5 * layout.sizes[l]!);
        assert.ok(Math.abs(norm - want) <= 1e-6 * want, `${p.clientId}, round ${r.round}, layer ${l}: stored norm ${norm}, by hand ${want}`);
      });
    }
  }

  const progress: string[] = [];
  coordinator.unlearning.on('progress', (j) => progress.push(j.progress.message ?? ''));
  await coordinator.forget({ clientIds: ['raw-0'], method: 'federaser', requestedBy: 'operator:test' });
  const remaining = ['raw-1', 'raw-2'];
  const [jobs, ...served] = await Promise.all([
    coordinator.runPendingJobs(),
    ...remaining.map((id) => answer(peers.get(id)!, id, 2, (task, l) => patterned(l, (layer) => freshValue(id, task.round, layer)))),
  ]);
  const job = jobs[0]!;
  assert.equal(job.state, 'done', job.error ?? '');
  served.forEach((tasks, i) => {
    assert.deepEqual(tasks.map((t) => [t.kind, t.round]), [[fedunlearn.v1.TaskKind.CALIBRATE, 1], [fedunlearn.v1.TaskKind.CALIBRATE, 2]]);
    tasks.forEach((t, j) => {
      assert.equal(t.jobId, job.jobId);
      // r * E local epochs: the default calibration ratio 0.5 of the federation's 2.
      assert.equal(t.hyper!.localEpochs, 1);
      // Reproducible per stored round and client: the dispatch seed is the federation's seed and the round replayed.
      assert.equal(t.hyper!.seed, taskSeed(5 * 7919 + (j + 1), remaining[i]!));
    });
  });
  assert.ok(progress.includes('calibrating stored round 1 (1 of 2) with 2 clients'), progress.join(' | '));
  assert.ok(progress.includes('calibrating stored round 2 (2 of 2) with 2 clients'), progress.join(' | '));
  const report = job.report as JobReport;
  assert.equal(report.method, 'federaser');
  assert.equal(report.exact, false, 'FedEraser is approximate');
  assert.deepEqual(report.notes, []);
  assert.deepEqual(report.roundsReplayed.map((r) => [r.sourceRound, r.uncalibrated, r.missing]), [[1, [], []], [2, [], []]]);
  assert.deepEqual(report.roundsReplayed.map((r) => [...r.calibrated].sort()), [remaining, remaining]);

  // By hand. Weights over the remaining clients: raw-1 10/40 = 0.25, raw-2 30/40 = 0.75. Step j (stored round j):
  //   M~_{j+1}[i] = M~_j[i] + sum_k w_k * |a_{k,j,l}| * sign(c_{k,j,l}) * p_i.
  // E.g. layer 0, even i, step 1: raw-1 a = 2 * 0.25 / 8 = 0.0625, c = +0.375; raw-2 a = 0.09375, c = -0.5:
  //   0.25 * 0.0625 - 0.75 * 0.09375 = -0.0546875.
  const w: Record<string, number> = { 'raw-1': 0.25, 'raw-2': 0.75 };
  assert.equal(0.25 * Math.abs(storedValue('raw-1', 1, 0)) * Math.sign(freshValue('raw-1', 1, 0)) + 0.75 * Math.abs(storedValue('raw-2', 1, 0)) * Math.sign(freshValue('raw-2', 1, 0)), -0.0546875);
  const want = Float64Array.from(initial);
  for (const j of [1, 2]) {
    for (let i = 0; i < want.length; i++) {
      const l = layerAt[i]!;
      const p = (i - layout.offsets[l]!) % 2 === 0 ? 1 : 2;
      for (const k of remaining) want[i]! += w[k]! * Math.abs(storedValue(k, j, l)) * Math.sign(freshValue(k, j, l)) * p;
    }
  }
  const head = await coordinator.store.head();
  assert.equal(head.version, report.modelAfter.version);
  const committed = await coordinator.store.readModel(head.version);
  const { diff, at } = worst(committed, want);
  assert.ok(diff <= 1e-6, `the committed model differs from the hand-computed M~_3 by ${diff} at value ${at} (layer ${layerAt[at]})`);
  // The intermediate model M~_2 is committed too, and is the hand-computed one after the first step.
  const newRounds = await coordinator.store.listRounds();
  assert.deepEqual(newRounds.map((r) => r.round), [1, 2]);
  const m2 = await coordinator.store.readModel(newRounds[0]!.modelAfter!);
  const want2 = Float64Array.from(initial);
  for (let i = 0; i < want2.length; i++) {
    const l = layerAt[i]!;
    const p = (i - layout.offsets[l]!) % 2 === 0 ? 1 : 2;
    for (const k of remaining) want2[i]! += w[k]! * Math.abs(storedValue(k, 1, l)) * Math.sign(freshValue(k, 1, l)) * p;
  }
  assert.ok(worst(m2, want2).diff <= 1e-6, `M~_2 differs from the hand-computed one by ${worst(m2, want2).diff}`);
}

test('server-side replay (FedAccum): the committed model is M^1 plus, per stored round, the re-weighted mean of the stored updates', async () => {
  const fed = await federation('replay-arithmetic');
  try {
    await replayCase(fed);
  } finally {
    await fed.close();
  }
});

async function replayCase({ coordinator, layout, initial }: Federation): Promise<void> {
  const layerAt = layerOf(layout);
  const progress: string[] = [];
  coordinator.unlearning.on('progress', (j) => progress.push(j.progress.message ?? ''));
  await coordinator.forget({ clientIds: ['raw-1'], method: 'replay', requestedBy: 'operator:test' });
  const [job] = await coordinator.runPendingJobs();
  assert.equal(job!.state, 'done', job!.error ?? '');
  assert.ok(progress.includes('replaying stored round 1 (1 of 2)') && progress.includes('replaying stored round 2 (2 of 2)'), progress.join(' | '));
  const report = job!.report as JobReport;
  assert.equal(report.method, 'replay');
  assert.equal(report.exact, false, 'replay is approximate');
  assert.deepEqual(report.notes, ['approximate: stored updates after the first replayed round were computed from models that had seen the forgotten clients']);
  assert.equal(report.cost.clientSampleEpochs, 0, 'no client work');
  // Nobody calibrated anything: every replayed update is as stored.
  assert.deepEqual(report.roundsReplayed.map((r) => [r.sourceRound, r.calibrated, [...r.uncalibrated].sort(), r.missing]), [
    [1, [], ['raw-0', 'raw-2'], []],
    [2, [], ['raw-0', 'raw-2'], []],
  ]);
  // By hand: without raw-1, weights raw-0 20/50 = 0.4 and raw-2 30/50 = 0.6, on the stored values themselves.
  //   M[i] = M^1[i] + sum_t sum_k w_k * a_{k,t,l} * p_i.
  const w: Record<string, number> = { 'raw-0': 0.4, 'raw-2': 0.6 };
  const want = Float64Array.from(initial);
  for (const t of [1, 2]) {
    for (let i = 0; i < want.length; i++) {
      const l = layerAt[i]!;
      const p = (i - layout.offsets[l]!) % 2 === 0 ? 1 : 2;
      for (const k of Object.keys(w)) want[i]! += w[k]! * storedValue(k, t, l) * p;
    }
  }
  const committed = await coordinator.store.readModel((await coordinator.store.head()).version);
  const { diff, at } = worst(committed, want);
  assert.ok(diff <= 1e-6, `the committed model differs from the hand-computed replay by ${diff} at value ${at}`);
  // The new lineage stores the replayed updates as they were: a later job can replay them in turn.
  const r1 = (await coordinator.store.listRounds())[0]!;
  assert.deepEqual(r1.participants.map((p) => p.clientId).sort(), ['raw-0', 'raw-2']);
  assert.deepEqual(await coordinator.store.readUpdate(r1.roundId, 'raw-2'), patterned(layout, (l) => storedValue('raw-2', 1, l)));
}

test('FedEraser reusing the first round: round t_1 applied as stored, later rounds calibrated with r * E epochs', async () => {
  const fed = await federation('federaser-reuse');
  try {
    const { coordinator, peers, layout, initial } = fed;
    const layerAt = layerOf(layout);
    await coordinator.forget({ clientIds: ['raw-0'], method: 'federaser', params: { reuseFirstRound: true, calibrationRatio: 0.25 }, requestedBy: 'operator:test' });
    const remaining = ['raw-1', 'raw-2'];
    const [jobs, ...served] = await Promise.all([
      coordinator.runPendingJobs(),
      ...remaining.map((id) => answer(peers.get(id)!, id, 1, (task, l) => patterned(l, (layer) => freshValue(id, task.round, layer)))),
    ]);
    const job = jobs[0]!;
    assert.equal(job.state, 'done', job.error ?? '');
    // Only stored round 2 asks the clients, with 0.25 of the federation's 2 local epochs.
    for (const tasks of served) assert.deepEqual(tasks.map((t) => [t.kind, t.round, t.hyper!.localEpochs]), [[fedunlearn.v1.TaskKind.CALIBRATE, 2, 0.5]]);
    const report = job.report as JobReport;
    assert.deepEqual(report.roundsReplayed.map((r) => [r.sourceRound, [...r.calibrated].sort(), [...r.uncalibrated].sort()]), [
      [1, [], remaining],
      [2, remaining, []],
    ]);
    // By hand: M^1 + sum_k w_k a_{k,1,l} p_i (round t_1 exact, as stored) + sum_k w_k |a_{k,2,l}| sign(c_{k,2,l}) p_i.
    const w: Record<string, number> = { 'raw-1': 0.25, 'raw-2': 0.75 };
    const want = Float64Array.from(initial);
    for (let i = 0; i < want.length; i++) {
      const l = layerAt[i]!;
      const p = (i - layout.offsets[l]!) % 2 === 0 ? 1 : 2;
      for (const k of remaining) want[i]! += w[k]! * (storedValue(k, 1, l) + Math.abs(storedValue(k, 2, l)) * Math.sign(freshValue(k, 2, l))) * p;
    }
    const committed = await coordinator.store.readModel((await coordinator.store.head()).version);
    const { diff, at } = worst(committed, want);
    assert.ok(diff <= 1e-6, `the committed model differs from the hand-computed one by ${diff} at value ${at}`);
    // The first replayed round keeps the stored updates themselves, so that a later job can replay it in turn.
    const r1 = (await coordinator.store.listRounds())[0]!;
    assert.deepEqual(await coordinator.store.readUpdate(r1.roundId, 'raw-1'), patterned(layout, (l) => storedValue('raw-1', 1, l)));
  } finally {
    await fed.close();
  }
});

test('FedEraser: a stored round whose clients all leave is skipped, the model carries over, and the report says so', async () => {
  // A quorum of one: each replay step starts once one of its clients is connected (a job waits, bounded, for a step's
  // quorum of min(minClients, its clients) before it starts: unlearning/engine.ts).
  const fed = await federation('federaser-skip', 1);
  try {
    const { coordinator, peers, url, layout, initial } = fed;
    const layerAt = layerOf(layout);
    await coordinator.forget({ clientIds: ['raw-0'], method: 'federaser', requestedBy: 'operator:test' });
    const remaining = ['raw-1', 'raw-2'];
    const jobDone = coordinator.runPendingJobs();
    // Handed stored round 1's calibration, both remaining clients leave without answering.
    await Promise.all(
      remaining.map(async (id) => {
        const p = peers.get(id)!;
        const task = (await p.next('task', 60_000)).task as fedunlearn.v1.Task;
        assert.equal(task.round, 1);
        p.close();
      }),
    );
    // raw-2 comes back for stored round 2 (the step waits, bounded, for one of its clients) and answers it; raw-1 stays
    // away. (Bringing both back would race the step's start: whoever is not back yet is missing, as 'offline'.)
    const back = await RawPeer.enrolled(url, 'raw-2', 'secret-of-raw-2');
    peers.set('raw-2', back);
    await answer(back, 'raw-2', 1, (task, l) => patterned(l, (layer) => freshValue('raw-2', task.round, layer)));
    const [job] = await jobDone;
    assert.equal(job!.state, 'done', job!.error ?? '');
    const report = job!.report as JobReport;
    assert.deepEqual(report.notes, ['stored round 1: no client answered; the step was skipped']);
    assert.deepEqual(
      report.roundsReplayed.map((r) => [r.sourceRound, r.calibrated, r.missing.map((m) => `${m.clientId} ${m.reason}`).sort()]),
      [
        [1, [], ['raw-1 disconnected', 'raw-2 disconnected']],
        [2, ['raw-2'], ['raw-1 offline']],
      ],
    );
    // By hand: M~_2 = M~_1 (skipped); M~_3 = M~_2 + raw-2's calibrated update of stored round 2, weight 30/30 = 1.
    const want = Float64Array.from(initial);
    for (let i = 0; i < want.length; i++) {
      const l = layerAt[i]!;
      const p = (i - layout.offsets[l]!) % 2 === 0 ? 1 : 2;
      want[i]! += Math.abs(storedValue('raw-2', 2, l)) * Math.sign(freshValue('raw-2', 2, l)) * p;
    }
    const committed = await coordinator.store.readModel((await coordinator.store.head()).version);
    assert.ok(worst(committed, want).diff <= 1e-6, `the committed model differs from the hand-computed one by ${worst(committed, want).diff}`);
  } finally {
    await fed.close();
  }
});

test('a forget job for a client with no contribution (an empty history) leaves the model as it is and says so (FedEraser and replay alike)', async () => {
  const tmp = tempDir('no-history');
  dirs.push(tmp);
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: def,
    federation: { clientsPerRound: 3, minClients: 1, roundDeadlineMs: 5_000, seed: 5, hyper: { learningRate: 0.1, batchSize: 10, localEpochs: 2 }, maxRoundAttempts: 1, waitForClientsMs: 5_000 },
    historyInterval: 1,
    retention: 'fp32',
    enrolment: 'open',
    logger: createLogger({ level: 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  const peers = [0, 1, 2].map((i) => RawPeer.enrolled(url, `raw-${i}`, `secret-of-raw-${i}`));
  const connected = await Promise.all(peers);
  try {
    const head = await coordinator.store.head();
    for (const [i, method] of (['federaser', 'replay'] as const).entries()) {
      await coordinator.forget({ clientIds: [`raw-${i}`], method, requestedBy: 'operator:test' });
      const [job] = await coordinator.runPendingJobs();
      assert.equal(job!.state, 'done', job!.error ?? method);
      const report = job!.report as JobReport & { contributionRemoved: boolean };
      assert.equal(report.contributionRemoved, false, method);
      assert.match(report.notes[0]!, /^no contribution to remove/, method);
      assert.deepEqual((await coordinator.store.head()), head, `${method}: the model is left as it was`);
      assert.equal((await coordinator.isForgotten(`raw-${i}`)), true, `${method}: the client is still tombstoned`);
    }
  } finally {
    for (const p of connected) p.close();
    await coordinator.stop();
  }
});
