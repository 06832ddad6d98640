import { EventEmitter } from 'node:events';
import { DEFAULT_FRAMING, ErrorCode, fedunlearn, ProtocolError, type FlatWeights, type FramingLimits } from '@fedunlearn/protocol';
import type { FastifyInstance } from 'fastify';
import { newId } from './ids.js';
import { abortableSleep as sleep } from './abortable-sleep.js';
import { FedAvg } from './aggregation/fedavg.js';
import type { AggregationStrategy } from './aggregation/strategy.js';
import type { ClientRecord, FederationMeta, HistoryStore, JobRecord } from './history/store.js';
import { buildHttpApi, DEFAULT_HTTP_TIMEOUTS, type TlsFiles } from './http/api.js';
import { StreamSlots } from './http/stream-slots.js';
import { generateOperatorToken } from './http/operator-token.js';
import { HostPolicy, isLoopbackHost } from './http/request-guard.js';
import { createLogger, type Logger } from './logger.js';
import { CoordinatorMetrics } from './metrics.js';
import { roundFailureReason, roundRetryDelayMs, type RoundFailureReason } from './round-failure.js';
import { DEFAULT_GRANT_ABOVE_BYTES, DEFAULT_UPLOAD_TIMEOUT_MS, DEFAULT_UPLOAD_WINDOW_BYTES, TaskDispatcher, type UpdateBounds } from './rounds/dispatcher.js';
import { modelsToPrune, type ModelRetentionPolicy } from './history/model-retention.js';
import type { BlobStore } from './history/blob-store.js';
import { FsBlobStore } from './history/fs-blob-store.js';
import { NO_STOPPING, stopReason, type StoppingRule } from './rounds/stopping.js';
import { RoundEngine, type FederationConfig, type ModelCache, type RoundOutcome } from './rounds/round-engine.js';
import { assertClientId } from './transport/client-id.js';
import { ClientRegistry } from './transport/client-registry.js';
import { CredentialAuthenticator, lockoutKey } from './transport/authenticator.js';
import { generateSecret, hashIssuedSecret } from './transport/credentials.js';
import { FailureLockout, KeyedTokenBucket, SlidingWindowLimit, type AttemptLimit, type Clock, type Lockout } from './transport/rate-limit.js';
import { RedisAttemptLimit, RedisLockout } from './cluster/shared-limits.js';
import type { ClientSession } from './transport/session.js';
import { SocketServer, type Authenticator } from './transport/socket-server.js';
import type { MethodName } from './unlearning/method.js';
import { DEFAULT_JOB_OFFLINE, UnlearningEngine, type ForgetJobInput, type JobOfflineSettings, type JobPausePoint, type PurgeRetry } from './unlearning/engine.js';
import { modelSignature } from './model-signature.js';
import { ClusterReplica, type ClusterProblem, type ClusterSetup, type ClusterStatus, type RelayedEvent } from './cluster/replica.js';
import type { FederationClients } from './rounds/federation-clients.js';

export const COORDINATOR_VERSION = '0.1.0';
/** Pause of the round loop after a round that found no quorum. */
const QUORUM_RETRY_MS = 1_000;
/** Back-off of the round loop after failed rounds (other than a missed quorum): doubling from base up to max. */
export const DEFAULT_ROUND_RETRY = { baseMs: 1_000, maxMs: 60_000 } as const;

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
  /** Open client connections from one remote address (authenticated or not); more are refused (RATE_LIMITED). */
  connectionsPerAddress: number;
  /** Open event streams (GET /v1/events) from one remote address, and from all together; more are refused with
   *  HTTP 429 RATE_LIMITED naming the limit. */
  eventStreamsPerAddress: number;
  eventStreams: number;
  /** HTTP request deadlines (http/api.ts HttpTimeouts): headers complete within httpHeadersTimeoutMs, the whole
   *  request (body included) within httpRequestTimeoutMs, else 408 and the connection is closed; idle keep-alive
   *  connections close after httpKeepAliveTimeoutMs. */
  httpHeadersTimeoutMs: number;
  httpRequestTimeoutMs: number;
  httpKeepAliveTimeoutMs: number;
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
  connectionsPerAddress: 4096,
  // A dashboard tab holds one stream; 8 covers an operator's tabs behind one address, 256 a team's.
  eventStreamsPerAddress: 8,
  eventStreams: 256,
  httpHeadersTimeoutMs: DEFAULT_HTTP_TIMEOUTS.headersMs,
  httpRequestTimeoutMs: DEFAULT_HTTP_TIMEOUTS.requestMs,
  httpKeepAliveTimeoutMs: DEFAULT_HTTP_TIMEOUTS.keepAliveMs,
};

export interface ModelSpec {
  topologyJson: string;
  initial: FlatWeights;
}

