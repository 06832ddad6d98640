import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { FederatedClient } from '@fedunlearn/client';
import type { JobReport, RoundOutcome } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, startCoordinator, tempDir, waitUntil } from './support.js';

const scenario = mnistScenario(4, 60);
const dirs: { cleanup(): void }[] = [];
after(() => dirs.forEach((d) => d.cleanup()));

test('a client asks through its SDK to be forgotten: the job runs live, the model changes, its data is purged, training resumes without it', async () => {
  const tmp = tempDir('forget');
  dirs.push(tmp);
  const { coordinator, url } = await startCoordinator(tmp.dir, scenario.def, federation({ clientsPerRound: 4 }), 1);
  const clients = await connectClients(url, scenario.parts);
  const rounds: RoundOutcome[] = [];
  coordinator.on('round', (r) => rounds.push(r));
  coordinator.start();
  await waitUntil(() => rounds.length >= 2, 60_000, 'two training rounds');
  const oldRounds = await coordinator.store.listRounds();
  assert.ok(oldRounds.some((r) => r.participants.some((p) => p.clientId === 'device-0' && p.hasUpdate)), 'device-0 contributed stored updates');

  // A forged identity cannot act for device-0.
  const forger = new FederatedClient({ url, clientId: 'device-0', secret: 'not-the-secret', data: scenario.parts[1]! });
  await assert.rejects(forger.connect(5_000), /UNAUTHENTICATED/);
  await forger.close();

  const progress: string[] = [];
  clients[0]!.on('job', (j) => progress.push(j.state));
  const told: string[] = [];
  clients[0]!.on('serverError', (e) => told.push(`${e.code}: ${e.message}`));
  const jobId = await clients[0]!.forget('leaving');
  const final = await clients[0]!.waitForJob(jobId);
  assert.equal(final.state, 'done', final.message);
  assert.ok(progress.includes('running'), 'the SDK saw the job running');
  const report = final.report as JobReport;
  assert.deepEqual(report.clientsForgotten, ['device-0']);
  assert.equal(report.requestedBy, 'client:device-0');
  assert.equal(report.method, 'federaser');
  assert.notEqual(report.modelAfter.version, report.modelBefore.version);
  assert.notEqual(report.modelAfter.sha256, report.modelBefore.sha256);
  assert.equal(final.modelVersionAfter, report.modelAfter.version);
  assert.ok(report.roundsReplayed.length >= 2);
  for (const r of report.roundsReplayed) {
    assert.ok(!r.calibrated.includes('device-0'));
    assert.ok(r.calibrated.length >= 1);
  }
  assert.ok(report.purged.updatesDeleted >= 2, `device-0's stored updates were purged (${report.purged.updatesDeleted})`);
  assert.ok(report.cost.clientSampleEpochs > 0);

  // Nothing of device-0 is left in the store, in the new lineage or the old one.
  const store = coordinator.store;
  for (const r of oldRounds) assert.equal(await store.readUpdate(r.roundId, 'device-0'), null);
  const oldLineage = await store.listRounds({ lineage: oldRounds[0]!.lineage });
  assert.ok(oldLineage.every((r) => r.participants.every((p) => p.clientId !== 'device-0')));
  assert.ok((await store.listRounds()).every((r) => r.participants.every((p) => p.clientId !== 'device-0')));
  const tombstone = await store.getClient('device-0');
  assert.equal(tombstone?.forgotten, true, 'only a tombstone is left, so that the request is honoured');
  assert.equal(tombstone?.secretHash, null);
  assert.equal(tombstone?.numExamples, 0);
  assert.equal((await store.getModel(report.modelAfter.version))?.jobId, jobId);
  assert.equal((await store.getModel(report.modelAfter.version))?.cause, 'unlearning');

  // Once its final status is delivered, the forgotten client is told why and disconnected, and cannot come back.
  await waitUntil(() => !coordinator.registry.get('device-0'), 10_000, 'device-0 disconnected');
  await waitUntil(() => told.some((m) => m.startsWith('PERMISSION_DENIED')), 10_000, 'device-0 told it was forgotten');
  const again = new FederatedClient({ url, clientId: 'device-0', secret: 'secret-of-device-0', data: scenario.parts[0]! });
  await assert.rejects(again.connect(5_000), /PERMISSION_DENIED/);
  await again.close();

  // Training resumes from the unlearned model, without device-0.
  const seen = rounds.length;
  await waitUntil(() => rounds.length >= seen + 1, 60_000, 'a round after the job');
  const resumed = rounds.at(-1)!;
  assert.ok(!resumed.participants.includes('device-0'));
  assert.equal((await store.getModel(resumed.model.version))?.lineage, (await store.getModel(report.modelAfter.version))?.lineage);
  for (const c of clients) await c.close();
  await coordinator.stop();
});

