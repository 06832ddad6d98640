import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { FederatedClient } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type CoordinatorOptions, type JobRecord, type JobReport, type JobWaiting } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, tempDir, waitUntil } from './support.js';

/**
 * Forget jobs as a new user meets them (issue 11, sections 1, 2, 5 and 7): replay starts at t0, requests with nothing
 * or everything to forget, duplicates, offline clients, and what the report says. A real coordinator, real SDK
 * clients, real sockets.
 */

const scenario = mnistScenario(4, 30);
const dirs: { cleanup(): void }[] = [];
after(() => dirs.forEach((d) => d.cleanup()));
const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));

async function start(prefix: string, over: Partial<CoordinatorOptions> = {}): Promise<{ coordinator: Coordinator; url: string }> {
  const tmp = tempDir(prefix);
  dirs.push(tmp);
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    federation: federation({ clientsPerRound: 4, waitForClientsMs: 5_000 }),
    historyInterval: 1,
    enrolment: 'open',
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
    ...over,
  });
  const { url } = await coordinator.listen(0);
  tokens.set(url, coordinator.operatorToken!);
  return { coordinator, url };
}

/** The operator token each coordinator of this file was made with (the API is closed by default). */
const tokens = new Map<string, string>();

async function http<T = unknown>(url: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
  const authorization = `Bearer ${tokens.get(url) ?? ''}`;
  const res = await fetch(url + path, body === undefined ? { headers: { authorization } } : { method: 'POST', headers: { 'content-type': 'application/json', authorization }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as T };
}

async function closeAll(clients: FederatedClient[]): Promise<void> {
  for (const c of clients) await c.close();
}

test('federaser and replay start at t0, the first round a forgotten client took part in; the rounds before it are kept exact; the report says so with the parameters applied', async () => {
  const { coordinator, url } = await start('t0');
  // late-3 joins for round 4 of 6: rounds 1-3 never saw it.
  const early = await connectClients(url, scenario.parts.slice(0, 3), 'early');
  await coordinator.runRounds(3);
  const late = await connectClients(url, [scenario.parts[3]!], 'late');
  await coordinator.runRounds(3);
  const old = await coordinator.store.listRounds();
  assert.deepEqual(
    old.map((r) => r.participants.some((p) => p.clientId === 'late-0')),
    [false, false, false, true, true, true],
  );
  const job = await coordinator.forget({ clientIds: ['late-0'], method: 'federaser', requestedBy: 'operator:test' });
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  assert.equal(report.jobId, job.jobId);
  assert.equal(report.t0, 4);
  assert.equal(report.roundsKeptExact, 3);
  assert.deepEqual(report.exactPrefix, { fromRound: 1, toRound: 3 });
  assert.equal(report.startModel?.version, old[3]!.modelBefore, 'started from the model before round 4');
  assert.equal(report.startModel?.sha256, (await coordinator.store.getModel(old[2]!.modelAfter))!.sha256);
  assert.deepEqual(report.roundsReplayed.map((r) => r.sourceRound), [4, 5, 6], 'only the stored rounds from t0 on were replayed');
  assert.deepEqual(report.roundsReplayed.map((r) => r.round), [4, 5, 6]);
  // Three calibration steps of three clients, not six: half the client work of a replay from the initial model.
  assert.equal(report.cost.tasks, 9);
  // The parameters actually applied, defaults included (r = 0.5 is FedEraser's default).
  assert.deepEqual(report.params, { tuneRounds: 0, calibrationRatio: 0.5, reuseFirstRound: false, fullHistory: false });
  assert.equal(report.contributionRemoved, true);

  // The new lineage holds the kept rounds as they were (same models, participants, stored updates), then the replay.
  const fresh = await coordinator.store.listRounds();
  assert.equal(fresh.length, 6);
  for (let i = 0; i < 3; i++) {
    assert.equal(fresh[i]!.modelBefore, old[i]!.modelBefore);
    assert.equal(fresh[i]!.modelAfter, old[i]!.modelAfter);
    assert.deepEqual(fresh[i]!.participants.map((p) => p.clientId).sort(), old[i]!.participants.map((p) => p.clientId).sort());
    for (const p of fresh[i]!.participants) {
      assert.ok(p.hasUpdate);
      assert.deepEqual(await coordinator.store.readUpdate(fresh[i]!.roundId, p.clientId), await coordinator.store.readUpdate(old[i]!.roundId, p.clientId));
    }
  }
  assert.equal(fresh[3]!.modelBefore, old[3]!.modelBefore);
  assert.ok(fresh.every((r) => r.participants.every((p) => p.clientId !== 'late-0')));
  // The kept models were not erased with late-0's contribution; the ones it shaped were.
  assert.equal((await coordinator.store.getModel(old[2]!.modelAfter))!.erasedAt, null);
  assert.notEqual((await coordinator.store.getModel(old[3]!.modelAfter))!.erasedAt, null);

  // The new lineage is a history a later job can replay in turn: server-side replay of early-2, who took part from
  // round 1 (t0 = 1, nothing kept).
  const second = await coordinator.forget({ clientIds: ['early-2'], method: 'replay', requestedBy: 'operator:test' });
  const [done2] = await coordinator.runPendingJobs();
  assert.equal(done2!.state, 'done', done2!.error ?? '');
  const r2 = done2!.report as JobReport;
  assert.equal(r2.jobId, second.jobId);
  assert.equal(r2.t0, 1);
  assert.equal(r2.roundsKeptExact, 0);
  assert.deepEqual(r2.roundsReplayed.map((r) => r.sourceRound), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(r2.params, { tuneRounds: 0, fullHistory: false });
  await closeAll([...early, ...late]);
  await coordinator.stop();
});

test('rollback keeps the rounds before t0 and retrains from there; replay from t0 re-applies only rounds from t0', async () => {
  const { coordinator, url } = await start('t0-rollback');
  const early = await connectClients(url, scenario.parts.slice(0, 3), 'early');
  await coordinator.runRounds(2);
  const late = await connectClients(url, [scenario.parts[3]!], 'late');
  await coordinator.runRounds(2);
  const old = await coordinator.store.listRounds();
  await coordinator.forget({ clientIds: ['late-0'], method: 'rollback', requestedBy: 'operator:test' });
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  assert.equal(report.t0, 3);
  assert.equal(report.roundsKeptExact, 2);
  assert.equal(report.startModel?.version, old[2]!.modelBefore);
  assert.deepEqual(report.roundsReplayed.map((r) => r.sourceRound), [3, 4]);
  assert.deepEqual((await coordinator.store.listRounds()).slice(0, 2).map((r) => r.modelAfter), old.slice(0, 2).map((r) => r.modelAfter), 'kept models are referenced, not copied');
  await closeAll([...early, ...late]);
  await coordinator.stop();
});

test('a client that never took part: the job completes without touching the model, says so, and still tombstones and purges', async () => {
  const { coordinator, url } = await start('never');
  const clients = await connectClients(url, scenario.parts.slice(0, 3), 'dev');
  await coordinator.runRounds(2);
  const ghost = await coordinator.issueClient('ghost-1');
  assert.equal(ghost.clientId, 'ghost-1');
  const head = await coordinator.store.head();
  const rounds = (await coordinator.store.listRounds()).length;
  for (const method of ['federaser'] as const) {
    const posted = await http<JobRecord>(url, '/v1/jobs', { clientIds: ['ghost-1'], method });
    assert.equal(posted.status, 202);
    const [done] = await coordinator.runPendingJobs();
    assert.equal(done!.state, 'done', done!.error ?? '');
    const report = done!.report as JobReport;
    assert.equal(report.modelAfter.version, head.version, 'same model version');
    assert.equal(report.modelAfter.sha256, head.sha256, 'same weights');
    assert.equal(report.contributionRemoved, false);
    assert.equal(report.t0, null);
    assert.deepEqual(report.roundsReplayed, []);
    assert.equal(report.cost.tasks, 0, 'no client work');
    assert.ok(report.notes.some((n) => n.startsWith('no contribution to remove')), report.notes.join('; '));
  }
  assert.equal((await coordinator.store.head()).version, head.version);
  assert.equal((await coordinator.store.listRounds()).length, rounds, 'no new lineage');
  assert.equal(coordinator.model().version, head.version);
  const tomb = (await coordinator.store.getClient('ghost-1'))!;
  assert.equal(tomb.forgotten, true, 'tombstoned');
  assert.equal(tomb.secretHash, null, 'its credential purged');
  assert.equal((await coordinator.isForgotten('ghost-1')), true);
  // Training goes on from the same model.
  const [r] = await coordinator.runRounds(1);
  assert.equal((await coordinator.store.getModel(r!.model.version))!.parent, head.version);
  await closeAll(clients);
  await coordinator.stop();
});

test('the same client twice, also at once: one job, the second request answers with it; a different request for it is a conflict', async () => {
  const { coordinator, url } = await start('dup');
  const clients = await connectClients(url, scenario.parts, 'dup');
  await coordinator.runRounds(2);
  const lineages = new Set((await coordinator.store.listModels()).map((m) => m.lineage)).size;
  // Two POSTs at once over two sockets.
  const [a, b] = await Promise.all([http<JobRecord>(url, '/v1/jobs', { clientIds: ['dup-1'] }), http<JobRecord>(url, '/v1/jobs', { clientIds: ['dup-1'] })]);
  assert.deepEqual([a.status, b.status].sort(), [200, 202], 'one created, one answered with it');
  assert.equal(a.body.jobId, b.body.jobId);
  // The same client with another method, or in another set, while it is in progress: a clear conflict.
  const other = await http<{ error: { code: string; message: string } }>(url, '/v1/jobs', { clientIds: ['dup-1'], method: 'retrain' });
  assert.equal(other.status, 409);
  assert.equal(other.body.error.code, 'JOB_CONFLICT');
  assert.match(other.body.error.message, new RegExp(a.body.jobId));
  const wider = await http<{ error: { code: string } }>(url, '/v1/jobs', { clientIds: ['dup-1', 'dup-2'] });
  assert.equal(wider.status, 409);
  assert.equal(wider.body.error.code, 'JOB_CONFLICT');
  // The SDK path: the client asks twice at once, and gets the same job (the operator's, which covers it).
  const [s1, s2] = await Promise.all([clients[1]!.forget('leaving'), clients[1]!.forget('leaving, again')]);
  assert.equal(s1, a.body.jobId);
  assert.equal(s2, a.body.jobId);
  // dup-3 asks twice at once through its SDK with no job in progress: one job.
  const [t1, t2] = await Promise.all([clients[3]!.forget('bye'), clients[3]!.forget('bye again')]);
  assert.equal(t1, t2);
  assert.equal((await coordinator.store.listJobs()).length, 2, 'one job per client, not one per request');
  const ran = await coordinator.runPendingJobs();
  assert.deepEqual(ran.map((j) => j.state), ['done', 'done']);
  assert.equal(new Set((await coordinator.store.listModels()).map((m) => m.lineage)).size, lineages + 2, 'one new lineage per job, no extra replay');
  await closeAll(clients);
  await coordinator.stop();
});

test('forgetting every client, or every client that took part, is refused at submission and changes nothing', async () => {
  const { coordinator, url } = await start('all');
  const clients = await connectClients(url, scenario.parts.slice(0, 2), 'all');
  await coordinator.runRounds(2);
  (await coordinator.issueClient('bystander')); // registered, never took part
  const head = await coordinator.store.head();
  const every = await http<{ error: { code: string; message: string } }>(url, '/v1/jobs', { clientIds: ['all-0', 'all-1', 'bystander'] });
  assert.equal(every.status, 422);
  assert.equal(every.body.error.code, 'FORGET_REFUSED');
  assert.match(every.body.error.message, /every client/);
  const tookPart = await http<{ error: { code: string; message: string } }>(url, '/v1/jobs', { clientIds: ['all-0', 'all-1'], method: 'rollback' });
  assert.equal(tookPart.status, 422);
  assert.equal(tookPart.body.error.code, 'FORGET_REFUSED');
  assert.match(tookPart.body.error.message, /every client that took part/);
  assert.deepEqual((await coordinator.store.listJobs()), [], 'no job was created');
  assert.equal((await coordinator.store.head()).version, head.version);
  assert.equal((await coordinator.store.getClient('all-0'))!.forgotten, false);
  // The SDK path is refused the same way when its client is the last one that took part.
  await clients[1]!.close();
  const solo = await start('all-solo', { federation: federation({ clientsPerRound: 1, minClients: 1 }) });
  const only = await connectClients(solo.url, scenario.parts.slice(0, 1), 'solo');
  await solo.coordinator.runRounds(1);
  await assert.rejects(only[0]!.forget('last one'), /FORGET_REFUSED/);
  assert.deepEqual((await solo.coordinator.store.listJobs()), []);
  await closeAll([...clients, ...only]);
  await coordinator.stop();
  await solo.coordinator.stop();
});

test("'replay' under retention 'norms' is refused at submission with the reason; federaser still runs", async () => {
  const { coordinator, url } = await start('norms', { retention: 'norms' });
  const clients = await connectClients(url, scenario.parts.slice(0, 3), 'nrm');
  await coordinator.runRounds(2);
  const res = await http<{ error: { code: string; message: string } }>(url, '/v1/jobs', { clientIds: ['nrm-0'], method: 'replay' });
  assert.equal(res.status, 422);
  assert.equal(res.body.error.code, 'FORGET_REFUSED');
  assert.match(res.body.error.message, /retention 'norms'/);
  assert.deepEqual((await coordinator.store.listJobs()), []);
  const ok = await http<JobRecord>(url, '/v1/jobs', { clientIds: ['nrm-0'], method: 'federaser' });
  assert.equal(ok.status, 202);
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  await closeAll(clients);
  await coordinator.stop();
});

test('a job whose clients are offline shows whom it waits for (API and CLI), for a bounded time, then fails with nothing changed', async () => {
  const { coordinator, url } = await start('offline', { jobs: { waitMs: 2_500, policy: 'fail' } });
  const clients = await connectClients(url, scenario.parts.slice(0, 3), 'off');
  await coordinator.runRounds(2);
  await closeAll(clients);
  await waitUntil(() => coordinator.registry.size === 0, 10_000, 'every client gone');
  const head = await coordinator.store.head();
  // The operator's command, as issued: forget --wait with nobody connected.
  const cli = spawn(process.execPath, [CLI, 'forget', 'off-0', '--method', 'federaser', '--wait', '--poll-ms', '100', '--url', url], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, FEDUNLEARN_OPERATOR_TOKEN: tokens.get(url)! },
  });
  let stderr = '';
  cli.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => cli.on('exit', (code) => resolve(code)));
  await waitUntil(async () => (await coordinator.store.listJobs()).length === 1, 10_000, 'the job queued');
  const seen: JobWaiting[] = [];
  coordinator.on('jobProgress', (j) => {
    const w = (j.progress as { waiting?: JobWaiting }).waiting;
    if (w) seen.push(w);
  });
  const running = coordinator.runPendingJobs();
  await waitUntil(() => seen.length > 0, 10_000, 'the job to say it waits');
  const api = await http<JobRecord & { progress: { waiting?: JobWaiting } }>(url, `/v1/jobs/${(await coordinator.store.listJobs())[0]!.jobId}`);
  const w = api.body.progress.waiting!;
  assert.ok(w, `the API shows the wait: ${JSON.stringify(api.body.progress)}`);
  assert.equal(w.connected, 0);
  assert.equal(w.of, 2);
  assert.deepEqual([...w.clientIds].sort(), ['off-1', 'off-2']);
  assert.equal(w.policy, 'fail');
  assert.ok(w.until > w.since);
  assert.match(api.body.progress.message ?? '', /waiting for clients: 0 of 2 connected/);
  const [done] = await running;
  assert.equal(done!.state, 'failed');
  assert.match(done!.error ?? '', /stayed offline.*nothing changed/);
  assert.equal(await exited, 1);
  assert.match(stderr, /waiting for clients: 0 of 2 connected, 2 needed; offline: (off-1, off-2|off-2, off-1); until /);
  assert.match(stderr, /failed: .*stayed offline/);
  // Nothing changed: same head, same history, the client is not forgotten.
  assert.equal((await coordinator.store.head()).version, head.version);
  assert.equal((await coordinator.store.getClient('off-0'))!.forgotten, false);
  assert.equal((await coordinator.isForgotten('off-0')), false);
  await coordinator.stop();
});