export interface CoordinatorOptions {
  store: HistoryStore;
  /** Where job scratch files live (normally the store's data directory). */
  dataDir: string;
  /** Where forget jobs keep their checkpoints (each step's model, keys `jobs/<jobId>/...`); default files under
   *  dataDir (dataDir/jobs). */
  checkpoints?: BlobStore;
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
  /**
   * Forget jobs whose clients are offline: a step waits for its quorum of clients at most `waitMs` over the whole job
   * (default 300,000), showing who it waits for in the job's progress; then `policy` applies: 'fail' (default) stops
   * the job with nothing changed, 'server-side' completes calibration steps from the offline clients' stored updates.
   */
  jobs?: Partial<JobOfflineSettings>;
  /** The method of the forget jobs clients ask for through the SDK (their request names none). Default federaser. */
  clientForgetMethod?: MethodName;
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
  /**
   * Bearer token required on operator routes. When none is given a random one is made for this coordinator (read it
   * from `coordinator.operatorToken`; it is kept nowhere), so a coordinator made in code is never open by accident
   * either: `serve` instead keeps one in the data directory (see cli.ts).
   */
  operatorToken?: string;
  /** 'none' opens the operator routes to anyone who can reach the port (development only; warned at start). Default 'token'. */
  operatorAuth?: 'token' | 'none';
  /**
   * Host names (or addresses) the operator API answers to besides the loopback names and the address it listens on
   * (on 0.0.0.0 / ::, this machine's addresses and host name); '*' turns the Host check off (a proxy in front checks it).
   */
  allowedHosts?: string[];
  /** Back-off after consecutive failed rounds (not a missed quorum): baseMs, doubling up to maxMs (DEFAULT_ROUND_RETRY). */
  roundRetry?: { baseMs?: number; maxMs?: number };
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
  /** How a job's end retries the WAL checkpoint that takes purged bytes off the disk while a reader blocks it. */
  purgeRetry?: PurgeRetry;
  /** Test hook (the crash tests): called at the points of a job's end; resolve to go on. */
  pauseJob?: (point: JobPausePoint) => Promise<void>;
  /** What one update may do to the aggregate: norm bounds and the example-count cap (rounds/dispatcher.ts
   *  UpdateBounds; defaults DEFAULT_UPDATE_BOUNDS). */
  updateBounds?: Partial<UpdateBounds>;
  /**
   * Joins a cluster of replicas (issue 14; the store must be the shared PostgreSQL one): rounds and forget jobs run
   * only while this replica holds the lease, over the clients of every replica. Without it: one process, as always.
   */
  cluster?: ClusterSetup;
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
  /** A round attempt of the training loop failed; the loop waits retryInMs before the next. */
  roundFailed: [RoundFailure];
  error: [Error];
}

/** A failed round of the training loop, as /healthz and the roundFailed event report it. */
export interface RoundFailure {
  reason: RoundFailureReason;
  message: string;
  /** Failed rounds since the last commit (a missed quorum counts too). */
  consecutive: number;
  /** Unix ms of the first of them. */
  since: number;
  retryInMs: number;
}

