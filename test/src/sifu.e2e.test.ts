import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import type { FederatedClient } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type JobReport, type RoundRecord } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, tempDir } from './support.js';

/**
 * SIFU (issue 15, section 1) on the live fleet: the per-client removal sensitivity kept at every round's commit, a
 * certified forget job through the operator API that rolls back to the latest round within its budget, adds the
 * calibrated noise and continues with the remaining clients, and a second request on the lineage the first one left.
 * A real coordinator, real SDK clients, real sockets. The expected figures are recomputed here from the stored
 * history with the formulas the docstrings state (sensitivity.ts, sifu.ts), not read from the method.
 */

const scenario = mnistScenario(4, 30);
const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));

/** The operator CLI against a running coordinator. */
function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  proc.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise((resolve) => proc.on('close', (code) => resolve({ code, stdout, stderr })));
}
const dirs: { cleanup(): void }[] = [];
after(() => dirs.forEach((d) => d.cleanup()));

/** sqrt(2 ln(1.25/delta)) / epsilon at the defaults (epsilon 0.5, delta 1e-5). */
const MULTIPLIER = Math.sqrt(2 * Math.log(1.25 / 1e-5)) / 0.5;

function norm(v: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < v.length; i++) s += v[i]! * v[i]!;
  return Math.sqrt(s);
}

function diff(a: Float32Array, b: Float32Array): Float64Array {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! - b[i]!;
  return out;
}

const close = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);

/** Psi(j, c) for j = 0..rounds.length under B = 1 (the default): the running sum of c's kept sensitivities. */
function psiOf(rounds: readonly RoundRecord[], clientId: string): number[] {
  const out = [0];
  for (const r of rounds) out.push(out.at(-1)! + (r.participants.find((p) => p.clientId === clientId)?.sensitivity ?? 0));
  return out;
}

