import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { DEFAULT_FRAMING, ErrorCode, fedunlearn, ProtocolError, type FlatWeights, type FramingLimits } from '@fedunlearn/protocol';
import type { FastifyInstance } from 'fastify';
import { FedAvg } from './aggregation/fedavg.js';
import type { AggregationStrategy } from './aggregation/strategy.js';
import type { HistoryStore, JobRecord } from './history/store.js';
import { buildHttpApi } from './http/api.js';
import { createLogger, type Logger } from './logger.js';
import { CoordinatorMetrics } from './metrics.js';
import { TaskDispatcher } from './rounds/dispatcher.js';
import { QuorumError, RoundEngine, type FederationConfig, type ModelCache, type RoundOutcome } from './rounds/round-engine.js';
import { ClientRegistry } from './transport/client-registry.js';
import { hashSecret, verifySecret } from './transport/credentials.js';
import type { ClientSession } from './transport/session.js';
import { SocketServer, type Authenticator } from './transport/socket-server.js';
import { UnlearningEngine, type ForgetJobInput } from './unlearning/engine.js';

export const COORDINATOR_VERSION = '0.1.0';

export interface ModelSpec {
  topologyJson: string;
  initial: FlatWeights;
}

export interface CoordinatorOptions {
  store: HistoryStore;
  /** Where job scratch files live (normally the store's data directory). */
  dataDir: string;
  /** The model a new federation starts from; ignored when the store already holds a federation. */
  model: ModelSpec;
  federation: FederationConfig;
  historyInterval: number;
  retention?: 'fp32' | 'fp16' | 'int8' | 'norms';
  strategy?: AggregationStrategy;
  logger?: Logger;
  framing?: FramingLimits;
  /** 'open': a new client id enrols on first hello (its secret is kept hashed); 'closed': only known clients. */
  enrolment?: 'open' | 'closed';
  /** Bearer token required on operator routes; none means operator routes are open (development only). */
  operatorToken?: string;
  /** Whether GET /metrics also requires the operator token (when one is set); default false, like Prometheus exporters. */
  metricsAuth?: boolean;
  helloTimeoutMs?: number;
  heartbeatIntervalMs?: number;
  /** Pause between rounds when running continuously. */
  roundIntervalMs?: number;
}

export interface CoordinatorEvents {
  round: [RoundOutcome];
  job: [JobRecord];
  /** A running job's progress (the dashboard shows it live); 'job' fires on submit and when it ends. */
  jobProgress: [JobRecord];
  /** stop() began: long-lived HTTP streams end now, or they would hold the server open. */
  stopping: [];
  error: [Error];
}

/**
 * The coordinator service: one HTTP server carrying the operator API and the clients' socket.io endpoint, a round
 * loop, and the unlearning engine. Rounds and forget jobs never overlap: both run under one work lock, and a queued
 * job runs at the next round boundary.
 */
export class Coordinator extends EventEmitter<CoordinatorEvents> {
  readonly store: HistoryStore;
  readonly registry = new ClientRegistry();
  readonly dispatcher: TaskDispatcher;
  readonly rounds: RoundEngine;
  readonly unlearning: UnlearningEngine;
  readonly log: Logger;
  readonly metrics: CoordinatorMetrics;
  readonly http: FastifyInstance;
  readonly transport: SocketServer;
  readonly config: FederationConfig;
  readonly startedAt = Date.now();
  private readonly current: ModelCache;
  private work: Promise<unknown> = Promise.resolve();
  private readonly abort = new AbortController();
  private loop: Promise<void> | null = null;
  private forgotten: Set<string>;
  private readonly roundIntervalMs: number;

