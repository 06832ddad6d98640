import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { openSqliteHistory } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { encodeTensor, layerNorms, layerView } from '@fedunlearn/protocol';
import { connectProtocolClient, type LoadClient, type UpdateTemplate } from '../load-clients.js';
import type { SectionOptions, SectionResult } from '../section.js';

/**
 * Forget jobs over long histories (issue 11, section 6): a history of N rounds with two clients (retention 'norms',
 * Δt = 1) is written straight through the store API (training N real rounds would take hours), then the real
 * `serve` binary opens it in a child process and runs a FedEraser job forgetting a third client that took part in
 * every round, so the job replays all N rounds with the two others. They answer every CALIBRATE task at once with a
 * fixed update (the load generator of the ingest section), so the time measured is the coordinator's.
 *
 * Figures per size: the job's wall time per replayed round (linear cost: the same at every size; a checkpoint that
 * rewrote every earlier step made it grow with N), and the latency of the operator API while the job runs
 * (`/healthz` and `/v1/status` probed in turn, one request at a time, from this process): p50, p99 and the worst,
 * which shows any stall of the coordinator's event loop, such as a commit that fsynced thousands of model blobs one
 * after another on it.
 */

const CLI = fileURLToPath(new URL('../../../coordinator/dist/cli.js', import.meta.url));
const MODEL = { inputShape: [16], numClasses: 4, seed: 3 };
const CLIENTS = ['bench-0', 'bench-1'];
const FORGOTTEN = 'bench-forgotten';
const PROBE_GAP_MS = 20;

export interface JobSize {
  historyRounds: number;
  replayedRounds: number;
  buildMs: number;
  jobMs: number;
  perReplayedRoundMs: number;
  apiProbes: number;
  apiP50Ms: number;
  apiP99Ms: number;
  apiMaxMs: number;
  /** When the slowest probe was sent, in ms after the job's report was written (negative: before; the end-commit is
   *  just before 0, the job's start at -jobMs). */
  apiMaxAtMsFromJobEnd: number;
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

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** N rounds of three clients, committed directly (norms only, as `serve --retention norms` keeps them). */
async function buildHistory(dir: string, rounds: number): Promise<void> {
  const def = builtInDefinition('mlp', MODEL);
  const layout = def.initial.layout;
  const store = openSqliteHistory(dir);
  try {
    await store.open({ topologyJson: def.topologyJson, layout, initialWeights: def.initial.values, config: { historyInterval: 1, retention: 'norms' } });
    for (const clientId of [...CLIENTS, FORGOTTEN]) await store.upsertClient({ clientId, numExamples: 40, seenAt: Date.now() });
    const weights = def.initial.values.slice();
    const norms = Array.from(layerNorms(layout, weights), (n) => n * 0.01);
    for (let t = 1; t <= rounds; t++) {
      const head = await store.head();
      weights[t % weights.length] = (weights[t % weights.length] ?? 0) + 1e-3;
      await store.commitRound({
        round: t,
        roundId: `bench-${t}`,
        modelBefore: head.version,
        weights,
        participants: [...CLIENTS, FORGOTTEN].map((clientId) => ({ clientId, numExamples: 40, norms })),
        metrics: { loss: 1 / t },
        startedAt: Date.now(),
      });
    }
  } finally {
    await store.close();
  }
}

async function startServe(dir: string, port: number): Promise<ChildProcess> {
  const args = ['serve', '--port', String(port), '--data', dir, '--enrolment', 'open', '--model', 'mlp', '--input-shape', '16', '--classes', '4', '--seed', '3'];
  args.push('--history-interval', '1', '--retention', 'norms', '--clients-per-round', '2', '--min-clients', '2', '--log-level', 'error');
  const p = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, FEDUNLEARN_LOG_LEVEL: 'error' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  p.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve: no "listening" within 60 s; stderr:\n${stderr}`)), 60_000);
    createInterface({ input: p.stdout! }).on('line', (line) => {
      if (line.startsWith('listening on ')) {
        clearTimeout(timer);
        resolve();
      }
    });
    p.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited (${code}) before listening; stderr:\n${stderr}`));
    });
  });
  return p;
}