test('a waiting job goes on as soon as its clients reconnect', async () => {
  const { coordinator, url } = await start('offline-back', { jobs: { waitMs: 120_000, policy: 'fail' } });
  const clients = await connectClients(url, scenario.parts.slice(0, 3), 'back');
  await coordinator.runRounds(2);
  await closeAll(clients);
  await waitUntil(() => coordinator.registry.size === 0, 10_000, 'every client gone');
  await coordinator.forget({ clientIds: ['back-0'], requestedBy: 'operator:test' });
  let waiting = false;
  coordinator.on('jobProgress', (j) => (waiting ||= (j.progress as { waiting?: JobWaiting }).waiting !== undefined));
  const running = coordinator.runPendingJobs();
  await waitUntil(() => waiting, 10_000, 'the job to wait');
  const back = await connectClients(url, scenario.parts.slice(1, 3), 'back-again');
  // Different ids do not count: the step waits for its own clients (back-1, back-2).
  assert.equal((await coordinator.store.listJobs())[0]!.state, 'running');
  // Its own remaining clients come back (back-0 is the one being forgotten: its hello may meet the tombstone once the
  // job ends, so it does not reconnect here).
  const again = [1, 2].map((i) => new FederatedClient({ url, clientId: `back-${i}`, secret: `secret-of-back-${i}`, data: scenario.parts[i]!, reconnect: { delayMs: 100, maxDelayMs: 500 } }));
  await Promise.all(again.map((c) => c.connect()));
  const [done] = await running;
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  assert.ok(report.offline.waitedMs > 0);
  assert.ok(report.roundsReplayed.every((r) => r.calibrated.length === 2), JSON.stringify(report.roundsReplayed));
  await closeAll([...back, ...again]);
  await coordinator.stop();
});

