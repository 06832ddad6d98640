import { EventEmitter } from 'node:events';
import type { Server } from 'socket.io';
import type { AggregationStrategy } from '../aggregation/strategy.js';
import type { BlobStore } from '../history/blob-store.js';
import type { HistoryStore } from '../history/store.js';
import type { Logger } from '../logger.js';
import type { TaskDispatcher } from '../rounds/dispatcher.js';
import type { StepArgs, StepResult } from '../rounds/federated-step.js';
import type { ClientRegistry } from '../transport/client-registry.js';
import { attachRedisAdapter, ClusterBus, type AdapterRedisClient } from './bus.js';
import type { LeaderLease, LeaseAcquired, LeaseLost } from './leader-lease.js';
import { Presence, type PresenceRedis, type ReplicaPresence } from './presence.js';
import { ClusterSteps } from './remote-step.js';

/** How one replica joins its cluster (cli.ts `serve --store postgres://… --redis redis://…` builds it). */
export interface ClusterSetup {
  /** Unique per replica process. */
  replicaId: string;
  /** The connected `redis` client (the adapter duplicates it for its blocking reads). */
  redis: PresenceRedis;
  /** The federation's Redis key prefix. */
  keyPrefix: string;
  /** The lease this replica contends for (not started: the replica starts it once its endpoint is up). */
  lease: LeaderLease;
  /** Where this replica serves (told to the others for status); set by `listen` when not given. */
  url?: string;
  /** Milliseconds a replica's presence outlives its last heartbeat (default 8,000). */
  presenceTtlMs?: number;
  /** The shared blob store: forget jobs checkpoint their step models there, so the next leader resumes them. */
  blobs?: BlobStore;
}

/** Federation events the leader relays to every replica (their dashboards and SDK job watchers). */
export type RelayedEvent = { kind: 'round' | 'job' | 'jobProgress' | 'modelsPruned' | 'trainingStopped'; payload: unknown };

/** Why this replica takes no work, as /healthz says: null when it is fine. */
export interface ClusterProblem {
  service: 'postgres' | 'redis';
  message: string;
}

export interface ClusterStatus {
  replicaId: string;
  leader: { replicaId: string; epoch: number } | null;
  isLeader: boolean;
  replicas: ReplicaPresence[];
}

const RELAY = 'fedunlearn:event';
/** How often a replica checks that PostgreSQL answers (for /healthz). */
const CHECK_EVERY_MS = 2_000;

interface ReplicaEvents {
  acquired: [LeaseAcquired];
  lost: [LeaseLost];
  relayed: [RelayedEvent];
  /** PostgreSQL or Redis was lost (a ClusterProblem) or came back (null). */
  problem: [ClusterProblem | null];
}

/**
 * One replica's membership in a cluster (issue 14 §2-4): the Redis adapter on its socket.io server, its clients'
 * presence, the leader lease, the step messages (cluster/remote-step.ts), the bus (disconnect a client wherever it is)
 * and the relay of federation events. The coordinator uses it; everything here is per replica.
 */
export class ClusterReplica extends EventEmitter<ReplicaEvents> {
  readonly replicaId: string;
  readonly presence: Presence;
  readonly bus: ClusterBus;
  readonly steps: ClusterSteps;
  readonly lease: LeaderLease;
  /** Step messages' bytes through Redis, sent and received (the bench's cluster section). */
  busBytes = 0;
  private redisProblem: string | null = null;
  private pgProblem: string | null = null;
  private url: string;
  private readonly io: Server;
  private readonly check: NodeJS.Timeout;

