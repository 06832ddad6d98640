import { hostname } from 'node:os';
import { newId } from '../ids.js';
import pg from 'pg';
import { createClient } from 'redis';
import { parsePgUrl, redact } from '../history/pg/pg-connection.js';
import { openPgHistory, type PgHistoryOptions, type PgHistoryStore } from '../history/pg/pg-store.js';
import { DEFAULT_LEASE_TTL_MS, LeaderLease } from './leader-lease.js';
import type { PresenceRedis } from './presence.js';
import type { ClusterSetup } from './replica.js';

/** Stagings a replica starting may collect: older than any round in flight on another replica (10 minutes). */
const CLUSTER_STAGING_GRACE_MS = 600_000;

export interface JoinClusterOptions {
  /** postgres://user@host:port/db?schema=NAME: the federation's history, blobs and lease. */
  store: string;
  /** redis://host:port: the replicas' messages and presence. */
  redis: string;
  /** The Redis key prefix (default `fedunlearn:<schema>`, so that federations sharing a Redis stay apart). */
  redisPrefix?: string;
  /** Default `<host name>-<pid>-<random>`: unique per process, so a restarted replica is a new holder. */
  replicaId?: string;
  leaseTtlMs?: number;
  storeOptions?: Omit<PgHistoryOptions, 'fence' | 'stagingGraceMs'>;
}

/** What `serve --store postgres://… --redis redis://…` opens: the shared store (fenced by the lease) and the setup of
 *  this replica. `close` releases what the coordinator does not (the Redis connection). */
export interface JoinedCluster {
  store: PgHistoryStore;
  cluster: ClusterSetup;
  close(): Promise<void>;
}

/** Redis did not answer when the replica started. */
export class RedisUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RedisUnavailableError';
  }
}

/**
 * Opens a replica's shared parts: Redis (connected; rejects with RedisUnavailableError when it does not answer), the
 * PostgreSQL history store whose leader-only commits run the lease's fence, and the lease (not started). Rejects as
 * openPgHistory does for the store.
 */
export async function joinCluster(opts: JoinClusterOptions): Promise<JoinedCluster> {
  const loc = parsePgUrl(opts.store);
  const replicaId = opts.replicaId ?? `${hostname()}-${process.pid}-${newId().slice(0, 6)}`;
  const ttlMs = opts.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS;
  // A paused process's open transaction holds its row locks until the server ends it: at most one TTL, so a leader
  // stopped inside a renewal or a fenced commit cannot hold off the takeover (the e2e SIGSTOP test found it did).
  const idle = `-c idle_in_transaction_session_timeout=${ttlMs}`;
  const lease = new LeaderLease({
    connect: async () => {
      const c = new pg.Client({ connectionString: loc.connectionString, application_name: `fedunlearn-lease-${replicaId}`, options: idle });
      await c.connect();
      return c;
    },
    schema: loc.schema,
    holder: replicaId,
    ttlMs,
  });
  const redis = createClient({ url: opts.redis, socket: { connectTimeout: 5_000, reconnectStrategy: (n) => Math.min(100 * 2 ** n, 2_000) } });
  // Errors after the start are the replica's health (/healthz), not a crash.
  redis.on('error', () => undefined);
  try {
    await withTimeout(redis.connect(), 5_000, `Redis at ${redact(opts.redis)} does not answer`);
  } catch (e) {
    await redis.destroy?.();
    throw new RedisUnavailableError(`Redis at ${redact(opts.redis)} does not answer: ${(e as Error).message}`);
  }
  let store: PgHistoryStore;
  try {
    store = await openPgHistory(opts.store, {
      ...opts.storeOptions,
      pool: { ...opts.storeOptions?.pool, idleInTransactionTimeoutMs: ttlMs },
      fence: (tx) => lease.fence(tx),
      stagingGraceMs: CLUSTER_STAGING_GRACE_MS,
    });
  } catch (e) {
    await redis.quit().catch(() => undefined);
    throw e;
  }
  return {
    store,
    cluster: { replicaId, redis: redis as unknown as PresenceRedis, keyPrefix: opts.redisPrefix ?? `fedunlearn:${loc.schema}`, lease, blobs: store.blobs },
    close: async () => {
      await redis.quit().catch(() => undefined);
    },
  };
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, reject) => (t = setTimeout(() => reject(new Error(message)), ms)))]).finally(() => clearTimeout(t));
}