test("offline policy 'server-side': after the wait, calibration steps are completed from the offline clients' stored updates, named in the report", async () => {
  const { coordinator, url } = await start('offline-server', { jobs: { waitMs: 1_000, policy: 'server-side' } });
  const clients = await connectClients(url, scenario.parts.slice(0, 3), 'srv');
  await coordinator.runRounds(2);
  await closeAll(clients);
  await waitUntil(() => coordinator.registry.size === 0, 10_000, 'every client gone');
  const head = await coordinator.store.head();
  await coordinator.forget({ clientIds: ['srv-0'], method: 'federaser', requestedBy: 'operator:test' });
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  assert.notEqual(report.modelAfter.sha256, head.sha256);
  assert.deepEqual([...report.offline.completedServerSide].sort(), ['srv-1', 'srv-2']);
  assert.equal(report.offline.policy, 'server-side');
  for (const r of report.roundsReplayed) {
    assert.deepEqual([...r.uncalibrated].sort(), ['srv-1', 'srv-2']);
    assert.deepEqual(r.calibrated, []);
  }
  assert.equal(report.cost.tasks, 0);
  assert.equal((await coordinator.store.getClient('srv-0'))!.forgotten, true);
  // An exact method is never completed server-side: it fails, nothing changed.
  const before = await coordinator.store.head();
  await coordinator.forget({ clientIds: ['srv-1'], method: 'retrain', requestedBy: 'operator:test' });
  const [exact] = await coordinator.runPendingJobs();
  assert.equal(exact!.state, 'failed');
  assert.match(exact!.error ?? '', /never completed server-side/);
  assert.equal((await coordinator.store.head()).version, before.version);
  await coordinator.stop();
});