/** GET /healthz: ok, or degraded while rounds keep failing for a reason of the coordinator's own. */
export type Health =
  | { ok: true; status: 'ok' }
  /** A replica of a cluster that lost PostgreSQL or Redis: it takes no work (its clients are sent to the others). */
  | { ok: false; status: 'unavailable'; reason: ClusterProblem['service']; message: string }
  | { ok: false; status: 'degraded'; reason: RoundFailureReason; message: string; consecutiveFailures: number; since: number; retryInMs: number };

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
  /** Open event streams (GET /v1/events), bounded per address and in total. */
  readonly eventStreams: StreamSlots;
  readonly transport: SocketServer;
  readonly config: FederationConfig;
  readonly startedAt = Date.now();
  /** The bearer token operator routes require; null when they were opened on purpose (operatorAuth 'none'). */
  readonly operatorToken: string | null;
  /** This replica's membership of a cluster; null on a single coordinator. */
  readonly cluster: ClusterReplica | null;
  /** True while events relayed from the leader are re-emitted here (they are not relayed again nor counted). */
  private relaying = false;
  /** The lease epoch whose head the model cache holds (a new term re-reads the head another leader may have moved). */
  private term: number | null = null;
  private termAbort = new AbortController();
  private readonly hosts: HostPolicy;
  private readonly roundRetry: { baseMs: number; maxMs: number };
  /** The training loop's failed rounds since its last commit; null while rounds commit. */
  private failing: RoundFailure | null = null;
  /** Of those, the ones that were not a missed quorum (they set the back-off and degrade /healthz), and the last. */
  private ownFailures = 0;
  private lastOwnFailure: RoundFailure | null = null;
  private readonly current: ModelCache;
  private work: Promise<unknown> = Promise.resolve();
  private readonly abort = new AbortController();
  private loop: Promise<void> | null = null;
  private readonly roundIntervalMs: number;
  private readonly stopping: StoppingRule;
  private readonly modelRetention: ModelRetentionPolicy | undefined;
  /** Why start() stopped training; null while it trains. */
  private stoppedBecause: string | null = null;
  private readonly enrolment: 'open' | 'closed';
  private readonly tls: boolean;
  /** Wrong secrets per client id and address... */
  private readonly authLockout: Lockout;
  /** ...and per client id from anywhere. */
  private readonly clientLockout: Lockout;
  /** In memory on one process; in Redis on a cluster, so that they hold for the whole federation. */
  private readonly forgetLimit: AttemptLimit;

  /** The method of the jobs clients ask for (CoordinatorOptions.clientForgetMethod). */
  private readonly clientForgetMethod: MethodName;

  private constructor(opts: CoordinatorOptions & { meta: FederationMeta }, current: ModelCache) {
    super();
    this.store = opts.store;
    this.config = opts.federation;
    this.log = opts.logger ?? createLogger();
    this.current = current;
    this.roundIntervalMs = opts.roundIntervalMs ?? 0;
    this.clientForgetMethod = opts.clientForgetMethod ?? 'federaser';
    this.roundRetry = { ...DEFAULT_ROUND_RETRY, ...opts.roundRetry };
    this.stopping = { ...NO_STOPPING, ...opts.stopping };
    this.modelRetention = opts.modelRetention;
    // Its sources are read at scrape time only, by which point every part below exists.
    this.metrics = new CoordinatorMetrics({
      connectedClients: () => this.registry.size,
      historyStats: () => this.store.stats(),
      jobs: () => this.store.listJobs(),
      transport: () => this.transport.totals(),
      held: () => this.transport.held(),
      eventStreams: () => this.eventStreams.open,
      uploads: () => this.dispatcher.counters,
      cluster: () => (this.cluster ? { leader: this.cluster.isLeader, busBytes: this.cluster.busBytes } : null),
    });
    const framing = opts.framing ?? DEFAULT_FRAMING;
    this.dispatcher = new TaskDispatcher(this.registry, this.metrics, {
      windowBytes: opts.uploads?.windowBytes ?? DEFAULT_UPLOAD_WINDOW_BYTES,
      grantAboveBytes: opts.uploads?.grantAboveBytes ?? DEFAULT_GRANT_ABOVE_BYTES,
      uploadTimeoutMs: opts.uploads?.uploadTimeoutMs ?? DEFAULT_UPLOAD_TIMEOUT_MS,
      maxMessageBytes: framing.maxMessageBytes,
    }, opts.updateBounds);
    const strategy = opts.strategy ?? new FedAvg();
    this.unlearning = new UnlearningEngine({
      store: this.store,
      registry: this.registry,
      dispatcher: this.dispatcher,
      strategy,
      config: opts.federation,
      // A cluster's jobs checkpoint in the shared store, so that the next leader resumes them.
      checkpoints: opts.checkpoints ?? opts.cluster?.blobs ?? new FsBlobStore(opts.dataDir),
      eraseModels: (opts.modelsAfterForget ?? 'erase') === 'erase',
      offline: { ...DEFAULT_JOB_OFFLINE, ...opts.jobs },
      log: this.log,
      ...(opts.purgeRetry ? { purgeRetry: opts.purgeRetry } : {}),
      ...(opts.pauseJob ? { pause: opts.pauseJob } : {}),
      ...this.clusterReach(opts),
    });
    this.rounds = new RoundEngine({
      store: this.store,
      registry: this.registry,
      dispatcher: this.dispatcher,
      strategy,
      config: opts.federation,
      log: this.log,
      ineligible: async () => new Set((await this.store.listClients()).filter((c) => c.forgotten).map((c) => c.clientId)),
      ...this.clusterReach(opts),
    });
    this.unlearning.on('progress', (job) => {
      this.metrics.jobUpdated(job);
      this.notifyJob(job);
      this.emit('jobProgress', job);
    });
    this.unlearning.on('finished', (job) => {
      this.metrics.jobUpdated(job);
      this.notifyJob(job);
      this.emit('job', job);
      // A forgotten client has nothing left to do here: after its final job status it is told why and disconnected
      // (its next hello is refused), rather than lingering as a connection that is never selected.
      if (job.state === 'done') for (const id of job.clientIds) this.closeSession(id, `client ${id} was forgotten; its data is purged and it cannot rejoin`);
    });
    // A report that said `purge incomplete` now says complete: operators following jobs see it.
    this.unlearning.on('purged', (job) => this.emit('job', job));
    // Per replica: only the rounds this one ran (relayed ones are shown, not counted).
    this.on('round', (r) => {
      if (!this.relaying) this.metrics.roundCompleted(r.durationMs);
    });
    const limits = { ...DEFAULT_LIMITS, ...opts.limits };
    const clock = opts.clock ?? Date.now;
    this.enrolment = opts.enrolment ?? 'closed';
    this.tls = opts.tls !== undefined;
    const lockout = { windowMs: limits.authFailureWindowMs, lockMs: limits.authLockoutMs, maxLockMs: limits.authMaxLockoutMs, clock };
    const perClientFailures = Math.max(limits.authMaxFailures, limits.authMaxFailuresPerClient);
    if (opts.cluster) {
      // A cluster's lockouts and forget limit hold for the whole federation (a guesser cannot spread over replicas).
      const { redis, keyPrefix } = opts.cluster;
      const shared = { windowMs: limits.authFailureWindowMs, lockMs: limits.authLockoutMs, maxLockMs: limits.authMaxLockoutMs };
      this.authLockout = new RedisLockout(redis, { ...shared, keyPrefix: `${keyPrefix}:limits:auth`, maxFailures: limits.authMaxFailures });
      this.clientLockout = new RedisLockout(redis, { ...shared, keyPrefix: `${keyPrefix}:limits:client`, maxFailures: perClientFailures });
      this.forgetLimit = new RedisAttemptLimit(redis, { keyPrefix: `${keyPrefix}:limits:forget`, max: limits.forgetRequestsPerHour, windowMs: 3_600_000 });
    } else {
      this.authLockout = new FailureLockout({ ...lockout, maxFailures: limits.authMaxFailures });
      this.clientLockout = new FailureLockout({ ...lockout, maxFailures: perClientFailures });
      this.forgetLimit = new SlidingWindowLimit({ max: limits.forgetRequestsPerHour, windowMs: 3_600_000, clock });
    }
    if (this.enrolment === 'open') this.log.warn({}, "enrolment is 'open': any new client id is trusted on its first hello (development only)");
    if (opts.operatorAuth === 'none' && opts.operatorToken) throw new RangeError("operatorAuth 'none' and an operatorToken contradict each other");
    this.operatorToken = opts.operatorAuth === 'none' ? null : (opts.operatorToken ?? generateOperatorToken());
    if (this.operatorToken === null) {
      this.log.warn({}, 'THE OPERATOR API IS OPEN: anyone who can reach this port can issue client credentials, forget clients and download models (operatorAuth none; development only)');
    }
    this.hosts = new HostPolicy(opts.allowedHosts ?? []);
    this.eventStreams = new StreamSlots({ perAddress: limits.eventStreamsPerAddress, total: limits.eventStreams });
    this.http = buildHttpApi(this, {
      eventStreams: this.eventStreams,
      timeouts: { headersMs: limits.httpHeadersTimeoutMs, requestMs: limits.httpRequestTimeoutMs, keepAliveMs: limits.httpKeepAliveTimeoutMs },
      operatorToken: this.operatorToken,
      hosts: this.hosts,
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
        // The federation's topology (the store's, which outlives a restart with other options), told in every Welcome.
        model: modelSignature(opts.meta.topologyJson),
        handshakeLimit: new KeyedTokenBucket({ burst: limits.handshakeBurst, refillPerSecond: limits.handshakeRefillPerSecond, clock }),
        maxConnectionsPerAddress: limits.connectionsPerAddress,
      },
      this.log,
    );
    this.cluster = opts.cluster
      ? new ClusterReplica(opts.cluster, { io: this.transport.io, registry: this.registry, store: this.store, dispatcher: this.dispatcher, strategy, log: this.log })
      : null;
    if (this.cluster) this.joinCluster(this.cluster);
  }

  /** Where rounds and jobs find clients and how they reach them: every replica of a cluster, or (nothing) this one. */
  private clusterReach(opts: CoordinatorOptions): { clients?: FederationClients; step?: (a: Parameters<ClusterReplica['runStep']>[0]) => ReturnType<ClusterReplica['runStep']> } {
    if (!opts.cluster) return {};
    // The replica is made after the engines (it needs the socket.io server): reached lazily.
    return {
      clients: { connected: () => this.cluster!.presence.connected(), waitFor: (n, ms, signal, counts) => this.cluster!.presence.waitFor(n, ms, signal, counts) },
      step: (a) => this.cluster!.runStep(a),
    };
  }

  /** The leader relays what it does to every replica (dashboards, /v1/events, SDK job watchers); a term that ends stops
   *  its round or job (a job stays running and the next leader resumes it from its last checkpoint). */
  private joinCluster(cluster: ClusterReplica): void {
    const relay = (kind: RelayedEvent['kind']) => (payload: unknown) => {
      if (!this.relaying && cluster.isLeader) cluster.relay({ kind, payload });
    };
    this.on('round', relay('round'));
    this.on('job', relay('job'));
    this.on('jobProgress', relay('jobProgress'));
    this.on('modelsPruned', relay('modelsPruned'));
    this.on('trainingStopped', relay('trainingStopped'));
    cluster.on('relayed', (e) => {
      this.relaying = true;
      try {
        if (e.kind === 'job' || e.kind === 'jobProgress') this.notifyJob(e.payload as JobRecord);
        (this.emit as (k: string, p: unknown) => boolean)(e.kind, e.payload);
      } finally {
        this.relaying = false;
      }
    });
    cluster.bus.handle('disconnectClient', ({ clientId, reason }) => {
      const session = this.registry.get(clientId);
      if (!session) return null;
      this.closeSession(clientId, reason);
      return { disconnected: true };
    });
    cluster.on('lost', () => {
      this.termAbort.abort();
      this.termAbort = new AbortController();
      this.term = null;
    });
    cluster.on('problem', (p) => {
      if (!p) return;
      // A replica without PostgreSQL or Redis cannot serve its clients' work: they reconnect (the SDK backs off and
      // retries) and a load balancer sends them to the others.
      this.log.error({ service: p.service, message: p.message }, 'this replica takes no work');
      for (const s of this.registry.connected()) s.disconnect(`replica unavailable: ${p.message}`);
    });
  }

  /** The replicas, the leader and each replica's connected clients (null on a single coordinator). */
  async clusterStatus(): Promise<ClusterStatus | null> {
    return this.cluster ? this.cluster.status() : null;
  }

  /** Opens (or creates) the federation in `store` and resumes from its last committed round. */
  static async create(opts: CoordinatorOptions): Promise<Coordinator> {
    const { meta, head, resumed } = await opts.store.open({
      topologyJson: opts.model.topologyJson,
      layout: opts.model.initial.layout,
      initialWeights: opts.model.initial.values,
      config: { historyInterval: opts.historyInterval, retention: opts.retention ?? 'fp32' },
    });
    const weights = await opts.store.readModel(head.version);
    const c = new Coordinator({ ...opts, meta }, { version: head.version, weights: { layout: meta.layout, values: weights } });
    await c.unlearning.recover();
    c.log.info({ resumed, round: head.round, version: head.version }, resumed ? 'federation resumed' : 'federation created');
    return c;
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<{ port: number; url: string }> {
    this.hosts.addListenHost(host);
    await this.http.listen({ port, host });
    if (!this.tls && !isLoopbackHost(host)) {
      this.log.warn(
        { host },
        'listening beyond this machine without TLS: client secrets, the operator token and model weights cross the network in plaintext (set tls: { cert, key } in the config)',
      );
    }
    const addr = this.http.server.address();
    const p = typeof addr === 'object' && addr ? addr.port : port;
    const url = `${this.tls ? 'https' : 'http'}://${host}:${p}`;
    // A replica joins (presence, lease) once its endpoint can take the clients the leader will send it tasks for.
    await this.cluster?.start(url);
    return { port: p, url };
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
          if (this.cluster && !(await this.leading())) continue;
          await this.runPendingJobs();
          if (this.abort.signal.aborted) break;
          if (await this.trainingDone()) {
            // Stopped: no more rounds, but queued forget jobs still run (checked again on each 'job' or every second).
            await eventOrTimeout(this, 'job', 1_000, this.abort.signal);
            continue;
          }
          // The cadence counts from round start to round start, so a long round is not followed by a long pause.
          // Again after each sleep: a timer may fire a millisecond early against Date.now().
          for (let wait = lastStart + this.roundIntervalMs - Date.now(); wait > 0 && !this.abort.signal.aborted; wait = lastStart + this.roundIntervalMs - Date.now()) {
            await sleep(wait, this.abort.signal);
          }
          if (this.abort.signal.aborted) break;
          const startedAt = Date.now();
          lastStart = startedAt;
          const r = await this.exclusive(() => this.rounds.runRound(this.current, this.workSignal(), startedAt));
          this.failing = null;
          this.ownFailures = 0;
          this.lastOwnFailure = null;
          this.emit('round', r);
          await this.retainModels();
        } catch (e) {
          if (this.abort.signal.aborted) break;
          // A term that ended (the lease lost, a commit fenced) is not a failure of this replica: another leads now.
          if (this.cluster && (!this.cluster.isLeader || (e as Error).name === 'LeaseFencedError')) {
            this.log.warn({ err: e }, 'the round ended with this replica\'s term as leader');
            continue;
          }
          const failure = this.roundFailed(e);
          // A quorum can fail fast (every selected client refused or left at once): without a pause this loop
          // would retry without ever yielding to the sockets and timers. Any other failure (a full disk, a store
          // error) would fail again at once and make every selected client retrain each time: back off.
          await sleep(failure.retryInMs, this.abort.signal);
          continue;
        }
      }
    })();
  }

  /** The signal work runs under: the coordinator's, and on a cluster also the leader's term. */
  private workSignal(): AbortSignal {
    return this.cluster ? AbortSignal.any([this.abort.signal, this.termAbort.signal]) : this.abort.signal;
  }

  /**
   * A cluster's round loop runs only on the leader: waits (a second at most) while this replica does not lead, and at
   * the start of each term reads the head, which other leaders may have moved. True when it leads now.
   */
  private async leading(): Promise<boolean> {
    const cluster = this.cluster!;
    if (!cluster.isLeader || cluster.problem()) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(t);
          cluster.off('acquired', done);
          this.abort.signal.removeEventListener('abort', done);
          resolve();
        };
        const t = setTimeout(done, 1_000);
        cluster.on('acquired', done);
        this.abort.signal.addEventListener('abort', done);
      });
      return false;
    }
    const epoch = cluster.lease.epoch;
    if (epoch !== this.term) {
      await this.exclusive(async () => {
        const head = await this.store.head();
        if (head.version !== this.current.version) {
          this.current.weights = { layout: this.current.weights.layout, values: await this.store.readModel(head.version) };
          this.current.version = head.version;
        }
      });
      this.term = epoch;
      this.log.info({ epoch, head: this.current.version }, 'leading: rounds and forget jobs run here');
    }
    return true;
  }

  /** ok, or degraded (with the last failure) while rounds of the training loop keep failing other than for quorum. */
  health(): Health {
    const p = this.cluster?.problem();
    if (p) return { ok: false, status: 'unavailable', reason: p.service, message: p.message };
    const f = this.lastOwnFailure;
    if (this.ownFailures === 0 || !f) return { ok: true, status: 'ok' };
    return { ok: false, status: 'degraded', reason: f.reason, message: f.message, consecutiveFailures: this.ownFailures, since: f.since, retryInMs: f.retryInMs };
  }

  /** Records a failed round of the loop (metric, log, health) and decides the pause before the next attempt. */
  private roundFailed(e: unknown): RoundFailure {
    const reason = roundFailureReason(e);
    const consecutive = (this.failing?.consecutive ?? 0) + 1;
    // The back-off grows with the coordinator's own failures since the last commit; a missed quorum keeps its
    // short, fixed pause (clients come and go; waiting longer would only delay the next round).
    if (reason !== 'quorum') this.ownFailures++;
    const retryInMs = reason === 'quorum' ? QUORUM_RETRY_MS : roundRetryDelayMs(this.ownFailures, this.roundRetry.baseMs, this.roundRetry.maxMs);
    const failure: RoundFailure = { reason, message: (e as Error).message ?? String(e), consecutive, since: this.failing?.since ?? Date.now(), retryInMs };
    this.failing = failure;
    if (reason !== 'quorum') this.lastOwnFailure = failure;
    this.metrics.roundFailed(reason);
    if (reason === 'quorum') {
      this.log.warn({ reason, consecutive, retryInMs, err: e }, 'round failed: no quorum');
    } else {
      this.log.error({ reason, consecutive, retryInMs, err: e }, 'round failed');
      this.emit('error', e as Error);
    }
    this.emit('roundFailed', failure);
    return failure;
  }

  /** Why training stopped (stopping rule), or null while start() trains. */
  trainingStoppedBecause(): string | null {
    return this.stoppedBecause;
  }

  /** Whether the stopping rule holds now; logs and emits 'trainingStopped' the first time it does. */
  private async trainingDone(): Promise<boolean> {
    if (this.stoppedBecause !== null) return true;
    const { maxRounds, patienceRounds } = this.stopping;
    if (maxRounds <= 0 && patienceRounds <= 0) return false;
    const trainingRounds = maxRounds > 0 ? (await this.store.listModels()).filter((m) => m.cause === 'round').length : 0;
    const losses = patienceRounds > 0 ? (await this.store.listRounds()).map((r) => r.metrics.loss ?? NaN) : [];
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
      for (const j of await this.store.listJobs({ state: 'done' })) {
        const r = j.report as { modelBefore?: { version?: string }; modelAfter?: { version?: string } } | null;
        if (r?.modelBefore?.version) reported.add(r.modelBefore.version);
        if (r?.modelAfter?.version) reported.add(r.modelAfter.version);
      }
      const victims = modelsToPrune(await this.store.listModels(), { head: (await this.store.head()).version, headRounds: await this.store.listRounds(), reported }, policy);
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

  /** Queues a forget job (validated and persisted at once); it runs at the next round boundary. A request identical to
   *  a job in progress returns that job. Throws as submitForget does. */
  async forget(input: ForgetJobInput): Promise<JobRecord> {
    return (await this.submitForget(input)).job;
  }

  /**
   * Validates and queues a forget job synchronously. `created` is false when the request is identical to a job in
   * progress, which is returned instead (never a second replay). Throws ProtocolError: UNKNOWN_CLIENT, INVALID_ARGUMENT
   * (already forgotten), JOB_CONFLICT (a job in progress covers some of the clients otherwise), FORGET_REFUSED (it
   * would forget every client, or every one that took part, or the method cannot run on this history).
   */
  async submitForget(input: ForgetJobInput): Promise<{ job: JobRecord; created: boolean }> {
    const out = await this.unlearning.submit(input);
    if (out.created) {
      this.metrics.forgetRequested(input.requestedBy.startsWith('client:') ? 'client' : 'operator');
      this.emit('job', out.job);
    }
    return out;
  }

  /** Runs every queued (or interrupted) job now. */
  async runPendingJobs(): Promise<JobRecord[]> {
    const done: JobRecord[] = [];
    for (const job of await this.unlearning.pending()) {
      if (this.abort.signal.aborted) break;
      // No silent wait here: each replay step waits (bounded, shown in the job's progress) for its own clients, so a
      // job resumed before the fleet has reconnected neither replays with nobody nor waits without saying so.
      if (this.cluster && !this.cluster.isLeader) break;
      done.push(await this.exclusive(() => this.unlearning.run(job, this.current, this.workSignal())));
    }
    return done;
  }

  /** Resolves when the job is done or failed. */
  async waitForJob(jobId: string): Promise<JobRecord> {
    // Listening before the read: a job that ends while the store answers is not missed.
    let on: (job: JobRecord) => void = () => undefined;
    const ended = new Promise<JobRecord>((resolve) => {
      on = (job: JobRecord) => {
        if (job.jobId === jobId && (job.state === 'done' || job.state === 'failed')) {
          this.off('job', on);
          resolve(job);
        }
      };
      this.on('job', on);
    });
    const now = await this.store.getJob(jobId).catch((e: unknown) => {
      this.off('job', on);
      throw e;
    });
    if (!now || now.state === 'done' || now.state === 'failed') {
      this.off('job', on);
      if (!now) throw new Error(`no job ${jobId}`);
      return now;
    }
    return ended;
  }

  /** The client's tombstone in the history, set in the same transaction as its job's end: the one source of truth
   *  for selection, hellos, new jobs and the API, also right after a crash. */
  isForgotten(clientId: string): Promise<boolean> {
    return this.store.isForgotten(clientId);
  }

  async stop(): Promise<void> {
    this.abort.abort();
    this.unlearning.close();
    this.emit('stopping');
    await this.loop?.catch(() => undefined);
    await this.work.catch(() => undefined);
    await this.cluster?.stop();
    for (const s of this.registry.connected()) s.disconnect('coordinator stopping');
    await this.transport.close();
    await this.http.close();
    await this.store.close();
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.work.then(fn, fn);
    this.work = run.catch(() => undefined);
    return run;
  }

  /** Issues a credential for a new client; the secret is returned once and only its hash is kept. */
  async issueClient(clientId: string = newId()): Promise<{ clientId: string; secret: string }> {
    return this.credentialChange(() => this.issueClientNow(clientId));
  }

  /**
   * Runs credential changes (issue, rotate, revoke) one at a time: each reads a client's record and then writes it,
   * and with an asynchronous store two changes of one client could otherwise interleave (two issues of one id would
   * both pass the existence check, the second secret silently replacing the first). One process's queue: several
   * coordinators on one store need the store's own exclusion.
   */
  private credentialChange<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.credentials.then(fn);
    this.credentials = run.catch(() => undefined);
    return run;
  }

  private credentials: Promise<unknown> = Promise.resolve();

  private async issueClientNow(clientId: string): Promise<{ clientId: string; secret: string }> {
    assertClientId(clientId);
    if (await this.store.getClient(clientId)) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, `client ${clientId} already exists`);
    const secret = generateSecret();
    const secretHash = hashIssuedSecret(secret);
    // Seen at 0, i.e. never: the first and last sighting are those of its first connection.
    await this.store.upsertClient({ clientId, secretHash, numExamples: 0, seenAt: 0, revoked: false });
    this.log.info({ clientId }, 'client credential issued');
    return { clientId, secret };
  }

  /** Replaces a client's secret (the old one stops working at once, and a connected session is closed); also lifts a revocation. */
  rotateSecret(clientId: string): Promise<{ clientId: string; secret: string }> {
    return this.credentialChange(() => this.rotateSecretNow(clientId));
  }

  private async rotateSecretNow(clientId: string): Promise<{ clientId: string; secret: string }> {
    const c = await this.requireIssuable(clientId);
    const secret = generateSecret();
    const secretHash = hashIssuedSecret(secret);
    await this.store.upsertClient({ clientId, secretHash, seenAt: c.lastSeen, revoked: false });
    await this.authLockout.succeedAllWithPrefix(lockoutKey(clientId, ''));
    await this.clientLockout.succeed(clientId);
    this.closeSession(clientId, 'credential rotated');
    this.log.info({ clientId }, 'client credential rotated');
    return { clientId, secret };
  }

  /** Revokes a client's credential: its session is closed and later hellos are refused; its history stays. */
  revokeClient(clientId: string): Promise<void> {
    return this.credentialChange(() => this.revokeClientNow(clientId));
  }

  private async revokeClientNow(clientId: string): Promise<void> {
    const c = await this.store.getClient(clientId);
    if (!c) throw new ProtocolError(ErrorCode.UNKNOWN_CLIENT, `unknown client ${clientId}`);
    await this.store.upsertClient({ clientId, seenAt: c.lastSeen, revoked: true });
    this.closeSession(clientId, 'credential revoked');
    this.log.info({ clientId }, 'client credential revoked');
  }

  private async requireIssuable(clientId: string): Promise<ClientRecord> {
    const c = await this.store.getClient(clientId);
    if (!c) throw new ProtocolError(ErrorCode.UNKNOWN_CLIENT, `unknown client ${clientId}`);
    if (c.forgotten) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `client ${clientId} was forgotten; its id is not reissued`);
    return c;
  }

  private closeSession(clientId: string, reason: string): void {
    const s = this.registry.get(clientId);
    if (!s) {
      // On a cluster the client may be connected to another replica: the one holding it closes it.
      this.cluster?.bus.toHolder('disconnectClient', { clientId, reason }).catch((e: unknown) => this.log.warn({ err: e, clientId }, 'could not close the session on its replica'));
      return;
    }
    try {
      s.channel.sendError(ErrorCode.PERMISSION_DENIED, reason);
    } finally {
      s.disconnect(reason);
    }
  }

  private authenticator(): Authenticator {
    return new CredentialAuthenticator({
      getClient: (id) => this.store.getClient(id),
      upsertClient: (c) => this.store.upsertClient(c),
      isForgotten: (id) => this.isForgotten(id),
      enrolment: this.enrolment,
      authLockout: this.authLockout,
      clientLockout: this.clientLockout,
    });
  }

  private readonly jobWatchers = new Map<string, { session: ClientSession; requestId: string }>();

  private onForgetRequest(session: ClientSession, req: fedunlearn.v1.ForgetRequest): void {
    // A session can only ever name itself: the request carries no client id to forge.
    const took = this.forgetLimit.take(session.clientId);
    const limited = async (): Promise<never> => {
      const wait = Math.ceil((await this.forgetLimit.retryAfterMs(session.clientId)) / 1000);
      throw new ProtocolError(ErrorCode.RATE_LIMITED, `too many forget requests from this client; retry in ${wait} s`, req.requestId);
    };
    if (took === false) {
      // The in-memory limit answers at once: refused synchronously, as the socket server reports it.
      const wait = Math.ceil((this.forgetLimit.retryAfterMs(session.clientId) as number) / 1000);
      throw new ProtocolError(ErrorCode.RATE_LIMITED, `too many forget requests from this client; retry in ${wait} s`, req.requestId);
    }
    // The store (and a cluster's Redis limit) answer asynchronously: refusals are sent from here, answered with the
    // request's id, so that the client's pending request fails instead of waiting forever.
    Promise.resolve(took)
      .then((ok) => (ok ? this.answerForgetRequest(session, req) : limited()))
      .catch((e: unknown) => {
        const err = e instanceof ProtocolError ? e : new ProtocolError(ErrorCode.INTERNAL, 'internal error');
        if (!(e instanceof ProtocolError)) this.log.error({ err: e, clientId: session.clientId }, 'forget request failed');
        try {
          session.channel.sendError(err.code, err.message, req.requestId);
        } catch {
          // The session is gone: nobody is waiting for the answer.
        }
      });
  }

  private async answerForgetRequest(session: ClientSession, req: fedunlearn.v1.ForgetRequest): Promise<void> {
    // A job in progress that already forgets this client (asked for by it, or by the operator) is its answer: a
    // repeated request never starts a second replay.
    const existing = await this.unlearning.inProgressFor([session.clientId]);
    const job = existing ?? (await this.forget({ clientIds: [session.clientId], requestedBy: `client:${session.clientId}`, method: this.clientForgetMethod }));
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