  private constructor(opts: CoordinatorOptions, current: ModelCache) {
    super();
    this.store = opts.store;
    this.config = opts.federation;
    this.log = opts.logger ?? createLogger();
    this.current = current;
    this.roundIntervalMs = opts.roundIntervalMs ?? 0;
    // Its sources are read at scrape time only, by which point every part below exists.
    this.metrics = new CoordinatorMetrics({
      connectedClients: () => this.registry.size,
      historyStats: () => this.store.stats(),
      jobs: () => this.store.listJobs(),
      transport: () => this.transport.totals(),
    });
    this.dispatcher = new TaskDispatcher(this.registry, this.metrics);
    const strategy = opts.strategy ?? new FedAvg();
    this.unlearning = new UnlearningEngine({
      store: this.store,
      registry: this.registry,
      dispatcher: this.dispatcher,
      strategy,
      config: opts.federation,
      scratchDir: join(opts.dataDir, 'jobs'),
      log: this.log,
    });
    this.forgotten = this.unlearning.forgottenClients();
    this.rounds = new RoundEngine({
      store: this.store,
      registry: this.registry,
      dispatcher: this.dispatcher,
      strategy,
      config: opts.federation,
      log: this.log,
      isEligible: (id) => !this.forgotten.has(id),
    });
    this.unlearning.on('progress', (job) => {
      this.metrics.jobUpdated(job);
      this.notifyJob(job);
      this.emit('jobProgress', job);
    });
    this.unlearning.on('finished', (job) => {
      this.metrics.jobUpdated(job);
      this.forgotten = this.unlearning.forgottenClients();
      this.notifyJob(job);
      this.emit('job', job);
    });
    this.on('round', (r) => this.metrics.roundCompleted(r.durationMs));
    this.http = buildHttpApi(this, { operatorToken: opts.operatorToken, metricsAuth: opts.metricsAuth ?? false });
    this.transport = new SocketServer(
      this.http.server,
      this.registry,
      this.authenticator(opts.enrolment ?? 'open'),
      {
        update: (session, update, bytes) => this.dispatcher.receiveUpdate(session, update, bytes),
        forgetRequest: (session, req) => this.onForgetRequest(session, req),
        clientError: (session, err) => {
          if (err.ref) this.dispatcher.receiveFailure(session, err.ref, err.message);
        },
      },
      {
        framing: opts.framing ?? DEFAULT_FRAMING,
        helloTimeoutMs: opts.helloTimeoutMs ?? 10_000,
        heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 5_000,
        coordinatorVersion: COORDINATOR_VERSION,
      },
      this.log,
    );
  }

  /** Opens (or creates) the federation in `store` and resumes from its last committed round. */
  static async create(opts: CoordinatorOptions): Promise<Coordinator> {
    const { meta, head, resumed } = opts.store.open({
      topologyJson: opts.model.topologyJson,
      layout: opts.model.initial.layout,
      initialWeights: opts.model.initial.values,
      config: { historyInterval: opts.historyInterval, retention: opts.retention ?? 'fp32' },
    });
    const weights = await opts.store.readModel(head.version);
    const c = new Coordinator(opts, { version: head.version, weights: { layout: meta.layout, values: weights } });
    c.log.info({ resumed, round: head.round, version: head.version }, resumed ? 'federation resumed' : 'federation created');
    return c;
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<{ port: number; url: string }> {
    await this.http.listen({ port, host });
    const addr = this.http.server.address();
    const p = typeof addr === 'object' && addr ? addr.port : port;
    return { port: p, url: `http://${host}:${p}` };
  }

  /** The current global model (a copy). */
  model(): { version: string; weights: Float32Array } {
    return { version: this.current.version, weights: this.current.weights.values.slice() };
  }

  /** Runs `n` training rounds now (for simulations and tests); queued forget jobs run first. */
  async runRounds(n: number, onRound?: (r: RoundOutcome) => void | Promise<void>): Promise<RoundOutcome[]> {
    const out: RoundOutcome[] = [];
    for (let i = 0; i < n; i++) {
      await this.runPendingJobs();
      const r = await this.exclusive(() => this.rounds.runRound(this.current, this.abort.signal));
      this.emit('round', r);
      out.push(r);
      await onRound?.(r);
    }
    return out;
  }

  /** Trains continuously until stop(): a queued forget job pauses training at the next round boundary. */
  start(): void {
    if (this.loop) return;
    this.loop = (async () => {
      while (!this.abort.signal.aborted) {
        try {
          await this.runPendingJobs();
          if (this.abort.signal.aborted) break;
          const r = await this.exclusive(() => this.rounds.runRound(this.current, this.abort.signal));
          this.emit('round', r);
        } catch (e) {
          if (this.abort.signal.aborted) break;
          if (!(e instanceof QuorumError)) {
            this.log.error({ err: e }, 'round failed');
            this.emit('error', e as Error);
          }
        }
        if (this.roundIntervalMs > 0) await sleep(this.roundIntervalMs, this.abort.signal);
      }
    })();
  }

  /** Queues a forget job (validated and persisted at once); it runs at the next round boundary. */
  forget(input: ForgetJobInput): JobRecord {
    const unknown = input.clientIds.filter((id) => !this.store.getClient(id));
    if (unknown.length > 0) throw new ProtocolError(ErrorCode.UNKNOWN_CLIENT, `unknown client(s): ${unknown.join(', ')}`);
    const already = input.clientIds.filter((id) => this.forgotten.has(id));
    if (already.length > 0) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, `already forgotten: ${already.join(', ')}`);
    const job = this.unlearning.submit(input);
    this.metrics.forgetRequested(input.requestedBy.startsWith('client:') ? 'client' : 'operator');
    this.emit('job', job);
    return job;
  }

