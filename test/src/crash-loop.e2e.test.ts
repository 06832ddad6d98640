import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import seedrandom from 'seedrandom';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import { openSqliteHistory } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { tempDir } from './support.js';

/**
 * The real service binary, killed with SIGKILL at seeded random moments (mid-round, as updates arrive and the round is
 * being written, mid-unlearning-job) and restarted on the same data directory and port, while real SDK clients keep
 * reconnecting. After every restart: every round and model committed before the kill is still there unchanged, every
 * model's bytes match its sha256, a forgotten client's data never comes back, an interrupted job resumes and ends
 * done, and clients reconnect and rounds continue.
 */

const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));
const SEED = Number(process.env.FEDUNLEARN_CRASH_SEED ?? 7);
const KILLS = Number(process.env.FEDUNLEARN_CRASH_KILLS ?? 10);
const CLIENTS = 5;
const WAIT_MS = 60_000;

const tmp = tempDir('crash-loop');
const running = new Set<ChildProcess>();
after(() => {
  for (const p of running) p.kill('SIGKILL');
  tmp.cleanup();
});

type Phase = 'mid-round' | 'history-write' | 'mid-job';

interface Model {
  version: string;
  lineage: string;
  sha256: string;
  cause: string;
  round: number;
  /** Set once a forget job erased its weights (a forgotten client had shaped them). */
  erasedAt: number | null;
}
interface Round {
  round: number;
  roundId: string;
  lineage: string;
  modelAfter: string;
  participants: { clientId: string; hasUpdate: boolean }[];
}
interface Job {
  jobId: string;
  state: string;
  clientIds: string[];
  progress: { step: number; total: number; message?: string };
  error?: string;
}

