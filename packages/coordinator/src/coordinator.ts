import { EventEmitter } from 'node:events';
import { join } from 'node:path';
import { DEFAULT_FRAMING, ErrorCode, fedunlearn, ProtocolError, type FlatWeights, type FramingLimits } from '@fedunlearn/protocol';
import type { FastifyInstance } from 'fastify';
import { nanoid } from 'nanoid';
import { FedAvg } from './aggregation/fedavg.js';
import type { AggregationStrategy } from './aggregation/strategy.js';
import type { ClientRecord, HistoryStore, JobRecord } from './history/store.js';
import { buildHttpApi, type TlsFiles } from './http/api.js';
import { createLogger, type Logger } from './logger.js';
import { CoordinatorMetrics } from './metrics.js';
import { DEFAULT_GRANT_ABOVE_BYTES, DEFAULT_UPLOAD_TIMEOUT_MS, DEFAULT_UPLOAD_WINDOW_BYTES, TaskDispatcher } from './rounds/dispatcher.js';
import { modelsToPrune, type ModelRetentionPolicy } from './history/model-retention.js';
import { NO_STOPPING, stopReason, type StoppingRule } from './rounds/stopping.js';
import { QuorumError, RoundEngine, type FederationConfig, type ModelCache, type RoundOutcome } from './rounds/round-engine.js';
import { assertClientId } from './transport/client-id.js';
import { ClientRegistry } from './transport/client-registry.js';
import { generateSecret, hashIssuedSecret, hashSecret, verifySecret } from './transport/credentials.js';
import { FailureLockout, KeyedTokenBucket, SlidingWindowLimit, type Clock } from './transport/rate-limit.js';
import type { ClientSession } from './transport/session.js';
import { SocketServer, type Authenticator } from './transport/socket-server.js';
import { UnlearningEngine, type ForgetJobInput } from './unlearning/engine.js';

export const COORDINATOR_VERSION = '0.1.0';
/** Pause of the round loop after a round that found no quorum. */
const QUORUM_RETRY_MS = 1_000;

/** Abuse limits; every field has a default (DEFAULT_LIMITS). */
export interface SecurityLimits {
  /** Connection attempts per remote address: a token bucket of this size... */
  handshakeBurst: number;
  /** ...refilled at this rate. */
  handshakeRefillPerSecond: number;
  /** Wrong secrets for one client id from one address within authFailureWindowMs that lock the id for that address
   *  (so a stranger guessing cannot lock the real device out from elsewhere)... */
  authMaxFailures: number;
  /** ...and wrong secrets for one client id from all addresses together that lock it everywhere (guessing spread over
   *  many addresses stays bounded). */
  authMaxFailuresPerClient: number;
  authFailureWindowMs: number;
  /** ...for this long, doubling with each further lockout up to authMaxLockoutMs. */
  authLockoutMs: number;
  authMaxLockoutMs: number;
  /** Forget requests one client may send per hour (besides having one job in progress at most). */
  forgetRequestsPerHour: number;
  /** Mutating operator requests (new jobs, credential changes) per remote address per minute. */
  operatorMutationsPerMinute: number;
}

/**
 * Sized so that a thousand devices behind one address reconnecting at once all get in within seconds (the SDK backs
 * off with jitter when refused), while one address cannot make the coordinator run scrypt without bound.
 */
