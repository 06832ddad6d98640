#!/usr/bin/env node
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import type { ServiceConfig, ServiceConfigInput } from './config.js';
import type { Coordinator } from './coordinator.js';
import type { ClientRecord, HistoryStore, JobRecord, ModelVersion, RoundRecord } from './history/store.js';
import type { JobReport } from './unlearning/engine.js';
import { METHOD_NAMES, type MethodParams } from './unlearning/method.js';
import type { JobWaiting } from './unlearning/offline.js';

/**
 * `fedunlearn-coordinator`: `serve` runs the service; every other command is an operator talking to a running
 * service over its HTTP API. Exit codes: 0 done, 1 the operation failed, 2 bad usage or configuration, 3 `serve` found
 * the database behind the high-water mark of what it had committed (lost commits; see --accept-history-loss).
 */

const NAME = 'fedunlearn-coordinator';
const { version } = createRequire(import.meta.url)('../package.json') as { version: string };
/** How long a stop may take (a round in flight is aborted, sockets close) before the process gives up on it. */
const STOP_TIMEOUT_MS = 15_000;

/** A failure to report in one line, with the exit code it deserves. */
class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

// --- serve ------------------------------------------------------------------------------------------------------

/** Numbers stay strings when they do not parse, so that the config schema rejects them naming the field. */
const numberArg = (v: string): number | string => (v.trim() !== '' && Number.isFinite(Number(v)) ? Number(v) : v);

interface ServeFlags extends Record<string, unknown> {
  config?: string;
}

async function serve(flags: ServeFlags): Promise<void> {
  // Loaded here, not at the top: the operator commands need neither the config parsers (a quarter second of startup)
  // nor TensorFlow.js and the server stack.
  const { ConfigError, coordinatorOptionsOf, loadConfig, modelOf } = await import('./config.js');
  const { config: file, ...overrides } = flags;
  let cfg: ServiceConfig;
  let options: ReturnType<typeof coordinatorOptionsOf>;
  try {
    cfg = loadConfig({ file, overrides: overrides as ServiceConfigInput });
    options = coordinatorOptionsOf(cfg);
  } catch (e) {
    throw e instanceof ConfigError ? new CliError(e.message, 2) : e;
  }
  const [{ Coordinator: CoordinatorClass }, { openSqliteHistory }, { createLogger }, { builtInDefinition, quietTfjsWarnings }, { OPENAPI_PATH }, { loadOrCreateOperatorToken }] =
    await Promise.all([
      import('./coordinator.js'),
      import('./history/sqlite-store.js'),
      import('./logger.js'),
      import('@fedunlearn/models'),
      import('./http/api.js'),
      import('./http/operator-token.js'),
    ]);
  let log: ReturnType<typeof createLogger>;
  try {
    log = createLogger({ level: cfg.logLevel });
  } catch (e) {
    throw e instanceof RangeError ? new CliError(e.message, 2) : e;
  }
  const { name, options: arch } = modelOf(cfg);
  quietTfjsWarnings();
  const model = builtInDefinition(name, arch);
  // A port that is taken (or not ours to bind) fails here, before the data directory and history.db are created.
  await probePort(cfg.port, cfg.host);
  const { describeDataDirError } = await import('./data-dir-errors.js');
  // The operator API is never open by accident: without a token given and without --insecure-no-auth, the one kept in
  // the data directory is used (made at first start, 0600), and the operator commands find it there with --data.
  let tokenFile: { file: string; created: boolean } | null = null;
  let operatorToken = options.operatorToken;
  if (options.operatorAuth === 'none') {
    process.stderr.write('WARNING: --insecure-no-auth: the operator API is open to anyone who can reach this port (issue credentials, forget clients, download models). Development only.\n');
  } else if (operatorToken === undefined) {
    try {
      const t = loadOrCreateOperatorToken(options.dataDir);
      operatorToken = t.token;
      tokenFile = t;
      if (t.tightened) process.stderr.write(`WARNING: ${t.file} was readable by other users; its mode is now 0600\n`);
    } catch (e) {
      const said = describeDataDirError(options.dataDir, e);
      throw new CliError(said ?? (e as Error).message);
    }
  }
  const pause = (await import('./test-hooks.js')).pauseFromEnv();
  let store: HistoryStore;
  let cluster: Awaited<ReturnType<typeof import('./cluster/join.js').joinCluster>> | null = null;
  if (cfg.store !== undefined && cfg.redis !== undefined) {
    // A replica of a cluster: the shared PostgreSQL store (its leader-only commits fenced by the lease) and Redis.
    const { joinCluster } = await import('./cluster/join.js');
    try {
      cluster = await joinCluster({
        store: cfg.store,
        redis: cfg.redis,
        ...(cfg.redisPrefix ? { redisPrefix: cfg.redisPrefix } : {}),
        ...(cfg.replicaId ? { replicaId: cfg.replicaId } : {}),
        ...(cfg.leaseTtlMs ? { leaseTtlMs: cfg.leaseTtlMs } : {}),
        storeOptions: { log, ...(pause ? { pause } : {}) },
      });
    } catch (e) {
      throw new CliError((e as Error).message);
    }
    store = cluster.store;
  } else {
    try {
      store = openSqliteHistory(options.dataDir, { acceptHistoryLoss: cfg.acceptHistoryLoss, log, ...(pause ? { pause } : {}) });
    } catch (e) {
      const said = describeDataDirError(options.dataDir, e);
      throw new CliError(said ?? (e as Error).message);
    }
  }
  let coordinator: Coordinator;
  try {
    coordinator = await CoordinatorClass.create({
      ...options,
      ...(operatorToken !== undefined ? { operatorToken } : {}),
      store,
      model,
      logger: log,
      ...(pause ? { pauseJob: pause } : {}),
      ...(cluster ? { cluster: cluster.cluster } : {}),
    });
  } catch (e) {
    await store.close();
    await cluster?.close();
    // Lost commits need the operator's decision (restore, or --accept-history-loss): a supervisor should not retry.
    if ((e as Error).name === 'HistoryLossError') throw new CliError((e as Error).message, 3);
    const said = describeDataDirError(options.dataDir, e);
    if (said) throw new CliError(said);
    // The initialisers' seed is part of the stored topology, so a changed --seed reads as a different model.
    const hint = /topology/.test((e as Error).message) ? ' (--model, --input-shape, --classes and --seed must be the ones it was created with)' : '';
    throw new CliError(`${(e as Error).message}${hint}`);
  }
  // The round loop logs its own failures; without a listener EventEmitter would turn them into a crash.
  coordinator.on('error', () => undefined);
  let url: string;
  try {
    ({ url } = await coordinator.listen(cfg.port, cfg.host));
  } catch (e) {
    await coordinator.stop();
    await cluster?.close();
    throw new CliError(`cannot listen on ${cfg.host}:${cfg.port}: ${(e as Error).message}`);
  }
  if (tokenFile) {
    process.stdout.write(
      `operator token ${tokenFile.created ? 'created in' : 'read from'} ${tokenFile.file} (mode 0600): operator commands on this machine find it with --data ${options.dataDir}; ` +
        `elsewhere pass --token "$(cat ${tokenFile.file})" or set FEDUNLEARN_OPERATOR_TOKEN\n`,
    );
  }
  if (!cfg.tls && !isLoopbackName(cfg.host)) {
    process.stderr.write(`WARNING: serving ${cfg.host} without TLS: clients and operators on other machines talk to this coordinator in plaintext (set tls: { cert, key } in the config)\n`);
  }
  // Last, so that whoever waits for this line has seen the ones above.
  process.stdout.write(`listening on ${url}\n`);
  process.stdout.write(`dashboard at ${url}/dashboard/, metrics at ${url}/metrics, OpenAPI document at ${url}${OPENAPI_PATH}\n`);
  log.info({ url, metrics: `${url}/metrics`, openapi: `${url}${OPENAPI_PATH}`, dataDir: options.dataDir, model: coordinator.model().version, ...summary(cfg) }, 'coordinator listening');
  coordinator.start();
  stopOnSignals(async () => {
    await coordinator.stop();
    await cluster?.close();
  }, log);
}