  constructor(
    private readonly setup: ClusterSetup,
    deps: { io: Server; registry: ClientRegistry; store: HistoryStore; dispatcher: TaskDispatcher; strategy: AggregationStrategy; log: Logger },
  ) {
    super();
    this.replicaId = setup.replicaId;
    this.lease = setup.lease;
    this.url = setup.url ?? '';
    this.io = deps.io;
    attachRedisAdapter(deps.io, setup.redis as unknown as AdapterRedisClient, { keyPrefix: setup.keyPrefix });
    this.presence = new Presence(setup.redis, {
      keyPrefix: setup.keyPrefix,
      info: { replicaId: setup.replicaId, url: this.url, startedAt: Date.now() },
      ...(setup.presenceTtlMs ? { ttlMs: setup.presenceTtlMs } : {}),
    });
    deps.registry.on('joined', (s) => this.presence.joined(s.clientId));
    deps.registry.on('left', (s) => {
      // A replaced session leaves after its successor joined: the client is still here.
      if (!deps.registry.get(s.clientId)) this.presence.left(s.clientId);
    });
    this.bus = new ClusterBus(deps.io, { replicaId: setup.replicaId });
    this.steps = new ClusterSteps({ ...deps, replicaId: setup.replicaId, presence: this.presence, onBusBytes: (n) => (this.busBytes += n) });
    deps.io.on(RELAY, (e: RelayedEvent) => {
      this.busBytes += JSON.stringify(e).length;
      this.emit('relayed', e);
    });
    this.lease.on('acquired', (a) => {
      this.setPg(null);
      deps.log.info({ epoch: a.epoch, replica: this.replicaId }, 'this replica leads the cluster');
      void this.presence.update({ leading: a.epoch });
      this.emit('acquired', a);
    });
    this.lease.on('lost', (l) => {
      deps.log.warn({ epoch: l.epoch, reason: l.reason, message: l.message }, 'this replica stopped leading');
      if (l.reason === 'connection') this.setPg(`PostgreSQL: ${l.message}`);
      void this.presence.update({ leading: null });
      this.emit('lost', l);
    });
    // PostgreSQL is checked by reading the head every period (the lease's own connection only speaks for the leader).
    this.check = setInterval(() => {
      deps.store.head().then(
        () => this.setPg(null),
        (e: unknown) => this.setPg(`PostgreSQL does not answer: ${(e as Error).message}`),
      );
    }, CHECK_EVERY_MS);
    this.check.unref();
    setup.redis.on('error', (e: Error) => this.setRedis(`Redis does not answer: ${e.message}`));
    setup.redis.on('ready', () => this.setRedis(null));
  }

  get isLeader(): boolean {
    return this.lease.isLeader;
  }

  /** What keeps this replica from taking work, or null. */
  problem(): ClusterProblem | null {
    if (this.pgProblem) return { service: 'postgres', message: this.pgProblem };
    if (this.redisProblem ?? this.presence.error) return { service: 'redis', message: this.redisProblem ?? `Redis does not answer: ${this.presence.error!.message}` };
    return null;
  }

  /** Publishes this replica and starts contending for the lease (after its endpoint listens). */
  async start(url: string): Promise<void> {
    if (!this.url) this.url = url;
    await this.presence.update({ url: this.url });
    await this.presence.start();
    await this.lease.start();
  }

  async stop(): Promise<void> {
    clearInterval(this.check);
    await this.lease.stop().catch(() => undefined);
    await this.presence.stop();
  }

  /** A step over every replica's clients (the leader's StepRunner). */
  runStep(args: StepArgs): Promise<StepResult> {
    return this.steps.run(args);
  }

  /** Sends a federation event to the other replicas. */
  relay(e: RelayedEvent): void {
    this.busBytes += JSON.stringify(e).length;
    this.io.serverSideEmit(RELAY, e);
  }

  /** The live replicas with their clients, and who leads (the replica publishing the highest epoch). */
  async status(): Promise<ClusterStatus> {
    const replicas = await this.presence.replicas().catch(() => [] as ReplicaPresence[]);
    let leader: ClusterStatus['leader'] = null;
    for (const r of replicas) if (r.leading != null && (!leader || r.leading > leader.epoch)) leader = { replicaId: r.replicaId, epoch: r.leading };
    return { replicaId: this.replicaId, leader, isLeader: this.isLeader, replicas };
  }

  private setPg(message: string | null): void {
    if (this.pgProblem === message) return;
    this.pgProblem = message;
    this.emit('problem', this.problem());
  }

  private setRedis(message: string | null): void {
    if (this.redisProblem === message) return;
    this.redisProblem = message;
    this.emit('problem', this.problem());
  }
}
