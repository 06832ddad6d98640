import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
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
 * The real service binary, killed with SIGKILL and restarted on the same data directory and port, while real SDK
 * clients keep reconnecting. Kills land at seeded random moments mid-round, and, forced through the service's test
 * pause points (FEDUNLEARN_TEST_PAUSE_DIR: the process stops at an armed point and says so, and is killed there),
 * inside a round's history write, while a forget job runs (after a checkpointed step), just before a job's end
 * commits, and after that commit (before the purged files are unlinked, and before the job's scratch is removed).
 * After every restart: every round and model committed before the kill is still there unchanged, every model's bytes
 * match its sha256, an interrupted job resumes and ends done, a forgotten client's data never comes back and it is
 * never let in again (its SDK client keeps trying, under open enrolment), and clients reconnect and rounds continue.
 * The test fails unless every forced phase got its kill.
 */

const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));
const SEED = Number(process.env.FEDUNLEARN_CRASH_SEED ?? 7);
const KILLS = Number(process.env.FEDUNLEARN_CRASH_KILLS ?? 10);
/** Four are forgotten over a run (one per job phase); three stay to train (min-clients 2). */
const CLIENTS = 7;
const WAIT_MS = 60_000;

const tmp = tempDir('crash-loop');
const running = new Set<ChildProcess>();
after(() => {
  for (const p of running) p.kill('SIGKILL');
  tmp.cleanup();
});

type Phase = 'mid-round' | 'history-write' | 'mid-job' | 'job-commit' | 'job-purge' | 'job-done';
/** The service's pause point for each forced phase (src/test-hooks.ts). */
const PAUSE_POINT: Partial<Record<Phase, string>> = { 'history-write': 'history-write', 'mid-job': 'job-step', 'job-commit': 'job-commit', 'job-purge': 'job-purge', 'job-done': 'job-done' };
const JOB_PHASES: Phase[] = ['mid-job', 'job-commit', 'job-purge', 'job-done'];