async function measure(rounds: number, log: (m: string) => void): Promise<JobSize> {
  const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-bench-jobs-'));
  let proc: ChildProcess | null = null;
  const clients: LoadClient[] = [];
  try {
    const t0 = performance.now();
    await buildHistory(dir, rounds);
    const buildMs = performance.now() - t0;
    log(`jobs: ${rounds} rounds written in ${(buildMs / 1000).toFixed(1)} s`);
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    proc = await startServe(dir, port);
    // serve keeps its operator token in the data directory (made at first start), as an operator's tools read it.
    const authorization = `Bearer ${readFileSync(join(dir, 'operator-token'), 'utf8').trim()}`;
    const res = await fetch(`${base}/v1/jobs`, { method: 'POST', headers: { 'content-type': 'application/json', authorization }, body: JSON.stringify({ clientIds: [FORGOTTEN], method: 'federaser' }) });
    if (res.status !== 202) throw new Error(`POST /v1/jobs: ${res.status} ${await res.text()}`);
    const { jobId } = (await res.json()) as { jobId: string };

    const def = builtInDefinition('mlp', MODEL);
    const layout = def.initial.layout;
    const delta = Float32Array.from({ length: layout.totalSize }, (_, i) => ((i % 13) - 6) * 1e-3);
    const update: UpdateTemplate = { delta: layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, delta, i))), numExamples: 40 };
    // The job starts once both remaining clients are connected.
    for (const id of CLIENTS) clients.push(await connectProtocolClient(base, id, update));

    const latencies: number[] = [];
    let slowest = { ms: -1, at: 0 };
    let state = 'queued';
    let report: { wallTimeMs: number; finishedAt: number; roundsReplayed: unknown[] } | null = null;
    let error = '';
    for (let i = 0; state !== 'done' && state !== 'failed'; i++) {
      const path = i % 2 === 0 ? '/healthz' : '/v1/status';
      const a = performance.now();
      const sentAt = Date.now();
      const r = await fetch(base + path, { headers: { authorization } });
      await r.arrayBuffer();
      const ms = performance.now() - a;
      latencies.push(ms);
      if (ms > slowest.ms) slowest = { ms, at: sentAt };
      if (i % 10 === 0) {
        const j = (await (await fetch(`${base}/v1/jobs/${jobId}`, { headers: { authorization } })).json()) as { state: string; error: string | null };
        state = j.state;
        error = j.error ?? '';
      }
      await new Promise((resolve) => setTimeout(resolve, PROBE_GAP_MS));
    }
    if (state !== 'done') throw new Error(`the job over ${rounds} rounds ${state}: ${error}`);
    report = (await (await fetch(`${base}/v1/jobs/${jobId}/report`, { headers: { authorization } })).json()) as { wallTimeMs: number; finishedAt: number; roundsReplayed: unknown[] };
    const sorted = [...latencies].sort((x, y) => x - y);
    const replayed = report.roundsReplayed.length;
    const out: JobSize = {
      historyRounds: rounds,
      replayedRounds: replayed,
      buildMs: Math.round(buildMs),
      jobMs: report.wallTimeMs,
      perReplayedRoundMs: Math.round((report.wallTimeMs / replayed) * 100) / 100,
      apiProbes: latencies.length,
      apiP50Ms: Math.round(quantile(sorted, 0.5) * 10) / 10,
      apiP99Ms: Math.round(quantile(sorted, 0.99) * 10) / 10,
      apiMaxMs: Math.round(sorted.at(-1)! * 10) / 10,
      apiMaxAtMsFromJobEnd: slowest.at - report.finishedAt,
    };
    log(`jobs: ${rounds} rounds: job ${(out.jobMs / 1000).toFixed(1)} s (${out.perReplayedRoundMs} ms per replayed round), API p99 ${out.apiP99Ms} ms, max ${out.apiMaxMs} ms (sent ${out.apiMaxAtMsFromJobEnd} ms from the job's end) over ${out.apiProbes} probes`);
    return out;
  } finally {
    for (const c of clients) c.close();
    if (proc && proc.exitCode === null) {
      const p = proc;
      await new Promise<void>((resolve) => {
        p.once('exit', () => resolve());
        p.kill('SIGTERM');
      });
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function run(opts: SectionOptions): Promise<SectionResult> {
  const sizes = opts.quick ? [25, 50, 100] : [500, 2_000, 5_000];
  const rows: JobSize[] = [];
  for (const n of sizes) rows.push(await measure(n, opts.log));
  const small = rows[0]!;
  const large = rows.at(-1)!;
  const bySize: Record<string, JobSize> = {};
  for (const r of rows) bySize[`rounds${r.historyRounds}`] = r;
  return {
    ...bySize,
    // 1.0 when a job's cost grows linearly with the rounds it replays; N_large/N_small when it grows quadratically.
    perRoundRatioLargestToSmallest: Math.round((large.perReplayedRoundMs / small.perReplayedRoundMs) * 100) / 100,
    sizeRatioLargestToSmallest: large.historyRounds / small.historyRounds,
    apiP99MsLargest: large.apiP99Ms,
    apiMaxMsLargest: large.apiMaxMs,
  };
}
