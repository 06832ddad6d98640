import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FleetReply, FleetSpec, FleetStats } from './load/messages.js';

/**
 * Load: the coordinator binary with 1,000 real SDK clients (two fleet processes of real sockets and real tfjs
 * training on a few examples each) completes rounds with all of them selected; then it is SIGKILLed and restarted on
 * the same port and data directory, and the whole fleet reconnects at once (a connection storm) with socket.io's
 * jittered exponential back-off, and another round completes. Figures are printed, never asserted against a clock.
 */

const CLIENTS = Number(process.env.FEDUNLEARN_LOAD_CLIENTS ?? 1000);
const FLEETS = 2;
/** The quorum and the bar for "a round of the whole fleet": 95% of it answering. */
const QUORUM = Math.ceil(CLIENTS * 0.95);
const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));
const FLEET = fileURLToPath(new URL('./load/fleet.js', import.meta.url));
const work = mkdtempSync(join(tmpdir(), 'fedunlearn-load-'));
const children = new Set<ChildProcess>();
const CONFIG = join(work, 'coordinator.json');
writeFileSync(CONFIG, JSON.stringify({ enrolment: 'closed', roundIntervalMs: 0, limits: { operatorMutationsPerMinute: 100_000 } }));

after(() => {
  for (const p of children) p.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
});

function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FEDUNLEARN_')));
}

interface Served {
  proc: ChildProcess;
  url: string;
  port: number;
}

function serve(port: number): Promise<Served> {
  const args = [
    // Closed enrolment with issued credentials, as in production: the test issues them through the operator API, and
    // the config lifts the operator API's per-minute cap for that.
    CLI, 'serve', '--config', CONFIG, '--port', String(port), '--data', join(work, 'data'),
    '--model', 'mlp', '--input-shape', '4', '--classes', '2',
    '--clients-per-round', String(CLIENTS), '--min-clients', String(QUORUM), '--round-deadline-ms', '40000',
    '--batch-size', '4', '--lr', '0.1', '--local-epochs', '1',
    // Full updates of 1,000 clients are not what this test measures; the norms are still recorded every round.
    '--retention', 'norms', '--log-level', 'warn',
  ];
  // FEDUNLEARN_LOAD_PROFILE=DIR writes a CPU profile of each coordinator that exits normally (the restarted one).
  const profile = process.env.FEDUNLEARN_LOAD_PROFILE ? ['--cpu-prof', '--cpu-prof-dir', process.env.FEDUNLEARN_LOAD_PROFILE] : [];
  const proc = spawn(process.execPath, [...profile, ...args], { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(proc);
  proc.on('exit', () => children.delete(proc));
  let stderr = '';
  proc.stderr!.on('data', (b: Buffer) => (stderr = (stderr + b.toString()).slice(-4000)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve printed no URL within 20 s; stderr:\n${stderr}`)), 20_000);
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const m = /^listening on (http:\/\/\S+:(\d+))$/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, url: m[1]!, port: Number(m[2]) });
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited with ${code} before listening; stderr:\n${stderr}`));
    });
  });
}

/** Peak resident set of a process so far (VmHWM), in bytes. */
function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

class Fleet {
  private readonly proc: ChildProcess;
  private readonly waiting = new Map<number, (s: FleetStats) => void>();
  private nextId = 0;
  readonly started: Promise<Extract<FleetReply, { type: 'started' }>>;
  readonly closed: Promise<void>;