/** What the service shows through its operator API: every model and every round of every lineage. */
interface Observed {
  models: Map<string, Model>;
  rounds: Map<string, Round>;
  head: Model;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

function dataset(seed: number, count = 40): LocalDataset {
  const r = seedrandom(`data-${seed}`);
  const x = Float32Array.from({ length: count * 16 }, () => r());
  return { x, y: Int32Array.from({ length: count }, (_, i) => i % 4), inputShape: [16], numClasses: 4, count };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = WAIT_MS, everyMs = 40): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

test(`SIGKILL the coordinator ${KILLS} times at random points: nothing committed is lost or corrupt, purges stick, jobs resume, training continues`, async () => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const dataDir = join(tmp.dir, 'data');
  const config = join(tmp.dir, 'service.json');
  // Short waits so that a restarted service gets going as soon as clients are back; a pause between rounds keeps the
  // history (and so the jobs' replays) short. Every model version is kept (keepLastModels 0): the check below reads each
  // one back (round-cadence.e2e.test.ts covers the retention policy).
  writeFileSync(config, JSON.stringify({ waitForClientsMs: 5_000, maxRoundAttempts: 3, roundIntervalMs: 150, keepLastModels: 0 }));
  const args = ['serve', '--config', config, '--port', String(port), '--data', dataDir, '--enrolment', 'open', '--model', 'mlp', '--input-shape', '16', '--classes', '4'];
  args.push('--clients-per-round', '3', '--min-clients', '2', '--round-deadline-ms', '4000', '--history-interval', '1', '--batch-size', '10', '--seed', '3', '--log-level', 'error');

  let proc: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();
  let stderr = '';
  async function start(): Promise<void> {
    const p = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, FEDUNLEARN_LOG_LEVEL: 'error' }, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(p);
    proc = p;
    stderr = '';
    p.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    exited = new Promise((resolve) => p.on('exit', () => (running.delete(p), resolve())));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "listening" within 30 s; stderr:\n${stderr}`)), 30_000);
      createInterface({ input: p.stdout! }).on('line', (line) => {
        if (line.startsWith('listening on ')) {
          clearTimeout(timer);
          resolve();
        }
      });
      p.on('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`serve exited (${code ?? signal}) before listening; stderr:\n${stderr}`));
      });
    });
  }
  async function kill(): Promise<void> {
    proc!.kill('SIGKILL');
    await exited;
  }

  async function api<T>(path: string, init?: { method: string; body: unknown }): Promise<T> {
    const res = await fetch(base + path, init ? { method: init.method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(init.body) } : {});
    const text = await res.text();
    if (!res.ok) throw new Error(`${init?.method ?? 'GET'} ${path}: HTTP ${res.status} ${text}`);
    return JSON.parse(text) as T;
  }

  async function observe(): Promise<Observed> {
    const { head, models } = await api<{ head: string; models: Model[] }>('/v1/models');
    const byVersion = new Map(models.map((m) => [m.version, m]));
    const rounds = new Map<string, Round>();
    for (const lineage of new Set(models.map((m) => m.lineage))) {
      const { rounds: rs } = await api<{ rounds: Round[] }>(`/v1/rounds?lineage=${encodeURIComponent(lineage)}`);
      for (const r of rs) rounds.set(`${r.lineage}/${r.round}`, r);
    }
    return { models: byVersion, rounds, head: byVersion.get(head)! };
  }

  const headRound = async () => (await api<{ model: Model }>('/v1/status')).model;

  // --- the fleet: real SDK clients that keep reconnecting across restarts --------------------------------------------
  const clients = new Map<string, FederatedClient>();
  const taskListeners = new Set<() => void>();
  for (let i = 0; i < CLIENTS; i++) {
    const id = `crash-${i}`;
    const c = new FederatedClient({ url: base, clientId: id, secret: `secret-${id}`, data: dataset(i), backends: ['cpu'], reconnect: { delayMs: 500, maxDelayMs: 1000 } });
    // Errors are expected while the service is down; the invariants below are what count.
    c.on('error', () => undefined);
    c.on('serverError', () => undefined);
    c.on('task', (t) => {
      if (t.kind === 'train') for (const l of [...taskListeners]) l();
    });
    clients.set(id, c);
  }

  const rng = seedrandom(`crash-${SEED}`);
  const forgotten = new Set<string>();
  const victimsWhoTrained = new Set<string>();
  const kills: Record<Phase, number> = { 'mid-round': 0, 'history-write': 0, 'mid-job': 0 };
  let jobsResumed = 0;
  let jobsKilledRunning = 0;
  let roundsAfterRestarts = 0;
  // Two clients are forgotten over the run, each by a job that is killed while it runs.
  const jobAt = new Set([Math.floor(KILLS * 0.3), Math.floor(KILLS * 0.7)]);

  try {
    await start();
    await Promise.all([...clients.values()].map((c) => c.connect(WAIT_MS)));
    let last = await observe();

    for (let k = 0; k < KILLS; k++) {
      // Training continues in this process: a round commits after every (re)start before the next kill.
      const fromVersion = (await headRound()).version;
      await until('a round committed by this process', async () => {
        const h = await headRound();
        return h.version !== fromVersion && h.cause === 'round' && h.round > 0 ? h : undefined;
      });
      roundsAfterRestarts++;

      const phase: Phase = jobAt.has(k) ? 'mid-job' : rng() < 0.5 ? 'mid-round' : 'history-write';
      let runningJob: string | null = null;
      if (phase === 'mid-job') {
        const victim = [...clients.keys()].filter((id) => !forgotten.has(id))[1 + Math.floor(rng() * 3)]!;
        // It leaves first, as a device asking to be forgotten would; the job replays without it.
        await clients.get(victim)!.close();
        clients.delete(victim);
        const job = await api<Job>('/v1/jobs', { method: 'POST', body: { clientIds: [victim] } });
        forgotten.add(victim);
        if ([...(await observe()).rounds.values()].some((r) => r.participants.some((p) => p.clientId === victim))) victimsWhoTrained.add(victim);
        const stepAt = 1 + Math.floor(rng() * 3);
        const seen = await until(`job ${job.jobId} at step ${stepAt}`, async () => {
          const j = await api<Job>(`/v1/jobs/${job.jobId}`);
          return j.state === 'done' || j.state === 'failed' || (j.state === 'running' && j.progress.step >= stepAt) ? j : undefined;
        }, WAIT_MS, 10);
        assert.notEqual(seen.state, 'failed', `job ${job.jobId} failed: ${seen.error}`);
        if (seen.state === 'running') {
          runningJob = job.jobId;
          jobsKilledRunning++;
        }
        last = await observe();
      } else if (phase === 'mid-round') {
        // Somewhere inside the next round: tasks out, clients training, updates arriving.
        last = await observe();
        await sleep(20 + rng() * 300);
      } else {
        // As an update arrives: the service is validating, staging its blob (fsync) and committing the round.
        last = await observe();
        const nth = 1 + Math.floor(rng() * 2);
        let n = 0;
        await until('updates arriving', () =>
          new Promise<true | undefined>((resolve) => {
            const l = () => {
              if (++n >= nth) {
                taskListeners.delete(l);
                resolve(true);
              }
            };
            taskListeners.add(l);
            setTimeout(() => (taskListeners.delete(l), resolve(undefined)), 5_000);
          }),
        );
        await sleep(rng() * 15);
      }
      await kill();
      kills[phase]++;

      await start();
      const now = await observe();

      // Nothing committed before the kill is lost or changed.
      for (const [v, m] of last.models) {
        const after = now.models.get(v);
        assert.ok(after, `model ${v} (${m.cause}, round ${m.round}) survived the kill after ${phase}`);
        assert.equal(after.sha256, m.sha256, `model ${v} has the same sha256`);
        assert.equal(after.lineage, m.lineage);
        if (m.erasedAt !== null) assert.equal(after.erasedAt, m.erasedAt, `model ${v} stays erased after the kill`);
      }
      for (const [key, r] of last.rounds) {
        const after = now.rounds.get(key);
        assert.ok(after, `round ${key} survived the kill after ${phase}`);
        assert.equal(after.roundId, r.roundId);
        assert.equal(after.modelAfter, r.modelAfter);
        const kept = (ps: Round['participants']) => ps.filter((p) => !forgotten.has(p.clientId)).map((p) => `${p.clientId}:${p.hasUpdate}`).sort();
        assert.deepEqual(kept(after.participants), kept(r.participants), `round ${key} has the same participants`);
      }
      assert.ok(now.head.round >= last.head.round || now.head.lineage !== last.head.lineage, 'the head never goes back within a lineage');

      // Every kept model's bytes match its sha256 (the weights endpoint reads through the verifying store); an erased
      // one (a forgotten client had shaped it) is gone for good.
      for (const m of now.models.values()) {
        const res = await fetch(`${base}/v1/models/${m.version}/weights`);
        if (m.erasedAt !== null) {
          assert.equal(res.status, 410, `model ${m.version} was erased`);
          assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'MODEL_ERASED');
          continue;
        }
        assert.equal(res.status, 200, `model ${m.version} reads back`);
        const digest = createHash('sha256').update(Buffer.from(await res.arrayBuffer())).digest('hex');
        assert.equal(digest, m.sha256, `model ${m.version} bytes match their sha256`);
      }

      // A job that was running at the kill resumes after the restart and ends done.
      const { jobs } = await api<{ jobs: Job[] }>('/v1/jobs');
      for (const j of jobs.filter((x) => x.state === 'queued' || x.state === 'running')) {
        const end = await until(`job ${j.jobId} to finish after the restart`, async () => {
          const x = await api<Job>(`/v1/jobs/${j.jobId}`);
          return x.state === 'done' || x.state === 'failed' ? x : undefined;
        });
        assert.equal(end.state, 'done', `job ${j.jobId} resumed and finished (${end.error ?? ''})`);
      }
      if (runningJob) {
        const end = await api<Job>(`/v1/jobs/${runningJob}`);
        assert.equal(end.state, 'done', `job ${runningJob}, killed while running, resumed and finished (${end.error ?? ''})`);
        jobsResumed++;
        // Resumed, not just finished: every replayed round was recomputed by clients, none skipped because the fleet
        // had not reconnected yet when the restarted service picked the job up again.
        const report = await api<{ roundsReplayed: { round: number; calibrated: string[]; uncalibrated: string[]; missing: { clientId: string; reason: string }[] }[] }>(
          `/v1/jobs/${runningJob}/report`,
        );
        for (const r of report.roundsReplayed) {
          // (A round whose every participant has been forgotten has nobody to ask, and that is fine.)
          const answered = r.calibrated.length + r.uncalibrated.length;
          assert.ok(answered > 0 || r.missing.length === 0, `job ${runningJob} replayed round ${r.round} with nobody (missing: ${JSON.stringify(r.missing)})`);
        }
      }

      // A forgotten client's data never comes back: no participant row in any lineage, only a tombstone.
      const doneVictims = new Set((await api<{ jobs: Job[] }>('/v1/jobs')).jobs.filter((j) => j.state === 'done').flatMap((j) => j.clientIds));
      const fresh = await observe();
      for (const r of fresh.rounds.values()) {
        for (const p of r.participants) assert.ok(!doneVictims.has(p.clientId), `${p.clientId} was forgotten but is back in round ${r.lineage}/${r.round}`);
      }
      const { clients: rows } = await api<{ clients: { clientId: string; forgotten: boolean; numExamples: number }[] }>('/v1/clients');
      for (const id of doneVictims) {
        const row = rows.find((c) => c.clientId === id);
        assert.equal(row?.forgotten, true, `${id} is a tombstone`);
      }
      // A victim that trained before it left shaped models, which its finished job erased (the head never is).
      if ([...doneVictims].some((id) => victimsWhoTrained.has(id))) assert.ok([...fresh.models.values()].some((m) => m.erasedAt !== null), 'a done job erased the models its clients shaped');
      assert.equal(fresh.head.erasedAt, null);
      last = fresh;
    }

    // Clients reconnect and training continues after the last restart too.
    const lastVersion = (await headRound()).version;
    await until('a round after the last restart', async () => {
      const h = await headRound();
      return h.version !== lastVersion && h.cause === 'round' ? h : undefined;
    });
    roundsAfterRestarts++;
    const final = await observe();
    await kill();

    // The service is dead: open its store directly and read every model and every kept update (each read verifies
    // its sha256), and look for the forgotten clients everywhere.
    const store = openSqliteHistory(dataDir);
    const def = builtInDefinition('mlp', { inputShape: [16], numClasses: 4, seed: 3 });
    // Opening checks that topology, layout and config are the ones the service created the federation with.
    const opened = store.open({ topologyJson: def.topologyJson, layout: def.initial.layout, initialWeights: def.initial.values, config: { historyInterval: 1, retention: 'fp32' } });
    assert.equal(opened.resumed, true);
    assert.equal(opened.head.version, final.head.version, 'the head the service last showed is the stored head');
    let updatesRead = 0;
    try {
      for (const m of store.listModels()) {
        if (m.erasedAt === null) await store.readModel(m.version);
        else await assert.rejects(store.readModel(m.version), /was erased/);
      }
      const lineages = new Set(store.listModels().map((m) => m.lineage));
      for (const lineage of lineages) {
        for (const r of store.listRounds({ lineage })) {
          for (const p of r.participants) {
            assert.ok(!forgotten.has(p.clientId), `${p.clientId} was forgotten but has a participant row in ${lineage}/${r.round}`);
            if (!p.hasUpdate) continue;
            const u = await store.readUpdate(r.roundId, p.clientId);
            assert.ok(u, `update of ${p.clientId} in ${r.roundId} is readable`);
            updatesRead++;
          }
        }
      }
      for (const id of forgotten) assert.equal(store.getClient(id)?.forgotten, true, `${id} ends forgotten`);
      assert.equal(store.listJobs().filter((j) => j.state !== 'done').length, 0, 'every job ended done');
    } finally {
      store.close();
    }

    const roundsCommitted = [...final.rounds.values()].length;
    console.log(
      `crash-loop: ${KILLS} SIGKILLs (mid-round ${kills['mid-round']}, history-write ${kills['history-write']}, mid-job ${kills['mid-job']}; seed ${SEED}); ` +
        `${roundsCommitted} rounds in ${new Set([...final.rounds.values()].map((r) => r.lineage)).size} lineages and ${final.models.size} models intact, ` +
        `${updatesRead} stored updates verified; ${jobsKilledRunning} jobs killed while running, ${jobsResumed} resumed to done; ` +
        `${forgotten.size} clients forgotten, none came back; a round committed after each of ${roundsAfterRestarts - 1} restarts`,
    );
  } finally {
    await Promise.all([...clients.values()].map((c) => c.close()));
    if (proc && running.has(proc)) await kill();
  }
});