test('a client that drops during a replay does not hang the job; the report says who was missing', async () => {
  const tmp = tempDir('forget-drop');
  dirs.push(tmp);
  const { coordinator, url } = await startCoordinator(tmp.dir, scenario.def, federation({ clientsPerRound: 4, roundDeadlineMs: 60_000 }), 1);
  const clients = await connectClients(url, scenario.parts, 'unit');
  await coordinator.runRounds(2);
  // unit-2 vanishes when handed calibration work.
  const dropper = clients[2]!;
  dropper.on('task', () => undefined);
  const original = (dropper as unknown as { runTask: (t: { kind: number }) => Promise<void> }).runTask.bind(dropper);
  (dropper as unknown as { runTask: (t: { kind: number }) => Promise<void> }).runTask = async (t) => {
    // close() waits for the task queue this very task is in: start it without waiting on it.
    if (t.kind === 2) {
      void dropper.close();
      return;
    }
    return original(t);
  };
  const job = await coordinator.forget({ clientIds: ['unit-0'], method: 'federaser', requestedBy: 'operator:test' });
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  assert.equal(report.jobId, job.jobId);
  const missing = report.roundsReplayed.flatMap((r) => r.missing.filter((m) => m.clientId === 'unit-2').map((m) => m.reason));
  assert.ok(missing.length > 0, `unit-2 is reported missing: ${JSON.stringify(report.roundsReplayed)}`);
  // Gone when it left ('disconnected'), or not there when a later step began ('offline'): never left to the 60 s deadline.
  assert.ok(missing.every((reason) => reason === 'disconnected' || reason === 'offline'), `unit-2 missing as ${missing.join(', ')}`);
  assert.ok(report.roundsReplayed.every((r) => r.calibrated.includes('unit-1') && r.calibrated.includes('unit-3')));
  for (const c of clients) await c.close();
  await coordinator.stop();
});

test('a coordinator stopped during a job resumes it after a restart from its last completed step', async () => {
  const tmp = tempDir('forget-resume');
  dirs.push(tmp);
  const fed = federation({ clientsPerRound: 4 });
  const first = await startCoordinator(tmp.dir, scenario.def, fed, 1);
  const before = await connectClients(first.url, scenario.parts, 'res');
  await first.coordinator.runRounds(3);
  const job = await first.coordinator.forget({ clientIds: ['res-0'], method: 'federaser', requestedBy: 'operator:test' });
  // Stop the coordinator as soon as the first replay step is checkpointed (progress announces step 2 of 3).
  let stopping: Promise<void> | null = null;
  first.coordinator.unlearning.on('progress', (j) => {
    if (j.progress.step === 1 && !stopping) stopping = first.coordinator.stop();
  });
  const interrupted = await first.coordinator.runPendingJobs().then(
    () => null,
    (e: Error) => e,
  );
  assert.ok(interrupted, 'the job was interrupted by the stop');
  await stopping;
  for (const c of before) await c.close();

  const second = await startCoordinator(tmp.dir, scenario.def, fed, 1);
  const saved = (await second.coordinator.store.getJob(job.jobId))!;
  assert.equal(saved.state, 'running', 'an interrupted job stays running, to be resumed');
  const steps = (await second.coordinator.store.jobSteps(job.jobId)).map((x) => x.data as { roundId: string; sourceRound: number });
  assert.equal(steps.length, 1, 'exactly the completed step was checkpointed');
  // The same devices come back under their enrolled identities.
  const resumedClients = await connectClients(second.url, scenario.parts, 'res');
  const [done] = await second.coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  assert.deepEqual(report.roundsReplayed.map((r) => r.sourceRound), [1, 2, 3], 'every stored round replayed once, none twice');
  assert.equal((await second.coordinator.store.listRounds())[0]!.roundId, steps[0]!.roundId, 'the first step was kept, not redone');
  assert.ok(report.cost.clientSampleEpochs > 0);
  for (const c of resumedClients) await c.close();
  await second.coordinator.stop();
});