/** Every forced phase once (as many as KILLS allows), the rest at random; never a job before a round has committed. */
function schedule(rng: () => number): Phase[] {
  const forced = (['history-write', ...JOB_PHASES] as Phase[]).slice(0, Math.max(0, KILLS - 1));
  const rest = Array.from({ length: KILLS - 1 - forced.length }, (): Phase => (rng() < 0.5 ? 'mid-round' : 'history-write'));
  const tail = [...forced, ...rest];
  for (let i = tail.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [tail[i], tail[j]] = [tail[j]!, tail[i]!];
  }
  return ['mid-round', ...tail];
}

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
  const pauseDir = join(tmp.dir, 'pause');
  mkdirSync(pauseDir);
  /** Pause points the running process reported reaching (it sits there until killed). */
  let paused: string[] = [];
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
    const p = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, FEDUNLEARN_LOG_LEVEL: 'error', FEDUNLEARN_TEST_PAUSE_DIR: pauseDir }, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(p);
    proc = p;
    stderr = '';
    paused = [];
    p.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    exited = new Promise((resolve) => p.on('exit', () => (running.delete(p), resolve())));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "listening" within 30 s; stderr:\n${stderr}`)), 30_000);
      createInterface({ input: p.stdout! }).on('line', (line) => {
        if (line.startsWith('paused at ')) paused.push(line.slice('paused at '.length));
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

  /** The token the service made in its data directory at first start, read as an operator on this machine would. */
  const operatorAuth = () => `Bearer ${readFileSync(join(dataDir, 'operator-token'), 'utf8').trim()}`;

  async function api<T>(path: string, init?: { method: string; body: unknown }): Promise<T> {
    const headers = { authorization: operatorAuth(), ...(init ? { 'content-type': 'application/json' } : {}) };
    const res = await fetch(base + path, init ? { method: init.method, headers, body: JSON.stringify(init.body) } : { headers });
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
  /** What each client went through, with the time: welcomed by the service, or refused as forgotten. */
  const seenBy = new Map<string, { at: number; what: 'welcomed' | 'denied' }[]>();
  for (let i = 0; i < CLIENTS; i++) {
    const id = `crash-${i}`;
    const c = new FederatedClient({ url: base, clientId: id, secret: `secret-${id}`, data: dataset(i), backends: ['cpu'], reconnect: { delayMs: 500, maxDelayMs: 1000 } });
    // Errors are expected while the service is down; the invariants below are what count.
    c.on('error', () => undefined);
    const seen: { at: number; what: 'welcomed' | 'denied' }[] = [];
    seenBy.set(id, seen);
    c.on('connected', () => seen.push({ at: Date.now(), what: 'welcomed' }));
    c.on('serverError', (e) => {
      if (e.code === 'PERMISSION_DENIED') seen.push({ at: Date.now(), what: 'denied' });
    });
    clients.set(id, c);
  }

  const rng = seedrandom(`crash-${SEED}`);
  const phases = schedule(rng);
  const forgotten = new Set<string>();
  const victimsWhoTrained = new Set<string>();
  const kills: Record<Phase, number> = { 'mid-round': 0, 'history-write': 0, 'mid-job': 0, 'job-commit': 0, 'job-purge': 0, 'job-done': 0 };
  let jobsResumed = 0;
  let jobsKilledRunning = 0;
  let jobsKilledAfterCommit = 0;
  let roundsAfterRestarts = 0;

  /** Arms a pause point of the running service and waits until the service reports sitting there. */
  const arm = (point: string) => writeFileSync(join(pauseDir, point), '');
  const reached = (point: string) => until(`the service to pause at ${point}`, () => (paused.includes(point) ? true : undefined));

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

      const phase = phases[k]!;
      let runningJob: string | null = null;
      if (JOB_PHASES.includes(phase)) {
        // The victim's SDK client stays connected and keeps reconnecting across the kills: once forgotten, it must
        // never be let in again (enrolment is open, so a lost tombstone would let it re-enrol) nor take part.
        // A client that took part in the head's lineage: the job has its contribution to remove (so it replays at
        // least one step and reaches every phase of its end).
        last = await observe();
        const trained = new Set([...last.rounds.values()].filter((r) => r.lineage === last.head.lineage).flatMap((r) => r.participants.map((p) => p.clientId)));
        const candidates = [...clients.keys()].filter((id) => !forgotten.has(id) && trained.has(id));
        assert.ok(candidates.length > 0, 'someone trained in the current lineage');
        const victim = candidates[Math.floor(rng() * candidates.length)]!;
        victimsWhoTrained.add(victim);
        const point = PAUSE_POINT[phase]!;
        arm(point);
        const job = await api<Job>('/v1/jobs', { method: 'POST', body: { clientIds: [victim] } });
        forgotten.add(victim);
        await reached(point);
        // The service sits at the point: the job's state shows which side of its end-commit the kill lands on.
        const at = await api<Job>(`/v1/jobs/${job.jobId}`);
        if (phase === 'mid-job' || phase === 'job-commit') {
          assert.equal(at.state, 'running', `at ${point} the job is running`);
          runningJob = job.jobId;
          jobsKilledRunning++;
        } else {
          assert.equal(at.state, 'done', `at ${point} the job's end has committed`);
          jobsKilledAfterCommit++;
        }
        last = await observe();
      } else if (phase === 'history-write') {
        // Inside a round's history write: its update blobs are durable, its commit not yet made.
        last = await observe();
        arm('history-write');
        await reached('history-write');
        last = await observe();
      } else {
        // Somewhere inside the next round: tasks out, clients training, updates arriving.
        last = await observe();
        await sleep(20 + rng() * 300);
      }
      await kill();
      kills[phase]++;
      const victim = JOB_PHASES.includes(phase) ? [...forgotten].at(-1)! : null;

      const restartedAt = Date.now();
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
        const res = await fetch(`${base}/v1/models/${m.version}/weights`, { headers: { authorization: operatorAuth() } });
        if (m.erasedAt !== null) {
          assert.equal(res.status, 410, `model ${m.version} was erased`);
          assert.equal(((await res.json()) as { error: { code: string } }).error.code, 'MODEL_ERASED');
          continue;
        }
        if (res.status === 410) {
          // A job resumed after this restart may have finished (and erased what its clients shaped) since the listing.
          const rec = (await (await fetch(`${base}/v1/models/${m.version}`, { headers: { authorization: operatorAuth() } })).json()) as { erasedAt: number | null };
          assert.notEqual(rec.erasedAt, null, `model ${m.version} answered 410, so its record says it was erased`);
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
      if (victim) {
        // The victim's SDK client comes back after the kill. Its job done (resumed, or committed before the kill), it
        // is refused as forgotten, never welcomed again: a job killed after its commit must not lose the tombstone.
        const seen = seenBy.get(victim)!;
        await until(`${victim} refused as forgotten after the restart`, () => (seen.some((e) => e.at >= restartedAt && e.what === 'denied') ? true : undefined));
        if (phase === 'job-purge' || phase === 'job-done') {
          assert.deepEqual(seen.filter((e) => e.at >= restartedAt).map((e) => e.what), ['denied'], `${victim}, forgotten before the kill, was never let in again`);
        }
        const { clients: rows } = await api<{ clients: { clientId: string; forgotten: boolean; connected: boolean }[] }>('/v1/clients');
        assert.deepEqual(rows.filter((c) => c.clientId === victim).map((c) => [c.forgotten, c.connected]), [[true, false]], `${victim} is a tombstone, not connected`);
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
    const opened = await store.open({ topologyJson: def.topologyJson, layout: def.initial.layout, initialWeights: def.initial.values, config: { historyInterval: 1, retention: 'fp32' } });
    assert.equal(opened.resumed, true);
    // Rounds run every 150 ms: one may commit between the last observation and the kill, so the stored head is the one
    // the service last showed or a later round of the same lineage, never an earlier one or another lineage.
    const shown = final.head;
    assert.ok(
      opened.head.version === shown.version || (opened.head.lineage === shown.lineage && opened.head.round > shown.round),
      `the stored head (${opened.head.lineage}/${opened.head.round}) is the one the service last showed (${shown.lineage}/${shown.round}) or a later round of its lineage`,
    );
    assert.equal((await store.getModel(shown.version))?.sha256, shown.sha256, 'the head the service last showed is stored as shown');
    let updatesRead = 0;
    try {
      for (const m of (await store.listModels())) {
        if (m.erasedAt === null) await store.readModel(m.version);
        else await assert.rejects(store.readModel(m.version), /was erased/);
      }
      const lineages = new Set((await store.listModels()).map((m) => m.lineage));
      for (const lineage of lineages) {
        for (const r of (await store.listRounds({ lineage }))) {
          for (const p of r.participants) {
            assert.ok(!forgotten.has(p.clientId), `${p.clientId} was forgotten but has a participant row in ${lineage}/${r.round}`);
            if (!p.hasUpdate) continue;
            const u = await store.readUpdate(r.roundId, p.clientId);
            assert.ok(u, `update of ${p.clientId} in ${r.roundId} is readable`);
            updatesRead++;
          }
        }
      }
      for (const id of forgotten) {
        assert.equal((await store.getClient(id))?.forgotten, true, `${id} ends forgotten`);
        assert.equal((await store.getClient(id))?.secretHash, null, `${id} keeps no secret`);
      }
      assert.equal((await store.listJobs()).filter((j) => j.state !== 'done').length, 0, 'every job ended done');
      // No file outlives its row (a kill between a job's end-commit and its unlinks leaves files the open deleted).
      const files = (dir: string) => (existsSync(dir) ? readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).length : 0);
      assert.equal(files(join(dataDir, 'blobs', 'updates')), (await store.stats()).updates, 'one update file per stored update');
      assert.equal(files(join(dataDir, 'blobs', 'models')), (await store.listModels()).filter((m) => m.erasedAt === null).length, 'one model file per kept model');
      assert.equal(files(join(dataDir, 'jobs')), 0, 'no job scratch is left');
    } finally {
      await store.close();
    }

    // Every forced phase got its kill (the test cannot pass by chance missing the windows it is about), with the job
    // on the side of its end-commit each phase names.
    const forcedPhases = phases.filter((p) => p !== 'mid-round');
    for (const p of new Set(forcedPhases)) assert.equal(kills[p], forcedPhases.filter((x) => x === p).length, `kills ${p}`);
    if (KILLS >= 6) {
      for (const p of ['history-write', ...JOB_PHASES] as Phase[]) assert.ok(kills[p] >= 1, `a kill landed at ${p}`);
      assert.equal(jobsKilledRunning, kills['mid-job'] + kills['job-commit']);
      assert.equal(jobsKilledAfterCommit, kills['job-purge'] + kills['job-done']);
      assert.equal(jobsResumed, jobsKilledRunning);
    }
    const roundsCommitted = [...final.rounds.values()].length;
    console.log(
      `crash-loop: ${KILLS} SIGKILLs (${Object.entries(kills).map(([p, n]) => `${p} ${n}`).join(', ')}; seed ${SEED}); ` +
        `${roundsCommitted} rounds in ${new Set([...final.rounds.values()].map((r) => r.lineage)).size} lineages and ${final.models.size} models intact, ` +
        `${updatesRead} stored updates verified; ${jobsKilledRunning} jobs killed while running, ${jobsResumed} resumed to done, ${jobsKilledAfterCommit} killed after their end committed; ` +
        `${forgotten.size} clients forgotten, none came back; a round committed after each of ${roundsAfterRestarts - 1} restarts`,
    );
  } finally {
    await Promise.all([...clients.values()].map((c) => c.close()));
    if (proc && running.has(proc)) await kill();
  }
});
