import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { FederatedClient } from '@fedunlearn/client';
import type { JobReport } from '@fedunlearn/coordinator';
import { runSimulation, DEFAULT_CONFIG, type SimReport } from '@fedunlearn/sim';
import { federation, mnistScenario, startCoordinator, tempDir } from './support.js';

// Issue 11 section 8: the same seed and flags give the same run. Each scenario runs twice and compares what it
// selected and the sha256 of every model it made.
const tmp = tempDir('reproducible');
after(() => tmp.cleanup());
const scenario = mnistScenario(8, 40, 29);

interface RunRecord {
  rounds: { round: number; participants: string[]; sha256: string; lineage: string }[];
  job: { replayed: { sourceRound: number; calibrated: string[] }[]; modelAfter: string };
}

/** One federation from scratch: the clients connect one after another in `order`, 3 rounds, then a retrain job of
 *  one client followed by one tuning round, and one more ordinary round on the new lineage. */
async function run(name: string, order: number[], forget: (first: string[]) => string): Promise<RunRecord> {
  const { coordinator, url } = await startCoordinator(`${tmp.dir}/${name}`, scenario.def, federation({ clientsPerRound: 4, minClients: 2, seed: 29 }));
  const clients: FederatedClient[] = [];
  try {
    for (const i of order) {
      const c = new FederatedClient({ url, clientId: `device-${i}`, secret: `secret-of-device-${i}`, data: scenario.parts[i]!, reconnect: { delayMs: 100, maxDelayMs: 500 } });
      clients.push(c);
      await c.connect();
    }
    const trained = await coordinator.runRounds(3);
    const job = await coordinator.forget({ clientIds: [forget(trained[0]!.participants)], method: 'retrain', params: { tuneRounds: 1 }, requestedBy: 'operator:test' });
    await coordinator.runPendingJobs();
    const done = (await coordinator.store.getJob(job.jobId))!;
    assert.equal(done.state, 'done', String(done.error));
    await coordinator.runRounds(1);
    const report = done.report as JobReport;
    const rounds = (await coordinator.store.listModels()).filter((m) => m.cause === 'round');
    return {
      rounds: await Promise.all(
        [...(await coordinator.store.listRounds({ lineage: rounds[0]!.lineage })), ...(await coordinator.store.listRounds())].map(async (r) => ({
          round: r.round,
          lineage: r.lineage === rounds[0]!.lineage ? 'first' : 'after the job',
          participants: r.participants.map((p) => p.clientId),
          sha256: (await coordinator.store.getModel(r.modelAfter))!.sha256,
        })),
      ),
      job: { replayed: report.roundsReplayed.map((r) => ({ sourceRound: r.sourceRound, calibrated: r.calibrated })), modelAfter: report.modelAfter.sha256 },
    };
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await coordinator.stop();
  }
}

test('the same seed selects the same clients and makes the same models, whatever order the clients connected in', async () => {
  const ids = scenario.parts.map((_, i) => i);
  let victim = '';
  const a = await run('forward', ids, (first) => (victim = first[0]!));
  const b = await run('reverse', [...ids].reverse(), () => victim);
  // 4 of 8 clients a round: selections keyed on anything random would agree by chance in 1 of 70 rounds.
  assert.equal(a.rounds.length, 3 + 3 + 1 + 1, 'three rounds; on the new lineage the three retrained ones, the tuning round and one more');
  assert.deepEqual(b.rounds.map((r) => [r.lineage, r.round, r.participants]), a.rounds.map((r) => [r.lineage, r.round, r.participants]));
  assert.deepEqual(b.job.replayed, a.job.replayed);
  // Updates arrive in a different order in each run; the models are still bit-identical.
  assert.deepEqual(b.rounds.map((r) => r.sha256), a.rounds.map((r) => r.sha256));
  assert.equal(b.job.modelAfter, a.job.modelAfter);
});

test('the simulation run twice with one seed: the same participants in every round, the same models, the same unlearning', async () => {
  const sim = (out: string, keepData = false): Promise<SimReport> =>
    runSimulation({
      ...DEFAULT_CONFIG,
      dataset: 'fashion-mnist',
      model: 'mlp',
      clients: 8,
      clientsPerRound: 4,
      rounds: 2,
      partition: 'dirichlet:0.3',
      seed: 29,
      limitPerClass: 30,
      forget: [1],
      methods: ['retrain', 'federaser'],
      tuneRounds: [1],
      threads: 2,
      out: `${tmp.dir}/${out}`,
      quiet: true,
      keepData,
    });
  const a = await sim('sim-a');
  const b = await sim('sim-b', true);
  // Runs delete their working histories unless asked to keep them; the report stays either way.
  assert.ok(!existsSync(`${tmp.dir}/sim-a/data`) && existsSync(`${tmp.dir}/sim-a/report.md`), 'sim-a/data deleted, its report kept');
  assert.ok(existsSync(`${tmp.dir}/sim-b/data/train/history.db`), 'sim-b/data kept with keepData');
  const md = readFileSync(`${tmp.dir}/sim-a/report.md`, 'utf8');
  for (const r of a.rounds) assert.ok(md.includes(`- round ${r.round}: ${r.participantIds.join(', ')}`), `report.md lists round ${r.round}'s participants`);
  assert.deepEqual(b.rounds.map((r) => r.participantIds), a.rounds.map((r) => r.participantIds));
  assert.ok(a.rounds.every((r) => r.participantIds.length === 4));
  assert.deepEqual(b.rounds.map((r) => r.modelSha256), a.rounds.map((r) => r.modelSha256));
  assert.deepEqual(b.rounds.map((r) => r.testAccuracy), a.rounds.map((r) => r.testAccuracy));
  const rows = (r: SimReport) => r.unlearning.map((u) => [u.method, u.tuneRounds, u.modelAfter, u.testAccuracy]);
  assert.deepEqual(rows(b), rows(a));
  const replayed = (r: SimReport) => r.jobs.map((j) => j.roundsReplayed.map((x) => x.calibrated));
  assert.deepEqual(replayed(b), replayed(a));
});
