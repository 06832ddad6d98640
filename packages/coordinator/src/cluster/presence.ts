import type { createClient } from 'redis';
import type { FederationClients } from '../rounds/federation-clients.js';

/** The `redis` package's connected client. */
export type PresenceRedis = ReturnType<typeof createClient>;

/** Default milliseconds a replica's presence lives without a heartbeat (it is renewed every ttl/4). */
export const DEFAULT_PRESENCE_TTL_MS = 8_000;

/** What a replica tells the others about itself. */
export interface ReplicaInfo {
  replicaId: string;
  /** Where its API and clients' endpoint listen (for status and the dashboard). */
  url: string;
  startedAt: number;
  /** The lease epoch this replica leads under, or null (status shows who leads without asking PostgreSQL). */
  leading?: number | null;
}

/** A live replica and the clients connected to it now. */
export interface ReplicaPresence extends ReplicaInfo {
  clients: string[];
}

export interface PresenceOptions {
  /** The federation's Redis key prefix (several federations may share a Redis). */
  keyPrefix: string;
  info: ReplicaInfo;
  ttlMs?: number;
}

/**
 * Which client is connected to which replica, shared through Redis so that the leader selects from the whole
 * federation and sends each task to its client's replica.
 *
 * Redis rather than PostgreSQL: presence changes with every connection and matters only while the replica lives, so it
 * expires with it instead of being written durably (a dead replica's clients vanish with its keys' TTL, no clean-up
 * needed). Keys: `${prefix}:replicas` (a set of replica ids), `${prefix}:replica:${id}` (its ReplicaInfo, with a TTL),
 * `${prefix}:clients:${id}` (a set of its clients' ids, with the same TTL). Each heartbeat rewrites the replica's whole
 * client set from its registry, so a change lost while Redis was away is repaired within one period.
 */
export class Presence implements FederationClients {
  readonly ttlMs: number;
  private readonly local = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private beat: Promise<void> = Promise.resolve();
  private lastError: Error | null = null;

  constructor(
    private readonly redis: PresenceRedis,
    private readonly opts: PresenceOptions,
  ) {
    this.ttlMs = opts.ttlMs ?? DEFAULT_PRESENCE_TTL_MS;
  }

  private key(kind: 'replicas' | 'replica' | 'clients', id?: string): string {
    return id === undefined ? `${this.opts.keyPrefix}:${kind}` : `${this.opts.keyPrefix}:${kind}:${id}`;
  }

  /** Publishes this replica and starts the heartbeat; rejects when Redis does not answer. */
  async start(): Promise<void> {
    await this.heartbeat();
    if (this.lastError) throw this.lastError;
    this.timer = setInterval(() => void this.heartbeat(), this.ttlMs / 4);
    this.timer.unref();
  }

  /** Updates what this replica tells the others (its URL once it listens, its leadership) and publishes it now. */
  async update(patch: Partial<Omit<ReplicaInfo, 'replicaId'>>): Promise<void> {
    Object.assign(this.opts.info, patch);
    if (this.timer) await this.heartbeat();
  }

  /** Withdraws this replica (its clients stop being candidates at once). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.beat;
    const id = this.opts.info.replicaId;
    await this.redis.multi().sRem(this.key('replicas'), id).del(this.key('replica', id)).del(this.key('clients', id)).exec().catch(() => undefined);
  }

  /** The last heartbeat's failure (Redis unreachable), or null. */
  get error(): Error | null {
    return this.lastError;
  }

  joined(clientId: string): void {
    this.local.add(clientId);
    void this.redis.sAdd(this.key('clients', this.opts.info.replicaId), clientId).catch(() => undefined);
  }

  left(clientId: string): void {
    this.local.delete(clientId);
    void this.redis.sRem(this.key('clients', this.opts.info.replicaId), clientId).catch(() => undefined);
  }

  private heartbeat(): Promise<void> {
    this.beat = this.beat.then(async () => {
      const id = this.opts.info.replicaId;
      const clients = this.key('clients', id);
      try {
        const m = this.redis
          .multi()
          .sAdd(this.key('replicas'), id)
          .set(this.key('replica', id), JSON.stringify(this.opts.info), { PX: this.ttlMs })
          .del(clients);
        if (this.local.size > 0) m.sAdd(clients, [...this.local]);
        await m.pExpire(clients, this.ttlMs).exec();
        this.lastError = null;
      } catch (e) {
        this.lastError = e instanceof Error ? e : new Error(String(e));
      }
    });
    return this.beat;
  }

  /** The live replicas (their info key has not expired) and their clients; dead ids are dropped from the set. */
  async replicas(): Promise<ReplicaPresence[]> {
    const ids = await this.redis.sMembers(this.key('replicas'));
    if (ids.length === 0) return [];
    const infos = await this.redis.mGet(ids.map((id) => this.key('replica', id)));
    const out: ReplicaPresence[] = [];
    const dead: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      const raw = infos[i];
      if (!raw) {
        dead.push(ids[i]!);
        continue;
      }
      out.push({ ...(JSON.parse(raw) as ReplicaInfo), clients: [] });
    }
    if (dead.length > 0) await this.redis.sRem(this.key('replicas'), dead).catch(() => undefined);
    const sets = await Promise.all(out.map((r) => this.redis.sMembers(this.key('clients', r.replicaId))));
    out.forEach((r, i) => (r.clients = sets[i]!.sort()));
    return out.sort((a, b) => (a.replicaId < b.replicaId ? -1 : 1));
  }

  /** Where each connected client is (a client seen on two replicas, while it moves, is placed on the first by id). */
  async locate(): Promise<Map<string, string>> {
    const where = new Map<string, string>();
    for (const r of await this.replicas()) for (const c of r.clients) if (!where.has(c)) where.set(c, r.replicaId);
    return where;
  }

  async connected(): Promise<string[]> {
    return [...(await this.locate()).keys()];
  }

  async waitFor(n: number, timeoutMs: number, signal?: AbortSignal, counts?: (clientId: string) => boolean): Promise<boolean> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const ids = await this.connected();
      if ((counts ? ids.filter(counts) : ids).length >= n) return true;
      if (signal?.aborted || Date.now() >= until) return false;
      await new Promise((r) => setTimeout(r, Math.min(250, Math.max(0, until - Date.now()))));
    }
  }
}