/** Loopback host names and addresses (what `serve --host` binds to); the API's own check is in http/request-guard.ts. */
function isLoopbackName(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[|\]$/g, '');
  return h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/**
 * Binds host:port once and lets go, so that a port in use fails `serve` before it touches the disk. (Port 0 always
 * binds.) The real bind follows within milliseconds; a port taken in between still fails, only after the disk.
 */
async function probePort(port: number, host: string): Promise<void> {
  if (port === 0) return;
  const { createServer } = await import('node:net');
  await new Promise<void>((resolve, reject) => {
    // Clients reconnecting after a restart may reach the probe: drop them at once (they retry), or close() would wait
    // for them and serve would hang.
    const probe = createServer((socket) => socket.destroy());
    probe.once('error', (e: NodeJS.ErrnoException) => {
      const why = e.code === 'EADDRINUSE' ? 'the port is in use (another coordinator?)' : e.code === 'EACCES' ? 'permission denied (ports below 1024 need privileges)' : e.code === 'EADDRNOTAVAIL' ? 'no such address on this machine' : e.message;
      reject(new CliError(`cannot listen on ${host}:${port}: ${why}; nothing was written to the data directory`));
    });
    probe.listen({ port, host, exclusive: true }, () => probe.close(() => resolve()));
  });
}

function summary(cfg: ServiceConfig): Record<string, unknown> {
  return {
    architecture: cfg.model,
    clientsPerRound: cfg.clientsPerRound,
    minClients: cfg.minClients,
    historyInterval: cfg.historyInterval,
    retention: cfg.retention,
    modelsAfterForget: cfg.modelsAfterForget,
    roundIntervalMs: cfg.roundIntervalMs,
    maxRounds: cfg.maxRounds || 'none',
    patienceRounds: cfg.patienceRounds || 'off',
    keepLastModels: cfg.keepLastModels || 'all',
    keepModelsEvery: cfg.keepModelsEvery,
    enrolment: cfg.enrolment,
    tls: cfg.tls ? 'on' : 'off',
    operatorAuth: cfg.insecureNoAuth ? 'none' : cfg.operatorToken ? 'token' : 'token file',
    metricsAuth: !cfg.insecureNoAuth && cfg.metricsAuth ? 'token' : 'none',
    allowedHosts: cfg.allowedHosts,
  };
}