test('each commit keeps p/(1-p) (||U|| + ||agg||) per client; a sifu job rolls back to the latest round within its budget, adds the noise and continues; a second request accumulates over the new lineage', async () => {
  const tmp = tempDir('sifu');
  dirs.push(tmp);
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    federation: federation({ clientsPerRound: 4, waitForClientsMs: 5_000 }),
    historyInterval: 1,
    enrolment: 'open',
    // The models a forgotten client shaped stay readable, so that only SIFU's own rule keeps the second job off the
    // first one's unperturbed models (with 'erase', the default, they are gone anyway).
    modelsAfterForget: 'keep',
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  const post = async (body: unknown) => {
    const res = await fetch(`${url}/v1/jobs`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${coordinator.operatorToken}` }, body: JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as { jobId: string; error?: { message: string } } };
  };
  const clients: FederatedClient[] = [];
  // late-0 joins for round 4 of 6.
  clients.push(...(await connectClients(url, scenario.parts.slice(0, 3), 'early')));
  await coordinator.runRounds(3);
  clients.push(...(await connectClients(url, [scenario.parts[3]!], 'late')));
  await coordinator.runRounds(3);

  // 1. The sensitivity kept at commit, recomputed from the stored norms and the two models of each round.
  const old = await coordinator.store.listRounds();
  assert.equal(old.length, 6);
  const models: Float32Array[] = [await coordinator.store.readModel(old[0]!.modelBefore)];
  for (const r of old) models.push(await coordinator.store.readModel(r.modelAfter));
  for (const [i, r] of old.entries()) {
    const agg = norm(diff(models[i + 1]!, models[i]!));
    const total = r.participants.reduce((a, p) => a + p.numExamples, 0);
    assert.ok(r.participants.length >= 3);
    for (const p of r.participants) {
      const share = p.numExamples / total;
      assert.ok(p.sensitivity !== undefined, `round ${r.round}, ${p.clientId}: no sensitivity kept`);
      close(p.sensitivity!, (share / (1 - share)) * (norm(p.norms) + agg), `round ${r.round}, ${p.clientId}`);
    }
  }

  // 2. Bad SIFU parameters are refused at submission, with nothing queued.
  const bad = await post({ clientIds: ['late-0'], method: 'sifu', params: { epsilon: 1 } });
  assert.equal(bad.status, 400);
  assert.equal((await coordinator.store.listJobs({})).length, 0);

  // 3. A sigma whose budget lies between Psi after round 5 and after round 6: the job must roll back to round 5.
  const psi = psiOf(old, 'late-0');
  assert.deepEqual(psi.slice(0, 4), [0, 0, 0, 0], 'late-0 took no part in rounds 1-3');
  assert.ok(psi[5]! < psi[6]!);
  const sigma = (MULTIPLIER * (psi[5]! + psi[6]!)) / 2;
  // Asked for through the operator CLI, which passes SIFU's parameters.
  const auth = ['--url', url, '--token', coordinator.operatorToken!];
  const queued = await cli(['forget', 'late-0', '--method', 'sifu', '--sigma', String(sigma), ...auth, '--json']);
  assert.equal(queued.code, 0, queued.stderr);
  assert.deepEqual(JSON.parse(queued.stdout).params, { sigma });
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  const cert = report.certificate!;
  assert.ok(cert, 'a sifu report carries its certificate');
  assert.equal(report.method, 'sifu');
  assert.equal(report.exact, false);
  assert.equal(report.t0, 4);
  assert.equal(report.roundsKeptExact, 3, 'only the rounds before t0 are exact');
  assert.deepEqual(report.params, { tuneRounds: 0, epsilon: 0.5, delta: 1e-5, sigma, lipschitz: 1 });
  assert.equal(cert.epsilon, 0.5);
  assert.equal(cert.delta, 1e-5);
  assert.equal(cert.sigma, sigma);
  close(cert.noiseMultiplier, MULTIPLIER, 'multiplier');
  close(cert.budget, sigma / MULTIPLIER, 'budget');
  assert.equal(cert.rollbackRound, 5);
  assert.equal(cert.rollbackModel, old[4]!.modelAfter);
  close(cert.bound, psi[5]!, 'bound');
  assert.ok(cert.bound <= cert.budget);
  close(cert.headBound, psi[6]!, 'head bound');
  close(cert.sigmaToKeepHead!, psi[6]! * MULTIPLIER, 'sigma that would have kept the head');
  assert.deepEqual(cert.constants, { lipschitz: 1 });
  assert.ok(cert.assumptions.some((a) => a.includes('MLP/CNN')), 'the report says where our models fall outside the assumptions');
  const shown = await cli(['report', done!.jobId, ...auth]);
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /^certificate\s+\(epsilon 0\.5, delta 0\.00001\) with sigma /m);
  assert.match(shown.stdout, new RegExp(`^rolled back to\\s+round 5 \\(${cert.rollbackModel}\\); bound \\S+ <= budget \\S+$`, 'm'));
  assert.match(shown.stdout, /^assumes\s+the per-round sensitivity/m);

  // The new lineage starts at the rollback round: rounds 1-5 kept (late-0's rows gone), the perturbation as round 6,
  // then round 6 of the old schedule with its remaining clients as round 7.
  const fresh = await coordinator.store.listRounds();
  assert.deepEqual(fresh.map((r) => r.round), [1, 2, 3, 4, 5, 6, 7]);
  for (let i = 0; i < 5; i++) {
    assert.equal(fresh[i]!.modelAfter, old[i]!.modelAfter);
    assert.deepEqual(fresh[i]!.participants.map((p) => p.clientId).sort(), old[i]!.participants.map((p) => p.clientId).filter((id) => id !== 'late-0').sort());
    for (const p of fresh[i]!.participants) assert.equal(p.sensitivity, old[i]!.participants.find((q) => q.clientId === p.clientId)!.sensitivity, 'kept rounds keep their sensitivities');
  }
  const noise = fresh[5]!;
  assert.deepEqual(noise.participants, []);
  assert.equal(noise.metrics.sifuNoiseSigma, sigma);
  const perturbed = diff(await coordinator.store.readModel(noise.modelAfter), models[5]!);
  const sd = norm(perturbed) / Math.sqrt(perturbed.length);
  assert.ok(Math.abs(sd - sigma) < 0.02 * sigma, `the perturbation's standard deviation ${sd} is sigma ${sigma}`);
  assert.equal(fresh[6]!.metrics.sourceRound, 6);
  assert.deepEqual(fresh[6]!.participants.map((p) => p.clientId).sort(), ['early-0', 'early-1', 'early-2']);
  assert.ok(fresh[6]!.participants.every((p) => p.sensitivity !== undefined), 'rounds a job commits keep sensitivities too');
  assert.ok(fresh.every((r) => r.participants.every((p) => p.clientId !== 'late-0')));
  assert.equal((await coordinator.store.getModel(old[4]!.modelAfter))!.erasedAt, null, "modelsAfterForget 'keep'");

  // 4. A second request, on the lineage the first one left: the bound runs over that lineage (the kept rounds with
  // early-2's kept sensitivities, the perturbation adding nothing, the continued round). A budget between Psi after
  // round 4 and after round 5 would allow the model after round 4, but that one carries late-0's contribution without
  // the first job's noise (it lies between that job's t0 and its perturbation): the job rolls back to round 3.
  const psi2 = psiOf(fresh, 'early-2');
  assert.equal(psi2[6], psi2[5], 'the perturbation adds nothing to the bound');
  assert.ok(psi2[4]! < psi2[5]!);
  const sigma2 = (MULTIPLIER * (psi2[4]! + psi2[5]!)) / 2;
  const second = await post({ clientIds: ['early-2'], method: 'sifu', params: { sigma: sigma2 } });
  assert.equal(second.status, 202, JSON.stringify(second.body));
  const [done2] = await coordinator.runPendingJobs();
  assert.equal(done2!.state, 'done', done2!.error ?? '');
  const cert2 = (done2!.report as JobReport).certificate!;
  assert.equal(cert2.rollbackRound, 3);
  assert.equal(cert2.rollbackModel, fresh[2]!.modelAfter);
  close(cert2.bound, psi2[3]!, 'second bound');
  close(cert2.headBound, psi2[7]!, 'second head bound: over the whole new lineage');
  // Rounds 1-3 kept, the perturbation as round 4, then rounds 4, 5 and 7 of that lineage (its perturbation, round 6,
  // is not trained again) with early-0 and early-1.
  const third = await coordinator.store.listRounds();
  assert.deepEqual(third.map((r) => r.round), [1, 2, 3, 4, 5, 6, 7]);
  assert.equal(third[3]!.metrics.sifuNoiseSigma, sigma2);
  assert.deepEqual(third.slice(4).map((r) => r.metrics.sourceRound), [4, 5, 7]);
  for (const r of third.slice(4)) assert.deepEqual(r.participants.map((p) => p.clientId).sort(), ['early-0', 'early-1']);
  assert.ok(third.every((r) => r.participants.every((p) => p.clientId !== 'early-2' && p.clientId !== 'late-0')));

  for (const c of clients) await c.close();
  await coordinator.stop();
});

test('a later job whose client joined inside a sifu job\'s unperturbed rounds starts before them, never from a model that holds the earlier client without noise', async () => {
  const tmp = tempDir('sifu-after');
  dirs.push(tmp);
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    federation: federation({ clientsPerRound: 5, waitForClientsMs: 5_000 }),
    historyInterval: 1,
    enrolment: 'open',
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  const clients: FederatedClient[] = [];
  // late-0 joins for round 4, later-0 for round 5, of 6.
  clients.push(...(await connectClients(url, scenario.parts.slice(0, 2), 'early')));
  await coordinator.runRounds(3);
  clients.push(...(await connectClients(url, [scenario.parts[2]!], 'late')));
  await coordinator.runRounds(1);
  clients.push(...(await connectClients(url, [scenario.parts[3]!], 'later')));
  await coordinator.runRounds(2);
  const old = await coordinator.store.listRounds();
  const psi = psiOf(old, 'late-0');
  const sigma = (MULTIPLIER * (psi[5]! + psi[6]!)) / 2;
  await coordinator.forget({ clientIds: ['late-0'], method: 'sifu', params: { sigma }, requestedBy: 'operator:test' });
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  assert.equal((done!.report as JobReport).certificate!.rollbackRound, 5, 'rounds 4 and 5 kept: the segment holds later-0 first round');

  // later-0's t0 is round 5, inside the segment (late-0's t0 = round 4 up to the perturbation): rollback starts before
  // round 4, from the model late-0 never saw, instead of the model after round 4 (erased with late-0's contribution).
  await coordinator.forget({ clientIds: ['later-0'], method: 'rollback', requestedBy: 'operator:test' });
  const [done2] = await coordinator.runPendingJobs();
  assert.equal(done2!.state, 'done', done2!.error ?? '');
  const report = done2!.report as JobReport;
  assert.equal(report.startModel?.version, old[3]!.modelBefore);
  assert.equal(report.roundsKeptExact, 3);
  assert.ok(report.notes.some((n) => n.startsWith('started before round 4, not at t0 = round 5')), report.notes.join('\n'));
  for (const c of clients) await c.close();
  await coordinator.stop();
});