export const DEFAULT_LIMITS: Readonly<SecurityLimits> = {
  handshakeBurst: 200,
  handshakeRefillPerSecond: 100,
  authMaxFailures: 5,
  authMaxFailuresPerClient: 50,
  authFailureWindowMs: 60_000,
  authLockoutMs: 60_000,
  authMaxLockoutMs: 3_600_000,
  forgetRequestsPerHour: 3,
  operatorMutationsPerMinute: 60,
};

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
  /**
   * What a finished forget job does with the stored model versions the forgotten clients contributed to (the old
   * lineage from their first round on): 'erase' (default) deletes their weights and keeps the records for the audit,
   * so the right to erasure covers every copy of their influence; 'keep' leaves them downloadable (research setups
   * that compare the model before and after).
   */
  modelsAfterForget?: 'erase' | 'keep';
  strategy?: AggregationStrategy;
  logger?: Logger;
  framing?: FramingLimits;
  /**
   * 'closed' (default): only clients holding an operator-issued credential (issueClient, POST /v1/clients); 'open':
   * a new client id also enrols on its first hello, trusting it from then on (development and simulations).
   */
  enrolment?: 'open' | 'closed';
  limits?: Partial<SecurityLimits>;
  /** The limiters' clock (tests move it by hand); Date.now by default. */
  clock?: Clock;
  /** Serve the API and the clients' endpoint over HTTPS (PEM contents). */
  tls?: TlsFiles;
  /** Bearer token required on operator routes; none means operator routes are open (development only). */
  operatorToken?: string;
  /** Whether GET /metrics also requires the operator token (when one is set); default false, like Prometheus exporters. */
  metricsAuth?: boolean;
  helloTimeoutMs?: number;
  heartbeatIntervalMs?: number;
  /** Cadence of start(): a round starts at least this long after the previous round started (0, the default: back
   *  to back). The service's default is one a minute (config.ts). */
  roundIntervalMs?: number;
  /** When start() stops training (rounds/stopping.ts); default: never. Forget jobs still run after a stop. */
  stopping?: Partial<StoppingRule>;
  /** Which model versions keep their weights after each round (history/model-retention.ts); default: all of them. */
  modelRetention?: ModelRetentionPolicy;
  /**
   * Upload flow control (UploadRequest in the proto): answers above `grantAboveBytes` (default 64 KiB; 0 turns it off)
   * are sent only once granted, and grants keep the update bytes arriving or waiting to be folded and staged under
   * `windowBytes` (default 128 MB; one grant is always possible). A granted upload has `uploadTimeoutMs` (default
   * 60 s) to arrive.
   */
  uploads?: { windowBytes?: number; grantAboveBytes?: number; uploadTimeoutMs?: number };
}

export interface CoordinatorEvents {
  round: [RoundOutcome];
  job: [JobRecord];
  /** start() stopped training for this reason (the API, the clients' endpoint and forget jobs keep running). */
  trainingStopped: [string];
  /** Model versions the retention policy pruned after a round. */
  modelsPruned: [string[]];
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
  private readonly stopping: StoppingRule;
  private readonly modelRetention: ModelRetentionPolicy | undefined;
  /** Why start() stopped training; null while it trains. */
  private stoppedBecause: string | null = null;
  private readonly enrolment: 'open' | 'closed';
  private readonly tls: boolean;
  /** Wrong secrets per client id and address... */
  private readonly authLockout: FailureLockout;
  /** ...and per client id from anywhere. */
  private readonly clientLockout: FailureLockout;
  private readonly forgetLimit: SlidingWindowLimit;
  /** Client ids whose hello is being verified: one at a time each, so parallel guesses cannot outrun the lockout. */
  private readonly verifying = new Set<string>();

