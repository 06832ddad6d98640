import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import seedrandom from 'seedrandom';
import type { Socket } from 'socket.io-client';
import { FederatedClient, initBackend, Trainer, type TaskInfo } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type JobReport, type MissingClient, type RoundOutcome } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { tinyDataset } from './load/tiny-data.js';
import { federation, tempDir, waitUntil } from './support.js';

/**
 * Dropouts: ten real SDK clients, three of them (30%, chosen by a seeded RNG) drop at seeded random moments: one
 * process is frozen with SIGSTOP (only the heartbeat can notice), one client closes for good, one loses its socket
 * and reconnects (twice: in a training round and in the middle of a FedEraser unlearning job). The rounds and the job
 * finish with those who answer, and every round record (read back over the operator API) and every replay step of the
 * job report names exactly the clients that were missing, with the reason.
 */

const SEED = 20261127;
const HEARTBEAT_MS = 1000;
const CLIENTS = 10;
const ONE_CLIENT = fileURLToPath(new URL('./load/one-client.js', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const children = new Set<ChildProcess>();
after(() => {
  for (const c of children) {
    c.kill('SIGCONT');
    c.kill('SIGKILL');
  }
});

/** What a client itself saw: the rounds (training) and job steps (calibration) it sent an answer for. */
interface Truth {
  trained: Set<number>;
  calibrated: Set<number>;
}
const record = (truth: Truth) => (t: TaskInfo) => (t.jobId ? truth.calibrated : truth.trained).add(t.round);

const ids = (ms: { clientId: string }[]) => ms.map((m) => m.clientId).sort();

test('30% of the clients drop at random moments during rounds and an unlearning job; the run finishes and names who was missing', { timeout: 120_000 }, async () => {
  const rng = seedrandom(String(SEED));
  const tmp = tempDir('dropouts');
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: builtInDefinition('mlp', { inputShape: [4], numClasses: 2, seed: 1 }),
    // Stated policy: a round commits with the quorum (5 of 10) among those who answer before the deadline; the
    // deadline is long so that only a dropout, never slowness, makes a client missing here.
    federation: federation({ clientsPerRound: CLIENTS, minClients: 5, roundDeadlineMs: 15_000, hyper: { learningRate: 0.1, batchSize: 8, localEpochs: 1 } }),
    historyInterval: 1,
    heartbeatIntervalMs: HEARTBEAT_MS,
    enrolment: 'open',
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  const { tf } = await initBackend(['cpu']);
  const trainer = new Trainer({ tf });
  const names = Array.from({ length: CLIENTS }, (_, i) => `device-${i}`);
  // The frozen client's process trains on more examples, so that a freeze at a random moment of a round usually
  // lands before its answer.
  const frozenId = names[CLIENTS - 1]!;
  const shuffled = names.slice(0, -1).sort(() => rng() - 0.5);
  const closedId = shuffled[0]!;
  const flakyId = shuffled[1]!;
  const forgottenId = shuffled[2]!;
  const truth = new Map(names.map((n) => [n, { trained: new Set<number>(), calibrated: new Set<number>() } as Truth]));
  const left: { clientId: string; reason: string; at: number }[] = [];
  coordinator.registry.on('left', (s, reason) => left.push({ clientId: s.clientId, reason, at: Date.now() }));

  const child = fork(ONE_CLIENT, [], { env: { ...process.env, URL: url, CLIENT_ID: frozenId, EXAMPLES: '4000' }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  const childConnected = new Promise<void>((resolve, reject) =>
    child.on('message', (m: { type: string; round?: number; jobId?: string; message?: string }) => {
      if (m.type === 'connected') resolve();
      else if (m.type === 'fatal') reject(new Error(m.message));
      else if (m.type === 'task') (m.jobId ? truth.get(frozenId)!.calibrated : truth.get(frozenId)!.trained).add(m.round!);
    }),
  );
  /** Round 4 drops the flaky client's socket in the middle of its task: when its training starts. */
  let dropWhenTraining = false;
  class DroppingTrainer extends Trainer {
    override train(...args: Parameters<Trainer['train']>): ReturnType<Trainer['train']> {
      if (dropWhenTraining) {
        dropWhenTraining = false;
        drops.push({ round: 4, clientId: flakyId, how: 'socket drop mid-task', afterMs: Date.now() - roundStartedAt, at: Date.now() });
        dropSocket(flakyId);
      }
      return super.train(...args);
    }
  }
  const flakyTrainer = new DroppingTrainer({ tf });
  const drops: { round: number; clientId: string; how: string; afterMs: number; at: number }[] = [];
  let roundStartedAt = 0;
  const clients = new Map(
    names.slice(0, -1).map((clientId) => {
      const c = new FederatedClient({
        url,
        clientId,
        secret: `secret-of-${clientId}`,
        data: tinyDataset(seedrandom(clientId), 64, 4),
        trainer: clientId === flakyId ? flakyTrainer : trainer,
        // The flaky client comes back only after the task it lost its socket in has finished: an answer computed
        // while disconnected must not be sent ahead of its next hello (the coordinator would refuse the connection).
        reconnect: clientId === flakyId ? { delayMs: 1500, maxDelayMs: 2000 } : { delayMs: 100, maxDelayMs: 500 },
      });
      c.on('task', record(truth.get(clientId)!));
      c.on('error', () => undefined);
      return [clientId, c] as const;
    }),
  );
  /** A network failure: the socket's transport dies under the client, which reconnects on its own. */
  const dropSocket = (id: string) => (clients.get(id) as unknown as { socket: Socket }).socket.io.engine.close();

  try {
    await Promise.all([...clients.values()].map((c) => c.connect()));
    await childConnected;
    await coordinator.registry.waitFor(CLIENTS, 10_000);

    // Round 2: freeze the child, and round 3: close one client, at random moments; round 4: one client's socket
    // drops while it trains, and it reconnects.
    const plan = new Map<number, { clientId: string; how: string; act(): void }>([
      [2, { clientId: frozenId, how: 'SIGSTOP', act: () => child.kill('SIGSTOP') }],
      [3, { clientId: closedId, how: 'close()', act: () => void clients.get(closedId)!.close() }],
    ]);
    const outcomes: RoundOutcome[] = [];
    for (let round = 1; round <= 5; round++) {
      const p = plan.get(round);
      let timer: NodeJS.Timeout | undefined;
      roundStartedAt = Date.now();
      if (round === 4) dropWhenTraining = true;
      if (p) {
        const afterMs = Math.floor(rng() * 150);
        timer = setTimeout(() => {
          drops.push({ round, clientId: p.clientId, how: p.how, afterMs, at: Date.now() });
          p.act();
        }, afterMs);
      }
      const [r] = await coordinator.runRounds(1);
      clearTimeout(timer);
      outcomes.push(r!);
      // The client whose socket dropped reconnects on its own; the next round and the job ask it again once it is back.
      if (round === 4) await waitUntil(() => coordinator.registry.get(flakyId) !== undefined, 10_000, `${flakyId} to reconnect`);
    }
    assert.equal(drops.length, 3, 'every planned drop happened during its round');

    // The frozen process is noticed by the heartbeat alone: its socket never closed.
    const frozenLeft = left.find((l) => l.clientId === frozenId);
    assert.ok(frozenLeft, 'the frozen client was dropped from the registry');
    assert.equal(frozenLeft.reason, 'ping timeout');
    const detectMs = frozenLeft.at - drops[0]!.at;

    // FedEraser forgets one healthy client; the flaky one loses its socket in the middle of the job.
    const job = await coordinator.forget({ clientIds: [forgottenId], method: 'federaser', requestedBy: 'operator:dropouts-test' });
    let jobDrop = null as { step: number; at: number } | null;
    const onProgress = (j: { progress: { step: number } }) => {
      if (jobDrop || j.progress.step < 1) return;
      jobDrop = { step: j.progress.step, at: Date.now() };
      setTimeout(() => dropSocket(flakyId), Math.floor(rng() * 100));
    };
    coordinator.unlearning.on('progress', onProgress);
    await coordinator.runPendingJobs();
    coordinator.unlearning.off('progress', onProgress);
    const done = (await coordinator.store.getJob(job.jobId))!;
    assert.equal(done.state, 'done', `the job finished: ${done.error}`);
    assert.ok(jobDrop, 'the socket dropped during the job');

    // --- every training round record names exactly who was missing -------------------------------------------
    const api = (await (await fetch(`${url}/v1/rounds?lineage=${outcomes[0]!.model.lineage}`, { headers: { authorization: `Bearer ${coordinator.operatorToken}` } })).json()) as { rounds: { round: number; participants: { clientId: string }[]; missing: MissingClient[] }[] };
    assert.equal(api.rounds.length, 5);
    // The forgotten client's rows (participant and missing entries) are purged from every lineage.
    const gone = new Set<string>([forgottenId]);
    for (const o of outcomes) {
      const rec = api.rounds.find((r) => r.round === o.round)!;
      assert.deepEqual(ids(rec.participants), o.participants.filter((id) => id !== forgottenId).sort(), `round ${o.round}: participants as committed`);
      assert.deepEqual(rec.missing, o.missing.filter((m) => m.clientId !== forgottenId), `round ${o.round}: the record keeps the missing list with its reasons`);
      assert.ok(o.participants.includes(forgottenId), `round ${o.round}: the client forgotten later took part`);
      // Every connected client was asked: the ones gone for good before the round began were not.
      const asked = [...ids(rec.participants), ...ids(rec.missing)].sort();
      assert.deepEqual(asked, names.filter((n) => !gone.has(n)).sort(), `round ${o.round}: asked every client still there`);
      const drop = drops.find((d) => d.round === o.round);
      // Independent truth for the in-process clients: a participant is exactly a client that sent its answer (but an
      // answer sent just before its client dropped may be lost on the way).
      for (const [id] of clients) {
        if (gone.has(id) || id === drop?.clientId) continue;
        assert.equal(ids(rec.participants).includes(id), truth.get(id)!.trained.has(o.round), `round ${o.round}: ${id} participant iff it answered`);
      }
      if (drop?.how === 'socket drop mid-task') assert.ok(ids(rec.missing).includes(flakyId), `round ${o.round}: a client that lost its socket mid-task is missing`);
      // Nobody but the client dropped in this round is missing.
      assert.deepEqual(ids(rec.missing), drop && !ids(rec.participants).includes(drop.clientId) ? [drop.clientId] : [], `round ${o.round}: missing`);
      for (const m of rec.missing) {
        assert.equal(m.reason, 'disconnected');
        if (m.clientId === frozenId) assert.equal(m.detail, 'ping timeout', 'the frozen client was settled by the heartbeat, not the deadline');
      }
      if (drop && drop.clientId !== flakyId) gone.add(drop.clientId);
    }

    // --- the job report names the missing client of each replay step -----------------------------------------
    const report = done.report as JobReport;
    const flakyMissing: number[] = [];
    for (const step of report.roundsReplayed) {
      const source = api.rounds.find((r) => r.round === step.sourceRound)!;
      const expected = ids(source.participants).filter((id) => id !== forgottenId);
      assert.deepEqual([...step.calibrated, ...step.uncalibrated, ...ids(step.missing)].sort(), expected, `step ${step.round}: every remaining client of round ${step.sourceRound} accounted for`);
      for (const m of step.missing) {
        assert.ok(m.clientId === flakyId || gone.has(m.clientId), `step ${step.round}: ${m.clientId} missing (${m.reason}) though it never dropped`);
        assert.ok(['disconnected', 'offline'].includes(m.reason));
        if (m.clientId === flakyId) flakyMissing.push(step.round);
      }
      for (const [id] of clients) {
        if (!expected.includes(id) || gone.has(id) || id === flakyId) continue;
        assert.equal(step.calibrated.includes(id), truth.get(id)!.calibrated.has(step.round), `step ${step.round}: ${id} calibrated iff it answered`);
      }
    }
    // The replayed rounds of the new lineage keep the same missing lists.
    const replayed = await coordinator.store.listRounds();
    for (const step of report.roundsReplayed) assert.deepEqual(replayed.find((r) => r.round === step.round)!.missing, step.missing);

    const missingRecorded = outcomes.reduce((n, o) => n + o.missing.length, 0);
    console.log(
      `dropouts: ${drops.length} of ${CLIENTS} clients dropped (${drops.map((d) => `${d.clientId} ${d.how} ${d.afterMs} ms into round ${d.round}`).join('; ')}; ` +
        `${flakyId} socket drop in job step ${jobDrop!.step}); ${outcomes.length} rounds committed (participants ${outcomes.map((o) => o.participants.length).join(',')}), ` +
        `${missingRecorded} missing recorded (${outcomes.flatMap((o) => o.missing.map((m) => `r${o.round}:${m.clientId}:${m.reason}${m.detail ? `(${m.detail})` : ''}`)).join(' ')}); ` +
        `frozen client detected ${detectMs} ms after SIGSTOP (heartbeat ${HEARTBEAT_MS} ms); job ${report.roundsReplayed.length} steps, ` +
        `missing per step ${report.roundsReplayed.map((s) => s.missing.length).join(',')}${flakyMissing.length ? ` (${flakyId} in step ${flakyMissing.join(',')})` : ''}`,
    );
  } finally {
    child.kill('SIGCONT');
    child.kill('SIGKILL');
    await Promise.all([...clients.values()].map((c) => c.close()));
    trainer.dispose();
    flakyTrainer.dispose();
    await coordinator.stop();
    tmp.cleanup();
  }
});