  constructor(spec: FleetSpec) {
    this.proc = fork(FLEET, [], { env: cleanEnv(), stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.add(this.proc);
    this.proc.on('exit', () => children.delete(this.proc));
    let onStarted!: (m: Extract<FleetReply, { type: 'started' }>) => void;
    let onClosed!: () => void;
    this.started = new Promise((r) => (onStarted = r));
    this.closed = new Promise((r) => (onClosed = r));
    this.proc.on('message', (m: FleetReply) => {
      if (m.type === 'started') onStarted(m);
      else if (m.type === 'stats') this.waiting.get(m.id)?.(m.stats);
      else if (m.type === 'closed') onClosed();
      else if (m.type === 'fatal') throw new Error(`fleet ${spec.prefix} failed: ${m.message}`);
    });
    this.proc.send({ type: 'start', spec });
  }

  stats(): Promise<FleetStats> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, (s) => {
        this.waiting.delete(id);
        resolve(s);
      });
      this.proc.send({ type: 'stats', id });
    });
  }

  async close(): Promise<void> {
    this.proc.send({ type: 'close' });
    await Promise.race([this.closed, sleep(15_000)]);
    this.proc.kill('SIGKILL');
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | null>): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => null);
    if (v !== null) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(250);
  }
}

/** Issues `${prefix}-0` ... `${prefix}-${count - 1}` their credentials (POST /v1/clients); returns the secrets in order. */
async function issueCredentials(url: string, prefix: string, count: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < count; i++) {
    const res = await fetch(`${url}/v1/clients`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: operatorAuth() }, body: JSON.stringify({ clientId: `${prefix}-${i}` }) });
    const body = (await res.json()) as { secret?: string };
    assert.equal(res.status, 201, `issuing ${prefix}-${i}: ${JSON.stringify(body)}`);
    out.push(body.secret!);
  }
  return out;
}

/** The operator token `serve` made in its data directory at first start, as an operator on this machine reads it. */
function operatorAuth(): string {
  return `Bearer ${readFileSync(join(work, 'data', 'operator-token'), 'utf8').trim()}`;
}

async function getJson(url: string): Promise<any> {
  const res = await fetch(url, { headers: { authorization: operatorAuth() }, signal: AbortSignal.timeout(10_000) });
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res.json();
}

interface RoundSummary {
  round: number;
  participants: number;
  missing: { clientId: string; reason: string }[];
}

/** The first committed round after `after` to which every client was asked (it began once all were connected) and
 *  in which at least QUORUM of them took part. */
function fullRoundAfter(url: string, after: number): Promise<RoundSummary> {
  let checked = after;
  return until(`a round after ${after} of all ${CLIENTS} clients with ${QUORUM}+ participants`, 60_000, async () => {
    const status = await getJson(`${url}/v1/status`);
    const head = status.model.round as number;
    for (; checked < head; ) {
      const r = await getJson(`${url}/v1/rounds/${checked + 1}`);
      checked++;
      if (r.participants.length + r.missing.length === CLIENTS && r.participants.length >= QUORUM) return { round: r.round, participants: r.participants.length, missing: r.missing };
    }
    return null;
  });
}

