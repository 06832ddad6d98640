import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Coordinator, createLogger, ModelPrunedError, openSqliteHistory, type JobReport, type ModelRetentionPolicy, type StoppingRule } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, tempDir, waitUntil } from './support.js';

/**
 * How rounds start and stop and which model versions stay, over a real coordinator and real SDK clients: the round
 * loop keeps its cadence, stops at --max-rounds and still runs forget jobs afterwards, and the retention policy keeps
 * exactly the versions it says while every forget method still finds the models it starts from.
 */

const scenario = mnistScenario(3, 30);
const dirs: { cleanup(): void }[] = [];
after(() => dirs.forEach((d) => d.cleanup()));

async function coordinatorWith(opts: { roundIntervalMs?: number; stopping?: Partial<StoppingRule>; modelRetention?: ModelRetentionPolicy; clientsPerRound?: number }) {
  const tmp = tempDir('cadence');
  dirs.push(tmp);
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    federation: federation({ clientsPerRound: opts.clientsPerRound ?? 2, minClients: 2 }),
    historyInterval: 1,
    enrolment: 'open',
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
    ...(opts.roundIntervalMs !== undefined ? { roundIntervalMs: opts.roundIntervalMs } : {}),
    ...(opts.stopping ? { stopping: opts.stopping } : {}),
    ...(opts.modelRetention ? { modelRetention: opts.modelRetention } : {}),
  });
  const { url } = await coordinator.listen(0);
  return { coordinator, url, auth: { headers: { authorization: `Bearer ${coordinator.operatorToken}` } } };
}

test('rounds keep the interval, training stops at max rounds, the retention policy keeps exactly what it says, and a forget job still runs', async () => {
  const INTERVAL = 400;
  const { coordinator, url, auth } = await coordinatorWith({ roundIntervalMs: INTERVAL, stopping: { maxRounds: 4 }, modelRetention: { keepLast: 2, keepEvery: 3 } });
  const clients = await connectClients(url, scenario.parts.slice(0, 2));
  const stopped: string[] = [];
  coordinator.on('trainingStopped', (why) => stopped.push(why));
  coordinator.start();
  await waitUntil(() => stopped.length > 0, 120_000, 'training to stop');
  assert.match(stopped[0]!, /max rounds reached \(4 of 4\)/);
  assert.equal(coordinator.trainingStoppedBecause(), stopped[0]);
  const status = (await (await fetch(`${url}/v1/status`, auth)).json()) as { trainingStopped: string | null };
  assert.equal(status.trainingStopped, stopped[0], 'the API says training stopped, and why');

  const store = coordinator.store;
  const rounds = await store.listRounds();
  assert.deepEqual(rounds.map((r) => r.round), [1, 2, 3, 4]);
  for (let i = 1; i < rounds.length; i++) {
    const spacing = rounds[i]!.startedAt - rounds[i - 1]!.startedAt;
    assert.ok(spacing >= INTERVAL, `round ${rounds[i]!.round} started ${spacing} ms after round ${rounds[i - 1]!.round}, under the ${INTERVAL} ms interval`);
  }

  // keepLast 2 keeps rounds 3 and 4, keepEvery 3 keeps round 3, the initial model is always kept: rounds 1 and 2 go.
  const models = await store.listModels();
  const byRound = (n: number) => models.find((m) => m.cause === 'round' && m.round === n)!;
  const kept = models.filter((m) => m.prunedAt === null).map((m) => m.version);
  assert.deepEqual(kept, [models.find((m) => m.cause === 'init')!.version, byRound(3).version, byRound(4).version]);
  const pruned = [byRound(1), byRound(2)];
  for (const m of pruned) {
    assert.equal(typeof m.prunedAt, 'number', `model of round ${m.round} keeps its record with the time of pruning`);
    await assert.rejects(store.readModel(m.version), ModelPrunedError);
    const res = await fetch(`${url}/v1/models/${m.version}/weights`, auth);
    assert.equal(res.status, 410);
    assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'MODEL_PRUNED');
  }
  assert.equal((await store.stats()).modelsPruned, 2);
  assert.equal((await store.stats()).models, 5, 'every version keeps its record');
  const metrics = await (await fetch(`${url}/metrics`, auth)).text();
  assert.match(metrics, /^fedunlearn_history_models\{state="pruned"\} 2$/m);
  assert.match(metrics, /^fedunlearn_history_models\{state="kept"\} 3$/m);

  // Stopped, the coordinator still runs a forget job; FedEraser starts from the initial model, which is kept.
  const job = await coordinator.forget({ clientIds: ['device-1'], requestedBy: 'operator' });
  const done = await coordinator.waitForJob(job.jobId);
  assert.equal(done.state, 'done', done.error ?? '');
  const report = done.report as JobReport;
  assert.equal(report.method, 'federaser');
  assert.equal(report.roundsReplayed.length, 4);
  // ...and then trains no more: the job's 'job' event woke the loop, which found the rule still holding.
  await new Promise((r) => setImmediate(r));
  assert.equal((await store.listModels()).filter((m) => m.cause === 'round').length, 4, 'no training round after the stop');
  for (const c of clients) await c.close();
  await coordinator.stop();
});

test('pruning keeps M^{t0} of every client: a late joiner\'s rollback starts from it and keeps the rounds before', async () => {
  const { coordinator, url } = await coordinatorWith({ modelRetention: { keepLast: 2, keepEvery: 0 }, clientsPerRound: 3 });
  const early = await connectClients(url, scenario.parts.slice(0, 2));
  await coordinator.runRounds(2);
  // late-0 joins late: its first round is 3, so a forget job for it starts from M^3, the model after round 2.
  const late = await connectClients(url, scenario.parts.slice(2, 3), 'late');
  await waitUntil(() => coordinator.registry.size === 3, 10_000, 'the late client');
  await coordinator.runRounds(2);
  const store = coordinator.store;
  const rounds = await store.listRounds();
  assert.deepEqual(rounds.map((r) => r.participants.some((p) => p.clientId === 'late-0')), [false, false, true, true]);
  // keepLast 2 keeps the models after rounds 3 and 4; the initial model and M^3 (where late-0's job starts) are kept
  // whatever keepLast says; the model after round 1 is pruned.
  assert.equal((await store.getModel(rounds[2]!.modelBefore))!.prunedAt, null, 'M^{t0} of late-0 is kept');
  assert.notEqual((await store.getModel(rounds[0]!.modelAfter))!.prunedAt, null, 'the model after round 1 is pruned');

  const job = await coordinator.forget({ clientIds: ['late-0'], requestedBy: 'operator', method: 'rollback' });
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  assert.equal(report.jobId, job.jobId);
  assert.equal(report.t0, 3);
  assert.equal(report.roundsKeptExact, 2, 'rounds 1-2 never saw late-0 and are kept as they were');
  assert.equal(report.roundsReplayed.length, 2);
  for (const r of report.roundsReplayed) assert.ok(!r.calibrated.includes('late-0'));
  assert.ok((await store.listRounds()).every((r) => r.participants.every((p) => p.clientId !== 'late-0')));
  for (const c of [...early, ...late]) await c.close();
  await coordinator.stop();
});
