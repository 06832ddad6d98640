import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import seedrandom from 'seedrandom';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import { tempDir } from './support.js';

/**
 * Issue 14 §2-4 end to end: replicas of the real service (`serve --store postgres://… --redis redis://…`, child
 * processes) on the machine's PostgreSQL and Redis (a fresh schema and key prefix per run, dropped after), real SDK
 * clients behind a round-robin TCP balancer without sticky sessions (as nginx in front of the websocket transport), the
 * leader SIGKILLed mid-job and mid-round (a supervisor restarts it as a new replica), and a leader SIGSTOPped past its
 * lease. Outcomes and orderings are asserted, never durations.
 */

const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));
const PG_URL = process.env.FEDUNLEARN_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.FEDUNLEARN_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const TOKEN = `cluster-e2e-${randomBytes(8).toString('hex')}`;
const WAIT_MS = 240_000;

const tmp = tempDir('cluster');
const running = new Set<ChildProcess>();
const schemas: string[] = [];
const servers: Server[] = [];
after(() => {
  for (const p of running) p.kill('SIGKILL');
  for (const s of servers) s.close();
  for (const schema of schemas) {
    try {
      execFileSync('psql', [PG_URL.replace(/\?.*$/, ''), '-qAtc', `DROP SCHEMA IF EXISTS "${schema}" CASCADE`], { stdio: 'ignore' });
    } catch {
      // best effort: the schema name is unique to this run
    }
    try {
      const url = new URL(REDIS_URL);
      const keys = execFileSync('redis-cli', ['-h', url.hostname, '-p', url.port || '6379', '--scan', '--pattern', `${schema}:*`], { encoding: 'utf8' }).split('\n').filter(Boolean);
      for (let i = 0; i < keys.length; i += 500) execFileSync('redis-cli', ['-h', url.hostname, '-p', url.port || '6379', 'DEL', ...keys.slice(i, i + 500)], { stdio: 'ignore' });
    } catch {
      // best effort
    }
  }
  tmp.cleanup();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Replicas that exited without being killed by a test (a crash): every wait fails at once when one did. */
const crashes: string[] = [];

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = WAIT_MS, everyMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    if (crashes.length > 0) throw new Error(`a replica crashed while waiting for ${what}: ${crashes.join('\n')}`);
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await sleep(everyMs);
  }
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

function dataset(seed: number, count = 30): LocalDataset {
  const r = seedrandom(`cluster-data-${seed}`);
  const x = Float32Array.from({ length: count * 16 }, () => r());
  return { x, y: Int32Array.from({ length: count }, (_, i) => i % 4), inputShape: [16], numClasses: 4, count };
}

/** A TCP balancer: each connection goes to the next backend in turn that accepts it (no stickiness, as nginx
 *  round-robin in front of the websocket transport). */
async function balancer(ports: () => number[]): Promise<number> {
  let next = 0;
  const server = createServer((down: Socket) => {
    down.pause();
    const backends = ports();
    const tryAt = (k: number) => {
      if (k >= backends.length) return down.destroy();
      const port = backends[(next + k) % backends.length]!;
      const up = connect(port, '127.0.0.1');
      let linked = false;
      up.once('connect', () => {
        linked = true;
        next = (next + k + 1) % backends.length;
        down.pipe(up).pipe(down);
        down.resume();
        down.once('close', () => up.destroy());
        up.once('close', () => down.destroy());
      });
      up.on('error', () => {
        up.destroy();
        // A backend that refuses (killed) is skipped; one that fails later drops this connection (the client reconnects).
        if (!linked) tryAt(k + 1);
        else down.destroy();
      });
      down.on('error', () => up.destroy());
    };
    tryAt(0);
  });
  servers.push(server);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
}

interface Model {
  version: string;
  parent: string | null;
  lineage: string;
  round: number;
  sha256: string;
  erasedAt: number | null;
  prunedAt: number | null;
}
interface Round {
  round: number;
  lineage: string;
  roundId: string;
  participants: { clientId: string }[];
}
interface Job {
  jobId: string;
  state: string;
  progress: { step: number; total: number };
  report: unknown;
}
interface ClusterStatus {
  replicaId: string;
  isLeader: boolean;
  leader: { replicaId: string; epoch: number } | null;
  replicas: { replicaId: string; clients: string[] }[];
}

/** Reads a server-sent event stream until `enough` says so (or 60 s pass); returns the events seen. */
async function readEvents(url: string, enough: (seen: { event: string; data: unknown }[]) => boolean): Promise<{ event: string; data: unknown }[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 60_000);
  const seen: { event: string; data: unknown }[] = [];
  try {
    const res = await fetch(url, { headers: { authorization: `Bearer ${TOKEN}` }, signal: ac.signal });
    assert.equal(res.status, 200);
    let buf = '';
    for await (const chunk of res.body! as unknown as AsyncIterable<Uint8Array>) {
      buf += Buffer.from(chunk).toString();
      let at: number;
      while ((at = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, at);
        buf = buf.slice(at + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event && data) seen.push({ event, data: JSON.parse(data) });
      }
      if (enough(seen)) break;
    }
  } finally {
    clearTimeout(timer);
    ac.abort();
  }
  if (!enough(seen)) throw new Error(`the event stream ended with ${seen.map((e) => e.event).join(', ')}`);
  return seen;
}