  private constructor(opts: CoordinatorOptions, current: ModelCache) {
    super();
    this.store = opts.store;
    this.config = opts.federation;
    this.log = opts.logger ?? createLogger();
    this.current = current;
    this.roundIntervalMs = opts.roundIntervalMs ?? 0;
    this.stopping = { ...NO_STOPPING, ...opts.stopping };
    this.modelRetention = opts.modelRetention;
    // Its sources are read at scrape time only, by which point every part below exists.
    this.metrics = new CoordinatorMetrics({
      connectedClients: () => this.registry.size,
      historyStats: () => this.store.stats(),
      jobs: () => this.store.listJobs(),
      transport: () => this.transport.totals(),
      uploads: () => this.dispatcher.counters,
    });
    const framing = opts.framing ?? DEFAULT_FRAMING;
    this.dispatcher = new TaskDispatcher(this.registry, this.metrics, {
      windowBytes: opts.uploads?.windowBytes ?? DEFAULT_UPLOAD_WINDOW_BYTES,
      grantAboveBytes: opts.uploads?.grantAboveBytes ?? DEFAULT_GRANT_ABOVE_BYTES,
      uploadTimeoutMs: opts.uploads?.uploadTimeoutMs ?? DEFAULT_UPLOAD_TIMEOUT_MS,
      maxMessageBytes: framing.maxMessageBytes,
    });
    const strategy = opts.strategy ?? new FedAvg();
    this.unlearning = new UnlearningEngine({
      store: this.store,
      registry: this.registry,
      dispatcher: this.dispatcher,
      strategy,
      config: opts.federation,
      scratchDir: join(opts.dataDir, 'jobs'),
      eraseModels: (opts.modelsAfterForget ?? 'erase') === 'erase',
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
      // A forgotten client has nothing left to do here: after its final job status it is told why and disconnected
      // (its next hello is refused), rather than lingering as a connection that is never selected.
      if (job.state === 'done') for (const id of job.clientIds) this.closeSession(id, `client ${id} was forgotten; its data is purged and it cannot rejoin`);
    });
    this.on('round', (r) => this.metrics.roundCompleted(r.durationMs));
    const limits = { ...DEFAULT_LIMITS, ...opts.limits };
    const clock = opts.clock ?? Date.now;
    this.enrolment = opts.enrolment ?? 'closed';
    this.tls = opts.tls !== undefined;
    const lockout = { windowMs: limits.authFailureWindowMs, lockMs: limits.authLockoutMs, maxLockMs: limits.authMaxLockoutMs, clock };
    this.authLockout = new FailureLockout({ ...lockout, maxFailures: limits.authMaxFailures });
    this.clientLockout = new FailureLockout({ ...lockout, maxFailures: Math.max(limits.authMaxFailures, limits.authMaxFailuresPerClient) });
    this.forgetLimit = new SlidingWindowLimit({ max: limits.forgetRequestsPerHour, windowMs: 3_600_000, clock });
    if (this.enrolment === 'open') this.log.warn({}, "enrolment is 'open': any new client id is trusted on its first hello (development only)");
    this.http = buildHttpApi(this, {
      operatorToken: opts.operatorToken,
      metricsAuth: opts.metricsAuth ?? false,
      operatorMutationsPerMinute: limits.operatorMutationsPerMinute,
      ...(opts.tls ? { tls: opts.tls } : {}),
    });
    this.transport = new SocketServer(
      this.http.server,
      this.registry,
      this.authenticator(),
      {
        update: (session, update, bytes, chunked) => this.dispatcher.receiveUpdate(session, update, bytes, chunked),
        uploadRequest: (session, req) => this.dispatcher.receiveUploadRequest(session, req),
        admitStream: (session, streamId, totalBytes) => this.dispatcher.admitStream(session?.clientId ?? null, streamId, totalBytes),
        grantAboveBytes: () => this.dispatcher.grantAboveBytes,
        forgetRequest: (session, req) => this.onForgetRequest(session, req),
        clientError: (session, err) => {
          if (err.ref) this.dispatcher.receiveFailure(session, err.ref, err.message);
        },
      },
      {
        framing,
        helloTimeoutMs: opts.helloTimeoutMs ?? 10_000,
        heartbeatIntervalMs: opts.heartbeatIntervalMs ?? 5_000,
        coordinatorVersion: COORDINATOR_VERSION,
        handshakeLimit: new KeyedTokenBucket({ burst: limits.handshakeBurst, refillPerSecond: limits.handshakeRefillPerSecond, clock }),
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
    return { port: p, url: `${this.tls ? 'https' : 'http'}://${host}:${p}` };
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
      await this.retainModels();
      out.push(r);
      await onRound?.(r);
    }
    return out;
  }

  /** Trains continuously until stop(): a queued forget job pauses training at the next round boundary. */
  start(): void {
    if (this.loop) return;
    this.loop = (async () => {
      let lastStart = -Infinity;
      while (!this.abort.signal.aborted) {
        try {
          await this.runPendingJobs();
          if (this.abort.signal.aborted) break;
          if (this.trainingDone()) {
            // Stopped: no more rounds, but queued forget jobs still run (checked again on each 'job' or every second).
            await eventOrTimeout(this, 'job', 1_000, this.abort.signal);
            continue;
          }
          // The cadence counts from round start to round start, so a long round is not followed by a long pause.
          const wait = lastStart + this.roundIntervalMs - Date.now();
          if (wait > 0) await sleep(wait, this.abort.signal);
          if (this.abort.signal.aborted) break;
          const startedAt = Date.now();
          lastStart = startedAt;
          const r = await this.exclusive(() => this.rounds.runRound(this.current, this.abort.signal, startedAt));
          this.emit('round', r);
          await this.retainModels();
        } catch (e) {
          if (this.abort.signal.aborted) break;
          if (!(e instanceof QuorumError)) {
            this.log.error({ err: e }, 'round failed');
            this.emit('error', e as Error);
          } else {
            // A quorum can fail fast (every selected client refused or left at once): without a pause this loop
            // would retry without ever yielding to the sockets and timers.
            await sleep(QUORUM_RETRY_MS, this.abort.signal);
          }
        }
      }
    })();
  }

  /** Why training stopped (stopping rule), or null while start() trains. */
  trainingStoppedBecause(): string | null {
    return this.stoppedBecause;
  }

  /** Whether the stopping rule holds now; logs and emits 'trainingStopped' the first time it does. */
  private trainingDone(): boolean {
    if (this.stoppedBecause !== null) return true;
    const { maxRounds, patienceRounds } = this.stopping;
    if (maxRounds <= 0 && patienceRounds <= 0) return false;
    const trainingRounds = maxRounds > 0 ? this.store.listModels().filter((m) => m.cause === 'round').length : 0;
    const losses = patienceRounds > 0 ? this.store.listRounds().map((r) => r.metrics.loss ?? NaN) : [];
    const reason = stopReason(this.stopping, trainingRounds, losses);
    if (reason === null) return false;
    this.stoppedBecause = reason;
    this.log.info({ reason }, 'training stopped; the API, the clients and forget jobs keep running');
    this.emit('trainingStopped', reason);
    return true;
  }

  /** Prunes the model versions the retention policy does not keep (history/model-retention.ts), between rounds. */
  private async retainModels(): Promise<void> {
    const policy = this.modelRetention;
    if (!policy || policy.keepLast <= 0) return;
    await this.exclusive(async () => {
      const reported = new Set<string>();
      for (const j of this.store.listJobs({ state: 'done' })) {
        const r = j.report as { modelBefore?: { version?: string }; modelAfter?: { version?: string } } | null;
        if (r?.modelBefore?.version) reported.add(r.modelBefore.version);
        if (r?.modelAfter?.version) reported.add(r.modelAfter.version);
      }
      const victims = modelsToPrune(this.store.listModels(), { head: this.store.head().version, headRounds: this.store.listRounds(), reported }, policy);
      if (victims.length === 0) return;
      try {
        const { pruned, bytesDeleted } = await this.store.pruneModels(victims);
        this.log.debug({ pruned: pruned.length, bytesDeleted }, 'model versions pruned by the retention policy');
        if (pruned.length > 0) this.emit('modelsPruned', pruned);
      } catch (e) {
        // The round is committed; a pruning that failed (rows or files) is retried after the next round, and a
        // blob whose row was marked pruned before its unlink failed is collected at the next open.
        this.log.warn({ err: e }, 'pruning model versions failed');
      }
    });
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

  /** Issues a credential for a new client; the secret is returned once and only its hash is kept. */
  issueClient(clientId: string = nanoid()): { clientId: string; secret: string } {
    assertClientId(clientId);
    if (this.store.getClient(clientId)) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, `client ${clientId} already exists`);
    const secret = generateSecret();
    const secretHash = hashIssuedSecret(secret);
    // Seen at 0, i.e. never: the first and last sighting are those of its first connection.
    this.store.upsertClient({ clientId, secretHash, numExamples: 0, seenAt: 0, revoked: false });
    this.log.info({ clientId }, 'client credential issued');
    return { clientId, secret };
  }

  /** Replaces a client's secret (the old one stops working at once, and a connected session is closed); also lifts a revocation. */
  rotateSecret(clientId: string): { clientId: string; secret: string } {
    const c = this.requireIssuable(clientId);
    const secret = generateSecret();
    const secretHash = hashIssuedSecret(secret);
    this.store.upsertClient({ clientId, secretHash, seenAt: c.lastSeen, revoked: false });
    this.authLockout.succeedAllWithPrefix(lockoutKey(clientId, ''));
    this.clientLockout.succeed(clientId);
    this.closeSession(clientId, 'credential rotated');
    this.log.info({ clientId }, 'client credential rotated');
    return { clientId, secret };
  }

  /** Revokes a client's credential: its session is closed and later hellos are refused; its history stays. */
  revokeClient(clientId: string): void {
    const c = this.store.getClient(clientId);
    if (!c) throw new ProtocolError(ErrorCode.UNKNOWN_CLIENT, `unknown client ${clientId}`);
    this.store.upsertClient({ clientId, seenAt: c.lastSeen, revoked: true });
    this.closeSession(clientId, 'credential revoked');
    this.log.info({ clientId }, 'client credential revoked');
  }

  private requireIssuable(clientId: string): ClientRecord {
    const c = this.store.getClient(clientId);
    if (!c) throw new ProtocolError(ErrorCode.UNKNOWN_CLIENT, `unknown client ${clientId}`);
    if (c.forgotten) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `client ${clientId} was forgotten; its id is not reissued`);
    return c;
  }