function stopOnSignals(stop: () => Promise<void>, log: { info(o: object, m: string): void; error(o: object, m: string): void }): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.error({ signal }, 'second signal while stopping: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'stopping');
    const force = setTimeout(() => {
      log.error({ timeoutMs: STOP_TIMEOUT_MS }, 'did not stop in time: exiting');
      process.exit(1);
    }, STOP_TIMEOUT_MS);
    force.unref();
    stop().then(
      () => {
        log.info({}, 'stopped');
        process.exit(0);
      },
      (e: unknown) => {
        log.error({ err: e }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

// --- the operator API client ------------------------------------------------------------------------------------

interface ApiFlags {
  url: string;
  token?: string;
  /** A data directory whose operator-token file holds the token (serve makes it at first start). */
  data?: string;
  json?: boolean;
}

/** The data directory `serve` uses by default; its token is used without --data only for a coordinator on this machine. */
const DEFAULT_DATA_DIR = './data';

/**
 * The operator token for a command: --token (or FEDUNLEARN_OPERATOR_TOKEN), else the token file of --data (or
 * FEDUNLEARN_DATA), else, for a coordinator on this machine, the token file of ./data when there is one. A token file
 * found implicitly is never sent to another machine: it belongs to the local coordinator.
 */
async function operatorTokenFor(flags: ApiFlags): Promise<string | undefined> {
  if (flags.token) return flags.token;
  const { OPERATOR_TOKEN_FILE, readOperatorTokenFile } = await import('./http/operator-token.js');
  const read = (file: string) => {
    try {
      return readOperatorTokenFile(file);
    } catch (e) {
      throw new CliError(`${(e as Error).message} (serve creates it at first start; or pass --token)`, 2);
    }
  };
  if (flags.data) return read(join(flags.data, OPERATOR_TOKEN_FILE));
  let host = '';
  try {
    host = new URL(flags.url).hostname;
  } catch {
    return undefined;
  }
  const implicit = join(DEFAULT_DATA_DIR, OPERATOR_TOKEN_FILE);
  return isLoopbackName(host) && existsSync(implicit) ? read(implicit) : undefined;
}

class OperatorApi {
  private readonly base: string;

  constructor(
    url: string,
    private readonly token: string | undefined,
  ) {
    this.base = url.replace(/\/+$/, '');
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  /** POST, also telling which success status answered (202 created, 200 an existing resource). */
  async postWithStatus<T>(path: string, body: unknown): Promise<{ status: number; data: T }> {
    let status = 0;
    const data = await this.request<T>('POST', path, body, (s) => (status = s));
    return { status, data };
  }

  delete<T>(path: string): Promise<T> {
    return this.request<T>('DELETE', path);
  }

  private async request<T>(method: string, path: string, body?: unknown, onStatus?: (status: number) => void): Promise<T> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(this.base + path, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(30_000),
      });
    } catch (e) {
      const cause = (e as Error & { cause?: Error }).cause;
      throw new CliError(`cannot reach the coordinator at ${this.base}: ${cause?.message ?? (e as Error).message}`);
    }
    const text = await res.text();
    let data: unknown = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!res.ok) {
      const err = (data as { error?: { code?: string; message?: string } } | null)?.error;
      const hint = res.status !== 401 ? '' : this.token ? ' (check --token or FEDUNLEARN_OPERATOR_TOKEN)' : ' (pass --data DIR of the coordinator, --token, or set FEDUNLEARN_OPERATOR_TOKEN)';
      throw new CliError(`${method} ${path}: HTTP ${res.status} ${err?.code ?? res.statusText}: ${err?.message ?? text}${hint}`);
    }
    onStatus?.(res.status);
    return data as T;
  }
}

/** A job as the API shows it; `progress.waiting` is there while a replay step waits for offline clients. */
type PublicJob = Omit<JobRecord, 'checkpoint' | 'progress'> & { progress: JobRecord['progress'] & { waiting?: JobWaiting } };
interface StatusResponse {
  model: ModelVersion;
  connectedClients: number;
  jobs: Record<string, number>;
  uptimeMs: number;
  /** Why training stopped; null while it trains (absent from coordinators before the stopping rule). */
  trainingStopped?: string | null;
  /** A cluster's replicas (null or absent on one process). */
  cluster?: { replicaId: string; leader: { replicaId: string; epoch: number } | null; replicas: { replicaId: string; url: string; clients: string[] }[] } | null;
}
type ClientRow = Omit<ClientRecord, 'secretHash'> & { connected: boolean; backend: string | null };
interface IssuedCredential {
  clientId: string;
  secret: string;
}

// --- output -----------------------------------------------------------------------------------------------------

function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

function keyValues(rows: [string, string][]): string {
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n') + '\n';
}

const time = (ms: number) => new Date(ms).toISOString().replace('T', ' ').slice(0, 19);
const num = (x: number) => (Number.isInteger(x) ? String(x) : x.toPrecision(4));
const metrics = (m: Record<string, number>) =>
  Object.entries(m)
    .map(([k, v]) => `${k}=${num(v)}`)
    .join(' ');

function duration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return ms < 10_000 ? `${(ms / 1000).toFixed(1)}s` : `${s}s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m}m ${s % 60}s` : `${Math.floor(m / 60)}h ${m % 60}m`;
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 ** 2).toFixed(1)} MiB`;
}

const jobCounts = (jobs: Record<string, number>) => {
  const parts = Object.entries(jobs).map(([state, n]) => `${state} ${n}`);
  return parts.length > 0 ? parts.join(', ') : 'none';
};

function print(flags: ApiFlags, data: unknown, human: () => string): void {
  process.stdout.write(flags.json ? JSON.stringify(data, null, 2) + '\n' : human());
}

function formatStatus(s: StatusResponse): string {
  return keyValues([
    ['model', `${s.model.version} (round ${s.model.round}, ${s.model.cause})`],
    ['lineage', s.model.lineage],
    ['sha256', s.model.sha256],
    ['training', s.trainingStopped ? `stopped: ${s.trainingStopped}` : 'running'],
    ['clients', `${s.connectedClients} connected`],
    ['jobs', jobCounts(s.jobs)],
    ['uptime', duration(s.uptimeMs)],
    ...(s.cluster
      ? ([
          ['leader', s.cluster.leader ? `${s.cluster.leader.replicaId} (lease epoch ${s.cluster.leader.epoch})` : 'none (elections in progress)'],
          ...s.cluster.replicas.map((r) => [`replica ${r.replicaId}`, `${r.url} · ${r.clients.length} clients${r.replicaId === s.cluster!.replicaId ? ' (answered this request)' : ''}`] as [string, string]),
        ] as [string, string][])
      : []),
  ]);
}

function formatClients(clients: ClientRow[]): string {
  if (clients.length === 0) return 'no clients\n';
  return table(
    ['CLIENT', 'STATE', 'BACKEND', 'EXAMPLES', 'FIRST SEEN', 'LAST SEEN'],
    clients.map((c) => [
      c.clientId,
      c.forgotten ? 'forgotten' : c.revoked ? 'revoked' : c.connected ? 'connected' : 'offline',
      c.backend ?? '-',
      String(c.numExamples),
      // An issued credential that never connected has no times (0).
      c.firstSeen > 0 ? time(c.firstSeen) : 'never',
      c.lastSeen > 0 ? time(c.lastSeen) : 'never',
    ]),
  );
}

function formatCredential(c: IssuedCredential): string {
  return keyValues([
    ['client', c.clientId],
    ['secret', c.secret],
  ]) + 'the coordinator keeps only a hash of this secret: store it now, it cannot be shown again\n';
}

function formatRounds(rounds: RoundRecord[]): string {
  if (rounds.length === 0) return 'no rounds\n';
  return table(
    ['ROUND', 'ROUND ID', 'CLIENTS', 'UPDATES', 'MODEL AFTER', 'CLOSED', 'METRICS'],
    rounds.map((r) => [
      String(r.round),
      r.roundId,
      String(r.participants.length),
      r.updatesStored ? `${r.participants.filter((p) => p.hasUpdate).length} kept` : 'norms',
      r.modelAfter || '-',
      time(r.closedAt),
      metrics(r.metrics),
    ]),
  );
}

function formatModels(head: string, models: ModelVersion[]): string {
  if (models.length === 0) return 'no models\n';
  return table(
    ['', 'VERSION', 'CAUSE', 'ROUND', 'JOB', 'LINEAGE', 'CREATED', 'WEIGHTS'],
    // WEIGHTS: whether the version's weights can still be read (erased: a forgotten client shaped it; pruned: the
    // model retention policy dropped them; the record stays either way).
    models.map((m) => [m.version === head ? '*' : '', m.version, m.cause, String(m.round), m.jobId ?? '-', m.lineage, time(m.createdAt), m.erasedAt !== null ? 'erased' : m.prunedAt !== null ? 'pruned' : 'kept']),
  );
}

function formatJobs(jobs: PublicJob[]): string {
  if (jobs.length === 0) return 'no jobs\n';
  return table(
    ['JOB', 'STATE', 'METHOD', 'CLIENTS', 'PROGRESS', 'REQUESTED BY', 'UPDATED', 'MESSAGE'],
    jobs.map((j) => [
      j.jobId,
      j.state === 'running' && j.progress.waiting ? `waiting ${j.progress.waiting.connected}/${j.progress.waiting.of}` : j.state,
      j.method,
      j.clientIds.join(','),
      `${j.progress.step}/${j.progress.total}`,
      j.requestedBy,
      time(j.updatedAt),
      j.error ?? j.progress.message ?? '',
    ]),
  );
}

/** SIFU's certificate, as report lines (reports of other methods have none). */
function certificateLines(r: JobReport): [string, string][] {
  const c = r.certificate;
  if (!c) return [];
  const constants = Object.entries(c.constants).map(([k, v]) => `${k}=${String(v)}`).join(' ');
  return [
    ['certificate', `(epsilon ${c.epsilon}, delta ${c.delta}) with sigma ${c.sigma}${c.sigma === 0 ? ' (exact rollback: no noise needed)' : ''}`],
    ['rolled back to', `round ${c.rollbackRound} (${c.rollbackModel}); bound ${c.bound.toPrecision(4)} <= budget ${c.budget.toPrecision(4)}`],
    ['head bound', `${Number.isFinite(c.headBound) ? c.headBound.toPrecision(4) : 'infinite'}${c.sigmaToKeepHead !== null ? ` (sigma ${c.sigmaToKeepHead.toPrecision(4)} would have kept the head)` : ''}`],
    ['constants', constants],
    ...c.assumptions.map((a, i): [string, string] => [i === 0 ? 'assumes' : '', a]),
  ];
}

function formatReport(r: JobReport): string {
  const params = Object.entries(r.params).map(([k, v]) => `${k}=${String(v)}`);
  // Reports written before these fields existed lack them.
  const t0 = r.t0 === undefined ? [] : ([['t0', r.t0 === null ? 'none: no contribution to remove, the model was left as it was' : `round ${r.t0} (first round a forgotten client took part in)`]] as [string, string][]);
  const start = r.startModel ? ([['started from', `${r.startModel.version} round ${r.startModel.round} sha256 ${r.startModel.sha256}`]] as [string, string][]) : [];
  const kept = r.roundsKeptExact === undefined ? [] : ([['kept exact', r.exactPrefix ? `${r.roundsKeptExact} rounds (${r.exactPrefix.fromRound}-${r.exactPrefix.toRound}), as they were` : 'none']] as [string, string][]);
  const offline = r.offline
    ? ([['offline clients', `policy ${r.offline.policy}, waited ${duration(r.offline.waitedMs)} of ${duration(r.offline.waitMs)}${r.offline.completedServerSide.length > 0 ? `, completed server-side: ${r.offline.completedServerSide.join(', ')}` : ''}`]] as [string, string][])
    : [];
  const head = keyValues([
    ['job', r.jobId],
    ['forgotten', r.clientsForgotten.join(', ')],
    ['requested by', r.requestedBy],
    ['method', `${r.method} (${r.exact ? 'exact' : 'approximate'})${params.length > 0 ? ' ' + params.join(' ') : ''}`],
    ['model before', `${r.modelBefore.version} round ${r.modelBefore.round} sha256 ${r.modelBefore.sha256}`],
    ['model after', `${r.modelAfter.version} round ${r.modelAfter.round} sha256 ${r.modelAfter.sha256}${r.modelAfter.version === r.modelBefore.version ? ' (unchanged)' : ''}`],
    ...t0,
    ...start,
    ...kept,
    ['rounds', `${r.roundsReplayed.length} replayed, ${r.tuneRounds} tuning`],
    ...(r.updates ? ([['client updates', `${r.updates.exact} exact, ${r.updates.estimated} estimated, ${r.updates.stored} stored`]] as [string, string][]) : []),
    ...offline,
    ['client work', `${r.cost.tasks} tasks, ${num(r.cost.clientSampleEpochs)} sample-epochs, ${bytes(r.cost.bytesOnWire)} on the wire`],
    ['wall time', duration(r.wallTimeMs)],
    ['purged', `${r.purged.updatesDeleted} updates (${bytes(r.purged.bytesDeleted)}), ${r.purged.participantRowsDeleted} participant rows`],
    ['models erased', `${r.purged.modelsErased?.length ?? 0} versions (${bytes(r.purged.modelBytesDeleted ?? 0)})`],
    ['finished', time(r.finishedAt)],
    ['offline policy', r.offlinePolicy],
    ...certificateLines(r),
  ]);
  const rounds =
    r.roundsReplayed.length === 0
      ? ''
      : '\n' +
        table(
          ['ROUND', 'FROM', 'CALIBRATED', 'UNCALIBRATED', 'MISSING'],
          r.roundsReplayed.map((x) => [
            String(x.round),
            x.sourceRound === 0 ? 'tuning' : String(x.sourceRound),
            x.calibrated.join(',') || '-',
            x.uncalibrated.join(',') || '-',
            x.missing.map((m) => `${m.clientId}:${m.reason}`).join(',') || '-',
          ]),
        );
  const notes = r.notes.length > 0 ? '\nnotes:\n' + r.notes.map((n) => `  - ${n}`).join('\n') + '\n' : '';
  return head + rounds + notes;
}

// --- operator commands ------------------------------------------------------------------------------------------

const api = async (flags: ApiFlags) => new OperatorApi(flags.url, await operatorTokenFor(flags));
const seg = encodeURIComponent;

type SifuFlags = { epsilon?: number; delta?: number; sigma?: number; lipschitz?: number; smoothness?: number };

type FedRecoverFlags = Pick<MethodParams, 'warmupRounds' | 'correctionPeriod' | 'finalTuningRounds' | 'abnormalityThreshold' | 'lbfgsMemory'>;

async function forget(clientIds: string[], flags: ApiFlags & SifuFlags & FedRecoverFlags & { method?: string; tuneRounds?: number; calibrationRatio?: number; reuseFirstRound?: boolean; wait?: boolean; pollMs: number }): Promise<void> {
  const fedrecover = (['warmupRounds', 'correctionPeriod', 'finalTuningRounds', 'abnormalityThreshold', 'lbfgsMemory'] as const).filter((k) => flags[k] !== undefined);
  const params = {
    ...Object.fromEntries(fedrecover.map((k) => [k, flags[k]])),
    ...(flags.tuneRounds !== undefined ? { tuneRounds: flags.tuneRounds } : {}),
    ...(flags.calibrationRatio !== undefined ? { calibrationRatio: flags.calibrationRatio } : {}),
    ...(flags.reuseFirstRound ? { reuseFirstRound: true } : {}),
    ...Object.fromEntries((['epsilon', 'delta', 'sigma', 'lipschitz', 'smoothness'] as const).filter((k) => flags[k] !== undefined).map((k) => [k, flags[k]])),
  };
  const a = await api(flags);
  const posted = await a.postWithStatus<PublicJob>('/v1/jobs', {
    clientIds,
    ...(flags.method ? { method: flags.method } : {}),
    ...(Object.keys(params).length > 0 ? { params } : {}),
  });
  let job = posted.data;
  // 200: the same request was already in progress; the coordinator answered with that job rather than a second one.
  const existing = posted.status === 200 ? ' (already in progress: following the existing job)' : '';
  if (!flags.json) process.stdout.write(`job ${job.jobId} ${job.state}: ${job.method} forgetting ${job.clientIds.join(', ')}${existing}\n`);
  if (!flags.wait) {
    if (flags.json) print(flags, job, () => '');
    else process.stdout.write(`follow it with: ${NAME} jobs; ${NAME} report ${job.jobId}\n`);
    return;
  }
  let last = '';
  while (job.state === 'queued' || job.state === 'running') {
    await new Promise((r) => setTimeout(r, flags.pollMs));
    job = await a.get<PublicJob>(`/v1/jobs/${seg(job.jobId)}`);
    const w = job.progress.waiting;
    const line = w
      ? `waiting for clients: ${w.connected} of ${w.of} connected, ${w.needed} needed; offline: ${w.clientIds.join(', ')}${w.missing > w.clientIds.length ? ` and ${w.missing - w.clientIds.length} more` : ''}; until ${time(w.until)}, then policy ${w.policy}`
      : `${job.state} ${job.progress.step}/${job.progress.total}${job.progress.message ? ` ${job.progress.message}` : ''}`;
    // Progress goes to stderr, so that stdout holds only the result (and stays valid JSON under --json).
    if (line !== last) process.stderr.write(`  ${line}\n`);
    last = line;
  }
  if (job.state === 'failed') {
    if (flags.json) print(flags, job, () => '');
    throw new CliError(`job ${job.jobId} failed: ${job.error ?? 'no reason given'}`);
  }
  if (flags.json) return print(flags, job, () => '');
  process.stdout.write(formatReport(job.report as JobReport));
}

function operatorCommand(program: Command, name: string, description: string, opts: { isDefault?: boolean } = {}): Command {
  return program
    .command(name, opts)
    .description(description)
    .addOption(new Option('--url <url>', 'the coordinator').env('FEDUNLEARN_URL').default('http://127.0.0.1:8080'))
    .addOption(new Option('--token <token>', 'operator token').env('FEDUNLEARN_OPERATOR_TOKEN'))
    .addOption(new Option('--data <dir>', "the coordinator's data directory: its operator-token file is used (default: ./data when the coordinator is on this machine)").env('FEDUNLEARN_DATA'))
    .option('--json', 'print the raw JSON the API returned');
}

const intArg = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a non-negative integer');
  return n;
};
const positiveArg = (v: string): number => {
  const n = Number(v);
  if (!(n > 0) || !Number.isFinite(n)) throw new InvalidArgumentError('expected a positive number');
  return n;
};

function buildProgram(): Command {
  const program = new Command(NAME)
    .description('fedunlearn coordinator: federated training with client-level unlearning, and its operator commands')
    .version(version)
    .showHelpAfterError('(add --help for usage)')
    // Usage errors must exit 2 and action errors must not print a stack: commander throws, main() decides.
    .exitOverride();

  program
    .command('serve')
    .description('run the coordinator (flags override the config file, which overrides the defaults)')
    .option('--config <file>', 'config file (.yaml, .yml or .json) whose keys are the camelCase flag names')
    .option('--port <port>', 'HTTP port; 0 picks a free one (default 8080)', numberArg)
    .option('--host <host>', 'address to bind (default 127.0.0.1)')
    .option('--data <dir>', 'data directory: history database and blobs (default ./data)')
    .option('--store <url>', 'join a cluster: the shared PostgreSQL store postgres://user@host:port/db?schema=NAME (needs --redis; --data then keeps only the operator token and job scratch)')
    .option('--redis <url>', "a cluster's Redis, redis://host:port (needs --store)")
    .option('--replica-id <id>', "this replica's id in its cluster (default <host>-<pid>-<random>)")
    .option('--lease-ttl-ms <ms>', 'cluster: a dead leader is replaced within this time (default 10000)', numberArg)
    .option('--model <name>', 'built-in architecture: mlp|cnn (default mlp)')
    .option('--input-shape <shape>', 'shape of one example: 784 or 28,28,1 (default 784)')
    .option('--classes <n>', 'number of classes (default 10)', numberArg)
    .option('--clients-per-round <k>', 'clients asked to train each round (default 10)', numberArg)
    .option('--min-clients <q>', 'quorum: updates a round needs to commit (default min(2, K))', numberArg)
    .option('--round-deadline-ms <ms>', 'a round closes at this deadline (default 60000)', numberArg)
    .option('--lr <x>', 'client learning rate (default 0.1)', numberArg)
    .option('--batch-size <b>', 'client batch size (default 32)', numberArg)
    .option('--local-epochs <e>', 'local epochs per round (default 1)', numberArg)
    .option('--history-interval <dt>', 'keep full client updates every DT rounds, FedEraser Δt (default 2)', numberArg)
    .option('--retention <kind>', 'how kept updates are stored: fp32|fp16|int8|norms (default fp32)')
    .option('--models-after-forget <policy>', 'erase: a forget job deletes the weights of the model versions the forgotten clients contributed to; keep: they stay downloadable (default erase)')
    .option('--job-wait-for-clients-ms <ms>', 'a forget job waits at most this long in all for offline clients of its replay steps, showing whom it waits for (default 300000)', numberArg)
    .option('--job-offline-policy <policy>', 'then: fail (the job stops, nothing changed) or server-side (calibration steps are completed from the offline clients\' stored updates, uncalibrated; default fail)')
    .addOption(new Option('--client-forget-method <method>', 'the unlearning method of the jobs clients ask for through the SDK (default federaser)').choices(METHOD_NAMES))
    .option('--seed <s>', 'seeds the initial model and client selection (default 1)', numberArg)
    .option('--round-interval-ms <ms>', 'round cadence: a round starts at least this long after the previous one started; 0: back to back (default 60000)', numberArg)
    .option('--max-rounds <n>', 'stop training after this many training rounds in all; the API and forget jobs keep running (default 0: no limit)', numberArg)
    .option('--patience-rounds <n>', 'stop training when the training loss has not improved by --min-delta for this many rounds (default 0: off)', numberArg)
    .option('--min-delta <x>', 'smallest training-loss decrease that counts as an improvement for --patience-rounds (default 0.001)', numberArg)
    .option('--keep-last-models <n>', 'model retention: the last N model versions keep their weights, older ones are pruned (records stay); 0 keeps all (default 10)', numberArg)
    .option('--keep-models-every <k>', 'model retention: also keep every version whose round is a multiple of K; 0: none (default 100)', numberArg)
    .addOption(new Option('--operator-token <token>', 'bearer token the operator API requires (default: one generated at first start and kept in <data>/operator-token, mode 0600)').env('FEDUNLEARN_OPERATOR_TOKEN'))
    .option('--insecure-no-auth', 'run the operator API without any token: anyone who can reach the port controls the federation (development only; warned at every start)')
    .option('--allowed-hosts <names>', 'comma-separated host names the operator API answers to besides loopback names and the --host address ("*": any, when a proxy checks it)')
    .option('--accept-history-loss', 'start even though the database is behind the high-water mark of what was committed (lost commits); orphaned blobs go to <data>/quarantine')
    .option('--enrolment <mode>', 'closed: only clients with issued credentials (`clients add`); open: new ids enrol on first hello, development only (default closed)')
    .option('--metrics-auth', 'GET /metrics requires the operator token too (default: open, like Prometheus exporters)')
    .addOption(new Option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (default info)').env('FEDUNLEARN_LOG_LEVEL'))
    .action((flags: ServeFlags) => serve(flags));

  operatorCommand(program, 'status', 'the current model, connected clients and jobs').action(async (flags: ApiFlags) => {
    const s = await (await api(flags)).get<StatusResponse>('/v1/status');
    print(flags, s, () => formatStatus(s));
  });

  const clients = program.command('clients').description('list known clients (the default) and manage their credentials: add, revoke, rotate');
  operatorCommand(clients, 'list', 'known clients and whether they are connected', { isDefault: true }).action(async (flags: ApiFlags) => {
    const r = await (await api(flags)).get<{ clients: ClientRow[] }>('/v1/clients');
    print(flags, r, () => formatClients(r.clients));
  });
  operatorCommand(clients, 'add', 'issue a credential to a new client; its secret is shown this once')
    .argument('[id]', 'client id (default: a generated one)')
    .action(async (clientId: string | undefined, flags: ApiFlags) => {
      const r = await (await api(flags)).post<IssuedCredential>('/v1/clients', clientId ? { clientId } : {});
      print(flags, r, () => formatCredential(r));
    });
  operatorCommand(clients, 'revoke', "revoke a client's credential: it is disconnected and refused from now on")
    .argument('<id>', 'client id')
    .action(async (clientId: string, flags: ApiFlags) => {
      await (await api(flags)).delete(`/v1/clients/${seg(clientId)}`);
      print(flags, { clientId, revoked: true }, () => `client ${clientId} revoked\n`);
    });
  operatorCommand(clients, 'rotate', 'issue a new secret to a client (the old one stops working; lifts a revocation)')
    .argument('<id>', 'client id')
    .action(async (clientId: string, flags: ApiFlags) => {
      const r = await (await api(flags)).post<IssuedCredential>(`/v1/clients/${seg(clientId)}/secret`, {});
      print(flags, r, () => formatCredential(r));
    });

  operatorCommand(program, 'rounds', 'training rounds of the current lineage')
    .option('--lineage <id>', 'another lineage (see `models`)')
    .action(async (flags: ApiFlags & { lineage?: string }) => {
      const q = flags.lineage ? `?lineage=${seg(flags.lineage)}` : '';
      const a = await api(flags);
      const r = await a.get<{ rounds: RoundRecord[] }>(`/v1/rounds${q}`);
      if (flags.lineage && r.rounds.length === 0) {
        // An empty answer is also what a mistyped lineage gets: tell them apart by the model versions' lineages.
        const { models } = await a.get<{ models: ModelVersion[] }>('/v1/models');
        if (!models.some((m) => m.lineage === flags.lineage)) throw new CliError(`no lineage ${flags.lineage} (lineages: ${[...new Set(models.map((m) => m.lineage))].join(', ')}; see \`${NAME} models\`)`);
      }
      print(flags, r, () => formatRounds(r.rounds));
    });

  operatorCommand(program, 'models', 'model versions (* marks the head)').action(async (flags: ApiFlags) => {
    const r = await (await api(flags)).get<{ head: string; models: ModelVersion[] }>('/v1/models');
    print(flags, r, () => formatModels(r.head, r.models));
  });

  operatorCommand(program, 'forget', 'queue a job that removes clients from the model')
    .argument('<clients...>', 'client ids to forget')
    .addOption(new Option('--method <method>', 'unlearning method').choices(METHOD_NAMES))
    .option('--tune-rounds <n>', 'ordinary rounds with the remaining clients afterwards', intArg)
    .option('--calibration-ratio <r>', 'FedEraser: calibration epochs are r * local epochs', positiveArg)
    .option('--reuse-first-round', 'FedEraser: apply the first stored round as stored')
    .option('--epsilon <e>', 'SIFU: unlearning budget epsilon, in (0, 1) (default 0.5)', positiveArg)
    .option('--delta <d>', 'SIFU: budget delta, in (0, 1) (default 1e-5)', positiveArg)
    .option('--sigma <s>', 'SIFU: standard deviation of the noise per weight (default 0.05)', positiveArg)
    .option('--lipschitz <b>', 'SIFU: Lipschitz constant assumed for one round (default 1)', positiveArg)
    .option('--smoothness <l>', 'SIFU: smoothness L of the losses (per-round constant (1 + lr L)^K)', positiveArg)
    .option('--warmup-rounds <n>', 'FedRecover: T_w, warm-up rounds of exact updates', intArg)
    .option('--correction-period <n>', 'FedRecover: T_c, exact updates every T_c rounds', intArg)
    .option('--final-tuning-rounds <n>', 'FedRecover: T_f, last rounds of exact updates', intArg)
    .option('--abnormality-threshold <x>', 'FedRecover: an estimate with a coordinate above x is replaced by the exact update', positiveArg)
    .option('--lbfgs-memory <n>', 'FedRecover: L-BFGS pairs kept per client', intArg)
    .option('--wait', 'follow the job until it ends and print its report')
    .addOption(new Option('--poll-ms <ms>', 'how often --wait asks').argParser(positiveArg).default(1000).hideHelp())
    .action((clientIds: string[], flags: Parameters<typeof forget>[1]) => forget(clientIds, flags));

  operatorCommand(program, 'jobs', 'forget jobs and their progress').action(async (flags: ApiFlags) => {
    const r = await (await api(flags)).get<{ jobs: PublicJob[] }>('/v1/jobs');
    print(flags, r, () => formatJobs(r.jobs));
  });

  operatorCommand(program, 'report', "a finished job's report (its certificate)")
    .argument('<job>', 'job id')
    .action(async (jobId: string, flags: ApiFlags) => {
      const r = await (await api(flags)).get<JobReport>(`/v1/jobs/${seg(jobId)}/report`);
      print(flags, r, () => formatReport(r));
    });

  return program;
}

async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (e) {
    // Commander has already printed its message (or the help) when it throws.
    if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2);
    process.stderr.write(`${NAME}: ${(e as Error).message}\n`);
    if (process.env.DEBUG) console.error(e);
    process.exit(e instanceof CliError ? e.exitCode : 1);
  }
}

void main(process.argv);