/** A TCP proxy to `target` that can be cut (every connection dropped, new ones refused) and restored: a replica's
 *  PostgreSQL or Redis going away without touching the machine's servers, which other tests share. */
async function cuttableProxy(target: number): Promise<{ port: number; cut(): void; restore(): void }> {
  let open = true;
  const live = new Set<Socket>();
  const server = createServer((down) => {
    if (!open) return down.destroy();
    const up = connect(target, '127.0.0.1');
    live.add(down).add(up);
    down.pipe(up).pipe(down);
    const drop = () => {
      down.destroy();
      up.destroy();
      live.delete(down);
      live.delete(up);
    };
    down.on('error', drop).on('close', drop);
    up.on('error', drop).on('close', drop);
  });
  servers.push(server);
  const port = await new Promise<number>((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port)));
  return {
    port,
    cut: () => {
      open = false;
      for (const s of live) s.destroy();
    },
    restore: () => {
      open = true;
    },
  };
}

/** A cluster of replicas of the real service on one fresh schema and Redis prefix. */
class Cluster {
  readonly schema = `cluster_e2e_${process.pid}_${randomBytes(4).toString('hex')}`;
  readonly procs = new Map<number, { proc: ChildProcess; replicaId: string; exited: Promise<void> }>();
  private generation = 0;

  constructor(
    readonly ports: number[],
    private readonly config: string,
  ) {
    schemas.push(this.schema);
  }

  static async create(n: number, extra: Record<string, unknown>, via: { pg?: string; redis?: string } = {}): Promise<Cluster> {
    const ports: number[] = [];
    for (let i = 0; i < n; i++) ports.push(await freePort());
    const config = join(tmp.dir, `cluster-${randomBytes(3).toString('hex')}.json`);
    const c = new Cluster(ports, config);
    writeFileSync(config, JSON.stringify({ redisPrefix: c.schema, keepLastModels: 0, roundIntervalMs: 0, leaseTtlMs: 3_000, ...extra }));
    for (let i = 0; i < n; i++) await c.start(i, via);
    return c;
  }