async function fleetTotals(fleets: Fleet[]): Promise<FleetStats> {
  const all = await Promise.all(fleets.map((f) => f.stats()));
  return {
    connected: all.reduce((n, s) => n + s.connected, 0),
    count: all.reduce((n, s) => n + s.count, 0),
    tasks: all.reduce((n, s) => n + s.tasks, 0),
    welcomes: all.reduce((n, s) => n + s.welcomes, 0),
    attempts: all.flatMap((s) => s.attempts),
    backAfterMs: all.flatMap((s) => s.backAfterMs),
    errors: all.flatMap((s) => s.errors),
    rssBytes: all.reduce((n, s) => n + s.rssBytes, 0),
  };
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const mb = (b: number) => `${(b / 2 ** 20).toFixed(0)} MB`;

test(`${CLIENTS} clients complete rounds on one coordinator and come back after a restart storm`, { timeout: 600_000 }, async () => {
  const t0 = Date.now();
  let coord = await serve(0);
  const counts = Array.from({ length: FLEETS }, (_, i) => Math.floor(CLIENTS / FLEETS) + (i < CLIENTS % FLEETS ? 1 : 0));
  const secrets = await Promise.all(counts.map((count, i) => issueCredentials(coord.url, `load${i}`, count)));
  const fleets = counts.map((count, i) => {
    return new Fleet({
      secrets: secrets[i]!,
      url: coord.url,
      prefix: `load${i}`,
      count,
      seed: 7,
      examples: 4,
      features: 4,
      reconnectDelayMs: 500,
      reconnectMaxDelayMs: 5_000,
      connectTimeoutMs: 300_000,
      backends: ['cpu'],
    });
  });
  // FEDUNLEARN_LOAD_DEBUG=1 prints the fleet's state every few seconds.
  const ticker = process.env.FEDUNLEARN_LOAD_DEBUG
    ? setInterval(() => {
        void fleetTotals(fleets).then((s) =>
          console.log(
            `load: +${((Date.now() - t0) / 1000).toFixed(0)} s connected ${s.connected} welcomes ${s.welcomes} attempts ${s.attempts.reduce((a, b) => a + b, 0)} tasks ${s.tasks} errors ${s.errors.slice(-1).join('')}`,
          ),
        );
      }, 3000)
    : null;
  try {
    const started = await Promise.all(fleets.map((f) => f.started));
    const connectMs = Math.max(...started.map((s) => s.ms));
    for (const s of started) assert.equal(s.failed, 0, `a client could not connect: ${s.firstFailure}`);
    const status = await getJson(`${coord.url}/v1/status`);
    assert.equal(status.connectedClients, CLIENTS);

    // Two rounds in which (nearly) the whole fleet trained.
    const r1 = await fullRoundAfter(coord.url, 0);
    const r2 = await fullRoundAfter(coord.url, r1.round);
    const peakBefore = peakRss(coord.proc.pid!);
    const before = await fleetTotals(fleets);
    assert.equal(before.connected, CLIENTS);

    // The storm: the coordinator dies without a goodbye and comes back on the same port and data.
    const killedAt = Date.now();
    coord.proc.kill('SIGKILL');
    await new Promise((r) => coord.proc.once('exit', r));
    const port = coord.port;
    coord = await serve(port);
    const restartedAt = Date.now();
    const back = await until('the whole fleet to reconnect', 300_000, async () => {
      const s = await fleetTotals(fleets);
      return s.connected === CLIENTS && s.welcomes >= before.welcomes + CLIENTS ? s : null;
    });
    const allBackMs = Date.now() - killedAt;
    const attempts = back.attempts.map((a, i) => a - before.attempts[i]!);
    const status2 = await getJson(`${coord.url}/v1/status`);
    assert.equal(status2.connectedClients, CLIENTS);
    const r3 = await fullRoundAfter(coord.url, r2.round);
    const peakAfter = peakRss(coord.proc.pid!);
    const after = await fleetTotals(fleets);

    console.log(
      `load: ${CLIENTS} clients in ${FLEETS} processes connected in ${(connectMs / 1000).toFixed(1)} s; rounds ${r1.round}, ${r2.round} had ` +
        `${r1.participants} and ${r2.participants} participants (missing ${r1.missing.length}, ${r2.missing.length}); ` +
        `coordinator peak RSS ${mb(peakBefore)}; storm: SIGKILL + restart took ${((restartedAt - killedAt) / 1000).toFixed(1)} s, all ${CLIENTS} back ` +
        `${(allBackMs / 1000).toFixed(1)} s after the kill (per client: reconnect after p50 ${(pct(back.backAfterMs, 50) / 1000).toFixed(1)} s, ` +
        `p99 ${(pct(back.backAfterMs, 99) / 1000).toFixed(1)} s; attempts p50 ${pct(attempts, 50)}, max ${Math.max(...attempts)}); ` +
        `round ${r3.round} after the restart had ${r3.participants} participants; restarted coordinator peak RSS ${mb(peakAfter)}; ` +
        `fleet RSS ${mb(after.rssBytes)}; tasks done ${after.tasks}; total ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
    if (after.errors.length > 0) console.log(`load: first client errors: ${after.errors.slice(0, 5).join(' | ')}`);
  } finally {
    if (ticker) clearInterval(ticker);
    await Promise.all(fleets.map((f) => f.close()));
    coord.proc.kill('SIGTERM');
    await new Promise((r) => coord.proc.once('exit', r));
  }
});