  private closeSession(clientId: string, reason: string): void {
    const s = this.registry.get(clientId);
    if (!s) return;
    try {
      s.channel.sendError(ErrorCode.PERMISSION_DENIED, reason);
    } finally {
      s.disconnect(reason);
    }
  }

  private authenticator(): Authenticator {
    return {
      authenticate: async (hello, address) => {
        const id = hello.clientId;
        if (this.forgotten.has(id)) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `client ${id} was forgotten at its request`);
        const key = lockoutKey(id, address);
        const locked = Math.max(this.authLockout.lockedFor(key), this.clientLockout.lockedFor(id));
        if (locked > 0) throw new ProtocolError(ErrorCode.RATE_LIMITED, `too many failed authentications for client ${id}; retry in ${Math.ceil(locked / 1000)} s`);
        if (this.verifying.has(id)) throw new ProtocolError(ErrorCode.RATE_LIMITED, `a hello for client ${id} is already being verified`);
        this.verifying.add(id);
        try {
          await this.verify(hello, key);
        } finally {
          this.verifying.delete(id);
        }
        this.authLockout.succeed(key);
        this.clientLockout.succeed(id);
        this.store.upsertClient({ clientId: id, numExamples: hello.numExamples, seenAt: Date.now() });
      },
    };
  }

  /** `lockoutKey`: the id and address a wrong secret counts against. */
  private async verify(hello: fedunlearn.v1.Hello, lockoutKey: string): Promise<void> {
    const id = hello.clientId;
    const known = this.store.getClient(id);
    if (known?.revoked) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `the credential of client ${id} was revoked`);
    if (known?.secretHash) {
      const ok = await verifySecret(hello.secret, known.secretHash);
      if (!ok) {
        this.authLockout.fail(lockoutKey);
        this.clientLockout.fail(id);
        throw new ProtocolError(ErrorCode.UNAUTHENTICATED, 'wrong credentials');
      }
      // A revocation or rotation that landed while scrypt ran wins over the secret it checked.
      const now = this.store.getClient(id);
      if (!now || now.revoked || now.secretHash !== known.secretHash) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `the credential of client ${id} changed`);
      return;
    }
    if (this.enrolment === 'closed') {
      if (!known) throw new ProtocolError(ErrorCode.UNKNOWN_CLIENT, `unknown client ${id}`);
      throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `no credential was issued to client ${id}`);
    }
    if (!hello.secret || hello.secret.length < 8) throw new ProtocolError(ErrorCode.UNAUTHENTICATED, 'a secret of at least 8 characters is required');
    const secretHash = await hashSecret(hello.secret);
    if (this.store.getClient(id)?.secretHash) throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `client ${id} enrolled meanwhile; retry`);
    this.store.upsertClient({ clientId: id, secretHash, numExamples: hello.numExamples, seenAt: Date.now() });
  }

  private readonly jobWatchers = new Map<string, { session: ClientSession; requestId: string }>();

  private onForgetRequest(session: ClientSession, req: fedunlearn.v1.ForgetRequest): void {
    // A session can only ever name itself: the request carries no client id to forge.
    if (!this.forgetLimit.take(session.clientId)) {
      const wait = Math.ceil(this.forgetLimit.retryAfterMs(session.clientId) / 1000);
      throw new ProtocolError(ErrorCode.RATE_LIMITED, `too many forget requests from this client; retry in ${wait} s`, req.requestId);
    }
    const existing = this.store.listJobs().find((j) => j.requestedBy === `client:${session.clientId}` && (j.state === 'queued' || j.state === 'running'));
    let job: JobRecord;
    try {
      job = existing ?? this.forget({ clientIds: [session.clientId], requestedBy: `client:${session.clientId}` });
    } catch (e) {
      // Answered with the request's id, so that the client's pending request fails instead of waiting forever.
      if (e instanceof ProtocolError) throw new ProtocolError(e.code, e.message, req.requestId);
      throw e;
    }
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

/** Resolves on the emitter's next `event`, after `ms`, or on abort, whichever comes first. */
function eventOrTimeout(emitter: EventEmitter<CoordinatorEvents>, event: 'job', ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      emitter.off(event, done);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    emitter.on(event, done);
    signal.addEventListener('abort', done);
  });
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

/** A client id and a remote address, as one lockout key (client ids cannot contain a space: transport/client-id.ts). */
function lockoutKey(clientId: string, address: string): string {
  return `${clientId} ${address}`;
}