  /** Starts (or restarts, as a new replica) the replica on ports[i]; resolves once it listens. */
  async start(i: number, via: { pg?: string; redis?: string } = {}): Promise<void> {
    const replicaId = `r${i}-g${this.generation++}`;
    const args = ['serve', '--config', this.config, '--port', String(this.ports[i]), '--data', join(tmp.dir, `${this.schema}-${replicaId}`)];
    args.push('--store', `${via.pg ?? PG_URL}?schema=${this.schema}`, '--redis', via.redis ?? REDIS_URL, '--replica-id', replicaId, '--operator-token', TOKEN);
    args.push('--enrolment', 'open', '--model', 'mlp', '--input-shape', '16', '--classes', '4', '--seed', '5', '--log-level', 'warn');
    const proc = spawn(process.execPath, [CLI, ...args], { env: { ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(proc);
    let stderr = '';
    proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<void>((resolve) => proc.on('exit', () => (running.delete(proc), resolve())));
    proc.on('exit', (code, signal) => {
      if (!this.killing.has(proc)) crashes.push(`replica ${replicaId} exited (${code ?? signal}); stderr:\n${stderr.slice(-3000)}`);
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`replica ${replicaId}: no "listening" within 60 s; stderr:\n${stderr}`)), 60_000);
      createInterface({ input: proc.stdout! }).on('line', (line) => {
        if (line.startsWith('listening on ')) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.on('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`replica ${replicaId} exited (${code ?? signal}) before listening; stderr:\n${stderr}`));
      });
    });
    this.procs.set(i, { proc, replicaId, exited });
  }

  /** Ends every replica of this cluster (the next test's get the machine's cores). */
  async stopAll(): Promise<void> {
    for (const i of [...this.procs.keys()]) await this.kill(i);
  }

  private readonly killing = new Set<ChildProcess>();

  async kill(i: number): Promise<void> {
    const p = this.procs.get(i)!;
    this.killing.add(p.proc);
    p.proc.kill('SIGKILL');
    await p.exited;
    this.procs.delete(i);
  }

  /** The index of the replica that leads now, as the replicas themselves say (every live one agrees on it). */
  async leader(): Promise<number> {
    return until('a leader', async () => {
      const s = (await this.api<{ cluster: ClusterStatus }>('/v1/status')).cluster;
      if (!s.leader) return undefined;
      for (const [i, p] of this.procs) if (p.replicaId === s.leader.replicaId) return i;
      return undefined;
    });
  }

  /** An operator request to any live replica (the first that answers). */
  async api<T>(path: string, init?: { method: string; body: unknown }, only?: number): Promise<T> {
    let last: Error | null = null;
    for (const [i] of [...this.procs].sort(([a], [b]) => a - b)) {
      if (only !== undefined && i !== only) continue;
      const headers = { authorization: `Bearer ${TOKEN}`, ...(init ? { 'content-type': 'application/json' } : {}) };
      try {
        const res = await fetch(`http://127.0.0.1:${this.ports[i]}${path}`, init ? { method: init.method, headers, body: JSON.stringify(init.body) } : { headers });
        const text = await res.text();
        if (!res.ok) throw new Error(`${init?.method ?? 'GET'} ${path}: HTTP ${res.status} ${text}`);
        return JSON.parse(text) as T;
      } catch (e) {
        last = e as Error;
      }
    }
    throw last ?? new Error('no replica answers');
  }

  /** Every model and round, per lineage, as committed. */
  async history(): Promise<{ head: string; models: Model[]; rounds: Round[] }> {
    const { head, models } = await this.api<{ head: string; models: Model[] }>('/v1/models');
    const rounds: Round[] = [];
    for (const lineage of new Set(models.map((m) => m.lineage))) rounds.push(...(await this.api<{ rounds: Round[] }>(`/v1/rounds?lineage=${encodeURIComponent(lineage)}`)).rounds);
    return { head, models, rounds };
  }

  /** Every model whose weights are kept matches its sha256; each lineage's rounds are numbered once each, in order. */
  async verify(): Promise<{ head: string; models: Model[]; rounds: Round[] }> {
    assert.deepEqual(crashes, [], 'no replica crashed');
    const h = await this.history();
    for (const m of h.models) {
      if (m.erasedAt !== null || m.prunedAt !== null) continue;
      const res = await fetch(`http://127.0.0.1:${this.ports[[...this.procs.keys()][0]!]}/v1/models/${m.version}/weights`, { headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(res.status, 200, `model ${m.version} weights are served`);
      const digest = createHash('sha256').update(Buffer.from(await res.arrayBuffer())).digest('hex');
      assert.equal(digest, m.sha256, `model ${m.version} bytes match their sha256`);
    }
    for (const lineage of new Set(h.rounds.map((r) => r.lineage))) {
      const numbers = h.rounds.filter((r) => r.lineage === lineage).map((r) => r.round);
      assert.deepEqual(numbers, [...numbers].sort((a, b) => a - b), `lineage ${lineage}: rounds in order`);
      assert.equal(new Set(numbers).size, numbers.length, `lineage ${lineage}: no round committed twice (no deposed leader committed)`);
    }
    // Each round's model follows the previous one of its lineage: one chain, never a fork.
    const byLineage = new Map<string, Model[]>();
    for (const m of h.models) byLineage.set(m.lineage, [...(byLineage.get(m.lineage) ?? []), m]);
    for (const [lineage, ms] of byLineage) {
      const rounds = ms.filter((m) => m.round > 0);
      assert.equal(new Set(rounds.map((m) => m.round)).size, rounds.length, `lineage ${lineage}: one model per round`);
    }
    return h;
  }
}

test('3 replicas, 30 clients: rounds with every client, a FedEraser job calibrating on all replicas, the leader SIGKILLed mid-job and mid-round', async (t) => {
  const cluster = await Cluster.create(3, { clientsPerRound: 30, minClients: 20, roundDeadlineMs: 20_000, historyInterval: 1, waitForClientsMs: 10_000, batchSize: 10, jobWaitForClientsMs: 120_000 });
  const lb = await balancer(() => [...cluster.procs.keys()].map((i) => cluster.ports[i]!));
  const clients: FederatedClient[] = [];
  const denied = new Set<string>();
  for (let i = 0; i < 30; i++) {
    const id = `dev-${i}`;
    const c = new FederatedClient({ url: `http://127.0.0.1:${lb}`, clientId: id, secret: `secret-${id}`, data: dataset(i), backends: ['cpu'], reconnect: { delayMs: 300, maxDelayMs: 1_000 } });
    c.on('error', () => undefined);
    c.on('serverError', (e) => {
      if (e.code === 'PERMISSION_DENIED') denied.add(id);
    });
    clients.push(c);
  }
  try {
    await Promise.all(clients.map((c) => c.connect()));
    // The balancer spread them: every replica holds some, and the federation sees all 30.
    const spread = await until('30 clients on 3 replicas', async () => {
      const s = (await cluster.api<{ connectedClients: number; cluster: ClusterStatus }>('/v1/status'));
      return s.connectedClients === 30 && s.cluster.replicas.length === 3 && s.cluster.replicas.every((r) => r.clients.length > 0) ? s.cluster : undefined;
    });
    const replicaOf = new Map(spread.replicas.flatMap((r) => r.clients.map((c) => [c, r.replicaId] as const)));

    // 5 rounds in which every client takes part, whichever replica it is connected to.
    const full = await until('5 rounds with all 30 clients', async () => {
      const { rounds } = await cluster.history();
      const f = rounds.filter((r) => r.participants.length === 30);
      return f.length >= 5 ? f : undefined;
    });
    for (const r of full.slice(0, 5)) assert.deepEqual(new Set(r.participants.map((p) => replicaOf.get(p.clientId))).size, 3, `round ${r.round} took clients of all 3 replicas`);

    // Update bytes never cross Redis: what the replicas sent and received there (step messages, one partial of 8 bytes
    // per parameter per replica, relayed events), per round, stays far below the 30 updates a round carries.
    let busBytes = 0;
    for (const i of cluster.procs.keys()) {
      const text = await (await fetch(`http://127.0.0.1:${cluster.ports[i]}/metrics`)).text();
      busBytes += Number(/^fedunlearn_cluster_bus_bytes (\S+)$/m.exec(text)?.[1] ?? NaN);
    }
    const roundsSoFar = (await cluster.history()).rounds.length;
    const modelBytes = (16 * 128 + 128 + 128 * 64 + 64 + 64 * 4 + 4) * 4;
    const perRound = busBytes / roundsSoFar;
    t.diagnostic(`Redis bytes per round (sent + received, all replicas): ${Math.round(perRound)} = ${(perRound / modelBytes).toFixed(2)} x the model (${modelBytes} bytes); 30 updates = ${30 * modelBytes}`);
    assert.ok(Number.isFinite(perRound) && perRound > 0, 'the replicas count their Redis bytes');
    // Counted at both ends: 2 remote partials of 2x the model each, sent and received, are 8x the model; the ~20 updates
    // of the other replicas' clients, had they crossed, would be 40x.
    assert.ok(perRound < 20 * modelBytes, `per round ${perRound} bytes through Redis: O(replicas x model), not O(clients x model)`);

    // A replica that does not lead streams the whole federation on /v1/events: all 30 clients, and the leader's rounds.
    const leaderNow = await cluster.leader();
    const followerIndex = [...cluster.procs.keys()].find((i) => i !== leaderNow)!;
    const events = await readEvents(`http://127.0.0.1:${cluster.ports[followerIndex]}/v1/events`, (seen) => seen.some((e) => e.event === 'round'));
    const snapshot = events.find((e) => e.event === 'snapshot')!.data as { clients: { count: number } };
    assert.equal(snapshot.clients.count, 30, 'a follower\'s event stream counts every replica\'s clients');

    // A FedEraser job, its leader SIGKILLed once it checkpointed a step: the next leader resumes it.
    const victim = 'dev-7';
    const job = await cluster.api<Job>('/v1/jobs', { method: 'POST', body: { clientIds: [victim], method: 'federaser' } });
    await until('the job checkpointed a step', async () => {
      const j = await cluster.api<Job>(`/v1/jobs/${job.jobId}`);
      return j.state === 'running' && j.progress.step >= 1 ? j : undefined;
    });
    const jobLeader = await cluster.leader();
    await cluster.kill(jobLeader);
    await cluster.start(jobLeader);
    await cluster.leader();
    const done = await until('the job done', async () => {
      const j = await cluster.api<Job>(`/v1/jobs/${job.jobId}`);
      if (j.state === 'failed') throw new Error(`job failed: ${JSON.stringify(j)}`);
      return j.state === 'done' ? j : undefined;
    });
    assert.ok(done.report, 'the job has its report');

    // Its replayed (calibrated) rounds took clients of all three replicas of the spread above.
    const afterJob = await cluster.history();
    const jobLineage = afterJob.models.find((m) => m.version === afterJob.head)!.lineage;
    const replayed = afterJob.rounds.filter((r) => r.lineage === jobLineage);
    assert.ok(replayed.length > 0, 'the job replayed rounds');
    const calibrated = new Set(replayed.flatMap((r) => r.participants.map((p) => replicaOf.get(p.clientId))));
    assert.equal(calibrated.size, 3, 'calibration clients sat on all 3 replicas');
    assert.ok(replayed.every((r) => r.participants.every((p) => p.clientId !== victim)), 'the forgotten client is in no replayed round');

    // Mid-round: the leader SIGKILLed twice more while rounds run back to back; rounds continue on the next leader.
    for (let k = 0; k < 2; k++) {
      const before = (await cluster.history()).rounds.length;
      await until('a round after the last kill', async () => ((await cluster.history()).rounds.length > before ? true : undefined));
      const l = await cluster.leader();
      await cluster.kill(l);
      await cluster.start(l);
      const now = (await cluster.history()).rounds.length;
      await until('a round committed by the next leader', async () => ((await cluster.history()).rounds.length > now ? true : undefined));
    }

    const h = await cluster.verify();
    const headLineage = h.models.find((m) => m.version === h.head)!.lineage;
    assert.equal(headLineage, jobLineage, 'training continued on the job’s lineage');
    for (const r of h.rounds.filter((x) => x.lineage === headLineage)) assert.ok(r.participants.every((p) => p.clientId !== victim), `round ${r.round}: the forgotten client never returns`);
    assert.ok(denied.has(victim), 'the forgotten client was told it is forgotten');
    const status = await cluster.api<{ cluster: ClusterStatus }>('/v1/status');
    assert.ok(status.cluster.replicas.every((r) => !r.clients.includes(victim)), 'the forgotten client is connected nowhere');
  } finally {
    for (const c of clients) await c.close();
    await cluster.stopAll();
  }
});

test('a leader SIGSTOPped past its lease resumes and cannot commit: another leads, the history stays one chain', async () => {
  const cluster = await Cluster.create(2, { clientsPerRound: 6, minClients: 3, roundDeadlineMs: 10_000, historyInterval: 1, waitForClientsMs: 10_000, batchSize: 10 });
  const lb = await balancer(() => [...cluster.procs.keys()].map((i) => cluster.ports[i]!));
  const clients = Array.from({ length: 6 }, (_, i) => {
    const c = new FederatedClient({ url: `http://127.0.0.1:${lb}`, clientId: `stop-${i}`, secret: `secret-stop-${i}`, data: dataset(100 + i), backends: ['cpu'], reconnect: { delayMs: 300, maxDelayMs: 1_000 } });
    c.on('error', () => undefined);
    return c;
  });
  try {
    await Promise.all(clients.map((c) => c.connect()));
    await until('2 rounds', async () => ((await cluster.history()).rounds.length >= 2 ? true : undefined));
    const paused = await cluster.leader();
    const other = paused === 0 ? 1 : 0;
    const pausedId = cluster.procs.get(paused)!.replicaId;
    cluster.procs.get(paused)!.proc.kill('SIGSTOP');
    // The other replica takes the lease (the paused one's expired) and commits rounds of its own with the clients
    // connected to it (those of the paused replica are silent: they count as missing).
    await until('the other replica leads', async () => {
      const s = (await cluster.api<{ cluster: ClusterStatus }>('/v1/status', undefined, other)).cluster;
      return s.isLeader ? true : undefined;
    });
    const atTakeover = (await cluster.api<{ rounds: Round[] }>('/v1/rounds', undefined, other)).rounds.length;
    await until('a round by the new leader', async () => ((await cluster.api<{ rounds: Round[] }>('/v1/rounds', undefined, other)).rounds.length > atTakeover ? true : undefined));
    cluster.procs.get(paused)!.proc.kill('SIGCONT');
    // Resumed, the old leader learns it lost the lease; whatever it had in flight is refused (fenced) or stale.
    await until('the resumed replica knows it does not lead', async () => {
      const s = (await cluster.api<{ cluster: ClusterStatus }>('/v1/status', undefined, paused)).cluster;
      return !s.isLeader && s.leader?.replicaId !== pausedId ? true : undefined;
    });
    const before = (await cluster.history()).rounds.length;
    await until('rounds continue', async () => ((await cluster.history()).rounds.length > before ? true : undefined));
    await cluster.verify();
  } finally {
    for (const c of clients) await c.close();
    await cluster.stopAll();
  }
});

test('a replica that loses Redis or PostgreSQL says why in /healthz (503 unavailable) and takes work again once it is back', async () => {
  const pgUrl = new URL(PG_URL);
  const redisUrl = new URL(REDIS_URL);
  const pgProxy = await cuttableProxy(Number(pgUrl.port || 5432));
  const redisProxy = await cuttableProxy(Number(redisUrl.port || 6379));
  const viaPg = new URL(PG_URL);
  viaPg.port = String(pgProxy.port);
  const cluster = await Cluster.create(1, { clientsPerRound: 2, minClients: 1 }, { pg: viaPg.toString(), redis: `redis://127.0.0.1:${redisProxy.port}` });
  const health = async () => {
    const res = await fetch(`http://127.0.0.1:${cluster.ports[0]}/healthz`);
    return { status: res.status, body: (await res.json()) as { status: string; reason?: string; message?: string } };
  };
  await until('healthy', async () => ((await health()).status === 200 ? true : undefined));
  redisProxy.cut();
  const noRedis = await until('unavailable: redis', async () => {
    const h = await health();
    return h.status === 503 && h.body.reason === 'redis' ? h.body : undefined;
  }, 30_000);
  assert.equal(noRedis.status, 'unavailable');
  assert.match(noRedis.message ?? '', /Redis/);
  redisProxy.restore();
  await until('healthy again after Redis', async () => ((await health()).status === 200 ? true : undefined), 30_000);
  pgProxy.cut();
  const noPg = await until('unavailable: postgres', async () => {
    const h = await health();
    return h.status === 503 && h.body.reason === 'postgres' ? h.body : undefined;
  }, 30_000);
  assert.match(noPg.message ?? '', /PostgreSQL/);
  pgProxy.restore();
  let lastHealth: unknown = null;
  await until('healthy again after PostgreSQL', async () => {
    const h = await health();
    lastHealth = h.body;
    return h.status === 200 ? true : undefined;
  }, 30_000).catch((e: Error) => {
    throw new Error(`${e.message}; /healthz said ${JSON.stringify(lastHealth)}`);
  });
  await cluster.kill(0);
});

test('lockouts hold for the whole federation: wrong secrets on one replica lock the client out of the others', async () => {
  const cluster = await Cluster.create(2, { clientsPerRound: 2, minClients: 2, limits: { authMaxFailures: 3 } });
  const at = (i: number) => `http://127.0.0.1:${cluster.ports[i]}`;
  const attempt = async (url: string, secret: string): Promise<string[]> => {
    const codes: string[] = [];
    const c = new FederatedClient({ url, clientId: 'lock-me', secret, data: dataset(1), backends: ['cpu'], reconnect: { delayMs: 200, maxDelayMs: 200, attempts: 1 } });
    c.on('error', () => undefined);
    c.on('serverError', (e) => codes.push(e.code));
    const connected = c.connect().then(
      () => 'connected',
      (e: unknown) => (e as { code?: string }).code ?? 'failed',
    );
    const outcome = await Promise.race([connected, until('an answer', () => (codes.length > 0 ? codes[0] : undefined), 30_000)]);
    await c.close();
    return outcome === 'connected' ? ['connected'] : [...codes, String(outcome)];
  };
  // Enrols on replica 0 (open enrolment: the first secret is the client's from then on).
  assert.deepEqual(await attempt(at(0), 'the-right-secret'), ['connected']);
  for (let k = 0; k < 3; k++) assert.ok((await attempt(at(0), `wrong-${k}`)).includes('UNAUTHENTICATED'), 'a wrong secret is refused');
  // Replica 1 never saw a wrong secret, yet the client is locked there too: the lockout lives in Redis.
  const there = await attempt(at(1), 'the-right-secret');
  assert.ok(there.includes('RATE_LIMITED'), `locked out on the other replica too (got ${there.join(', ')})`);
  await cluster.stopAll();
});