  /** Runs every queued (or interrupted) job now. */
  async runPendingJobs(): Promise<JobRecord[]> {
    const done: JobRecord[] = [];
    for (const job of this.unlearning.pending()) {
      if (this.abort.signal.aborted) break;
      // A job resumed right after a restart would otherwise send its replay before the fleet has reconnected, find
      // nobody to answer and fail: like a round, it first waits (bounded) for a quorum of clients that may take part.
      const excluded = new Set(job.clientIds);
      await this.registry.waitFor(this.config.minClients, this.config.waitForClientsMs, this.abort.signal, (id) => !excluded.has(id) && !this.forgotten.has(id));
      if (this.abort.signal.aborted) break;
      done.push(await this.exclusive(() => this.unlearning.run(job, this.current, this.abort.signal)));
    }
    return done;
  }

  /** Resolves when the job is done or failed. */
  waitForJob(jobId: string): Promise<JobRecord> {
    const now = this.store.getJob(jobId);
    if (!now) return Promise.reject(new Error(`no job ${jobId}`));
    if (now.state === 'done' || now.state === 'failed') return Promise.resolve(now);
    return new Promise((resolve) => {
      const on = (job: JobRecord) => {
        if (job.jobId === jobId && (job.state === 'done' || job.state === 'failed')) {
          this.off('job', on);
          resolve(job);
        }
      };
      this.on('job', on);
    });
  }

  isForgotten(clientId: string): boolean {
    return this.forgotten.has(clientId);
  }

  async stop(): Promise<void> {
    this.abort.abort();
    this.emit('stopping');
    await this.loop?.catch(() => undefined);
    await this.work.catch(() => undefined);
    for (const s of this.registry.connected()) s.disconnect('coordinator stopping');
    await this.transport.close();
    await this.http.close();
    this.store.close();
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.work.then(fn, fn);
    this.work = run.catch(() => undefined);
    return run;
  }

  private authenticator(enrolment: 'open' | 'closed'): Authenticator {
    return {
      authenticate: (hello) => {
        if (this.forgotten.has(hello.clientId)) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `client ${hello.clientId} was forgotten at its request`);
        const known = this.store.getClient(hello.clientId);
        if (known?.secretHash) {
          if (!verifySecret(hello.secret, known.secretHash)) throw new ProtocolError(ErrorCode.UNAUTHENTICATED, 'wrong credentials');
        } else if (!known && enrolment === 'closed') {
          throw new ProtocolError(ErrorCode.UNKNOWN_CLIENT, `unknown client ${hello.clientId}`);
        } else if (!hello.secret || hello.secret.length < 8) {
          throw new ProtocolError(ErrorCode.UNAUTHENTICATED, 'a secret of at least 8 characters is required');
        }
        this.store.upsertClient({
          clientId: hello.clientId,
          ...(known?.secretHash ? {} : { secretHash: hashSecret(hello.secret) }),
          numExamples: hello.numExamples,
          seenAt: Date.now(),
        });
      },
    };
  }

  private readonly jobWatchers = new Map<string, { session: ClientSession; requestId: string }>();

  private onForgetRequest(session: ClientSession, req: fedunlearn.v1.ForgetRequest): void {
    // A session can only ever name itself: the request carries no client id to forge.
    const existing = this.store.listJobs().find((j) => j.requestedBy === `client:${session.clientId}` && (j.state === 'queued' || j.state === 'running'));
    const job = existing ?? this.forget({ clientIds: [session.clientId], requestedBy: `client:${session.clientId}` });
    this.jobWatchers.set(job.jobId, { session, requestId: req.requestId });
    session.channel.send({ forgetReceipt: { requestId: req.requestId, jobId: job.jobId, state: toWireState(job.state) } });
  }

  private notifyJob(job: JobRecord): void {
    const w = this.jobWatchers.get(job.jobId);
    if (!w) return;
    const report = job.report as { modelBefore?: { version: string; sha256: string }; modelAfter?: { version: string; sha256: string } } | null;
    try {
      w.session.channel.send({
        jobStatus: {
          jobId: job.jobId,
          state: toWireState(job.state),
          step: job.progress.step,
          totalSteps: job.progress.total,
          message: job.error ?? job.progress.message ?? '',
          modelVersionBefore: report?.modelBefore?.version ?? '',
          modelVersionAfter: report?.modelAfter?.version ?? '',
          sha256Before: report?.modelBefore?.sha256 ?? '',
          sha256After: report?.modelAfter?.sha256 ?? '',
          reportJson: job.state === 'done' ? JSON.stringify(job.report) : '',
        },
      });
    } catch (e) {
      this.log.warn({ jobId: job.jobId, err: e }, 'could not notify the requesting client');
    }
    if (job.state === 'done' || job.state === 'failed') this.jobWatchers.delete(job.jobId);
  }
}

export function toWireState(state: JobRecord['state']): fedunlearn.v1.JobState {
  const S = fedunlearn.v1.JobState;
  return { queued: S.QUEUED, running: S.RUNNING, done: S.DONE, failed: S.FAILED }[state];
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(t);
      resolve();
    });
  });
}
