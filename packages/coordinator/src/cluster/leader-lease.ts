import { EventEmitter } from 'node:events';
import type pg from 'pg';
import { migrateCluster } from './migrations.js';
import { quoteSchema } from './sql-identifier.js';

/** Default lease time to live: a dead leader is replaced within TTL + one renewal period (issue 14: at most 10 s). */
export const DEFAULT_LEASE_TTL_MS = 10_000;

/** Milliseconds left of the lease row's term, by the database's clock, as a RETURNING column. */
const REMAINING_MS = `(extract(epoch FROM expires_at - clock_timestamp()) * 1000)::float8 AS remaining_ms`;

/** Why a replica stopped leading. */
export type LeaseLossReason =
  /** Its renewal found another holder: the lease had expired and a contender took it (a higher epoch). */
  | 'taken-over'
  /** No renewal succeeded within the TTL (the process was paused, or the database was too slow to answer). */
  | 'expired'
  /** The lease's database connection failed or a query on it did. */
  | 'connection'
  /** `stop()` released it. */
  | 'stopped';

export interface LeaseAcquired {
  /** The fencing token of this term: every commit of the term runs `fence(client, epoch)`. */
  epoch: number;
  holder: string;
}

export interface LeaseLost {
  /** The epoch of the term that ended. */
  epoch: number;
  reason: LeaseLossReason;
  /** What happened, for logs and `/healthz`. */
  message: string;
}

export interface LeaseEvents {
  acquired: [LeaseAcquired];
  lost: [LeaseLost];
  /** A failed attempt while not leading (the database unreachable): the lease keeps retrying. */
  failed: [Error];
}

export interface LeaderLeaseOptions {
  /**
   * Opens the lease's own connection. It is dedicated, not pooled: the lease's connection failing is a reason to stop
   * leading at once, where a pool would quietly replace it. A fresh one is opened after a failure.
   */
  connect: () => Promise<pg.Client>;
  /** The schema of the cluster tables (created and migrated on the first connection). */
  schema: string;
  /** Who contends: unique per replica process (a restarted replica is a new holder). */
  holder: string;
  /** Several leases may share a schema (default `leader`). */
  name?: string;
  /** Milliseconds a lease lasts after each renewal, by the database's clock (default 10,000). */
  ttlMs?: number;
  /** Milliseconds between renewals (default ttlMs / 3: two renewals may fail before the lease runs out). */
  renewEveryMs?: number;
  /** Milliseconds between attempts of a replica that does not lead (default ttlMs / 3). */
  retryEveryMs?: number;
}

/** A commit refused because the transaction's replica no longer holds the lease of the epoch it commits under. */
export class LeaseFencedError extends Error {
  constructor(
    message: string,
    readonly epoch: number,
    readonly currentEpoch: number | null,
  ) {
    super(message);
    this.name = 'LeaseFencedError';
  }
}

interface LeaseRow {
  holder: string;
  epoch: string;
  live: boolean;
}

/**
 * Leader election by a lease row in PostgreSQL, fenced by an epoch (a fencing token, Kleppmann, "How to do distributed
 * locking", 2016; the lease itself: Gray & Cheriton, "Leases", SOSP 1989).
 *
 * One row per lease name holds the holder, an epoch and an expiry. A contender takes the row when it has expired (or
 * is its own, after it lost it), which increments the epoch; the holder renews it every `renewEveryMs`. Every time
 * comparison is made by the database (`clock_timestamp()`), so replicas' clocks may disagree freely. A replica's own
 * timer only makes it stop work without waiting to hear so: when the time the database gave its last renewal runs
 * out without another, it reports `lost` (expired).
 *
 * Leading is not enough to commit: a leader that was paused past its lease may still believe it leads. Every commit of
 * a term therefore runs `fence(client, epoch)` inside its transaction, which locks the lease row `FOR SHARE` and
 * checks the epoch and the expiry there: a takeover waits for that transaction, and a transaction of a deposed term is
 * refused (`LeaseFencedError`) and rolls back.
 *
 * Events: `acquired` (a new term and its epoch), `lost` (the term's epoch and why), `failed` (an attempt failed while
 * not leading). Stop with `stop()`, which releases a held lease so that another replica takes over at its next try.
 */
export class LeaderLease extends EventEmitter<LeaseEvents> {
  readonly name: string;
  readonly ttlMs: number;
  readonly renewEveryMs: number;
  readonly retryEveryMs: number;
  private readonly table: string;
  private client: pg.Client | null = null;
  private migrated = false;
  private held: number | null = null;
  private timer: NodeJS.Timeout | null = null;
  private expiry: NodeJS.Timeout | null = null;
  private stopped = false;
  private started = false;
  /** The attempt in progress: attempts never overlap, and stop() waits for it. */
  private attempt: Promise<void> = Promise.resolve();

  constructor(private readonly opts: LeaderLeaseOptions) {
    super();
    this.table = `${quoteSchema(opts.schema)}.leader_lease`;
    this.name = opts.name ?? 'leader';
    this.ttlMs = opts.ttlMs ?? DEFAULT_LEASE_TTL_MS;
    this.renewEveryMs = opts.renewEveryMs ?? this.ttlMs / 3;
    this.retryEveryMs = opts.retryEveryMs ?? this.ttlMs / 3;
    if (!(this.ttlMs >= 100)) throw new RangeError(`ttlMs must be at least 100, got ${this.ttlMs}`);
    if (!(this.renewEveryMs > 0 && this.renewEveryMs < this.ttlMs)) {
      throw new RangeError(`renewEveryMs must be positive and below ttlMs (${this.ttlMs}), got ${this.renewEveryMs}`);
    }
    if (!(this.retryEveryMs > 0)) throw new RangeError(`retryEveryMs must be positive, got ${this.retryEveryMs}`);
    if (!opts.holder) throw new RangeError('a lease needs a holder id');
  }

  /** The epoch of the term this replica holds, or null when it does not lead. */
  get epoch(): number | null {
    return this.held;
  }

  get isLeader(): boolean {
    return this.held !== null;
  }

  /**
   * Starts contending; resolves after the first attempt (so `isLeader` already tells whether it won). A failed first
   * attempt is not thrown: it is emitted as `failed` and retried.
   */
  async start(): Promise<void> {
    if (this.started) throw new Error('this lease was already started');
    this.started = true;
    await this.run();
  }

  /**
   * Stops contending; a held lease is released (expired now, by the database's clock), so that another replica takes
   * over at its next attempt rather than after the TTL, and `lost` is emitted with reason `stopped`.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    this.clearTimers();
    await this.attempt;
    const epoch = this.held;
    if (epoch !== null && this.client) {
      await this.client
        .query(`UPDATE ${this.table} SET expires_at = clock_timestamp() WHERE name = $1 AND epoch = $2`, [this.name, epoch])
        .catch(() => undefined);
    }
    this.lose('stopped', 'the lease was released');
    const c = this.client;
    this.client = null;
    await c?.end().catch(() => undefined);
  }

  /**
   * Checks, inside the caller's transaction on `client`, that `epoch` is this lease's current, unexpired term, and
   * locks the lease row `FOR SHARE` until the transaction ends (a takeover waits for it). Run it in every commit
   * transaction of a leader, before its writes. Throws `LeaseFencedError` when the term is over (the caller rolls
   * back), and Error when called outside a transaction block (a lock that ends with the statement fences nothing).
   */
  async fence(client: pg.ClientBase, epoch: number | null = this.held): Promise<void> {
    if (epoch === null) throw new LeaseFencedError(`replica ${this.opts.holder} does not hold lease ${this.name}`, 0, null);
    await fenceLease(client, { schema: this.opts.schema, name: this.name, epoch });
  }

  /** The lease row as the database sees it now (for `status`): holder, epoch, milliseconds left (≤ 0: expired). */
  async current(client: pg.ClientBase): Promise<{ holder: string; epoch: number; remainingMs: number } | null> {
    const { rows } = await client.query<{ holder: string; epoch: string; remaining_ms: number }>(
      `SELECT holder, epoch, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::float8 AS remaining_ms FROM ${this.table} WHERE name = $1`,
      [this.name],
    );
    const r = rows[0];
    return r ? { holder: r.holder, epoch: Number(r.epoch), remainingMs: r.remaining_ms } : null;
  }

  private run(): Promise<void> {
    this.attempt = this.attempt.then(() => this.attemptOnce());
    return this.attempt;
  }

  private async attemptOnce(): Promise<void> {
    if (this.stopped) return;
    try {
      const client = await this.ensureClient();
      if (this.held === null) await this.tryAcquire(client);
      else await this.renew(client, this.held);
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      this.dropClient();
      if (this.held !== null) this.lose('connection', `the lease's database connection failed: ${err.message}`);
      else this.emit('failed', err);
    }
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.run(), this.held !== null ? this.renewEveryMs : this.retryEveryMs);
  }

  private async ensureClient(): Promise<pg.Client> {
    if (this.client) return this.client;
    const c = await this.opts.connect();
    // A connection that fails between attempts (the server restarted, the backend was terminated) ends the term now,
    // not at the next renewal: pg emits 'error' on an idle client whose socket failed.
    const failed = (err: Error) => {
      if (this.client !== c) return;
      this.dropClient();
      this.lose('connection', `the lease's database connection failed: ${err.message}`);
    };
    c.on('error', failed);
    c.on('end', () => failed(new Error('connection ended')));
    this.client = c;
    if (!this.migrated) {
      await migrateCluster(c, this.opts.schema);
      this.migrated = true;
    }
    return c;
  }

  private async tryAcquire(client: pg.Client): Promise<void> {
    // One statement: a missing row is inserted (epoch 1); an expired row, or one still naming this holder (it lost the
    // lease and contends again), is taken with the next epoch. Concurrent contenders serialise on the row lock, and
    // the WHERE is evaluated again on the row the winner wrote, so exactly one wins. The times are taken in the SET,
    // after any wait for the row lock (a fenced commit in progress): the VALUES row was computed before that wait.
    const { rows } = await client.query<{ epoch: string; remaining_ms: number }>(
      `INSERT INTO ${this.table} AS l (name, holder, epoch, acquired_at, expires_at)
       VALUES ($1, $2, 1, clock_timestamp(), clock_timestamp() + $3::float8 * interval '1 millisecond')
       ON CONFLICT (name) DO UPDATE
         SET holder = EXCLUDED.holder, epoch = l.epoch + 1, acquired_at = clock_timestamp(),
             expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond'
         WHERE l.expires_at <= clock_timestamp() OR l.holder = EXCLUDED.holder
       RETURNING epoch, ${REMAINING_MS}`,
      [this.name, this.opts.holder, this.ttlMs],
    );
    const row = rows[0];
    if (!row || this.stopped) return;
    this.held = Number(row.epoch);
    this.armExpiry(row.remaining_ms);
    this.emit('acquired', { epoch: this.held, holder: this.opts.holder });
  }

  private async renew(client: pg.Client, epoch: number): Promise<void> {
    // The row is locked first, then checked: an UPDATE alone evaluates its WHERE before waiting for a lock, and a row
    // that was only locked meanwhile (a fenced commit, FOR SHARE) is not checked again, so a renewal that waited past
    // the expiry would still extend it.
    await client.query('BEGIN');
    let rows: { epoch: string; remaining_ms: number }[];
    try {
      await client.query(`SELECT 1 FROM ${this.table} WHERE name = $1 FOR NO KEY UPDATE`, [this.name]);
      ({ rows } = await client.query<{ epoch: string; remaining_ms: number }>(
        `UPDATE ${this.table} SET expires_at = clock_timestamp() + $3::float8 * interval '1 millisecond'
         WHERE name = $1 AND epoch = $2 AND holder = $4 AND expires_at > clock_timestamp() RETURNING epoch, ${REMAINING_MS}`,
        [this.name, epoch, this.ttlMs, this.opts.holder],
      ));
      await client.query('COMMIT');
    } catch (e) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw e;
    }
    if (this.held !== epoch) return; // lost meanwhile (expiry timer, connection event)
    if (rows.length > 0) {
      this.armExpiry(rows[0]!.remaining_ms);
      return;
    }
    const now = await client.query<LeaseRow>(`SELECT holder, epoch, expires_at > clock_timestamp() AS live FROM ${this.table} WHERE name = $1`, [this.name]);
    const r = now.rows[0];
    if (r && Number(r.epoch) !== epoch) this.lose('taken-over', `replica ${r.holder} took the lease over (epoch ${r.epoch})`);
    else this.lose('expired', 'the lease expired before it was renewed');
  }

  /**
   * Gives up the term when no renewal succeeds before the lease runs out: `remainingMs` is what the database said was
   * left when it wrote the expiry, counted here from the answer's arrival (later by the answer's way back, which only
   * makes this replica stop a little late; commits are fenced by the database, not by this timer).
   */
  private armExpiry(remainingMs: number): void {
    if (this.expiry) clearTimeout(this.expiry);
    this.expiry = setTimeout(() => this.lose('expired', `no renewal succeeded within the lease's ${this.ttlMs} ms`), Math.max(0, remainingMs));
  }

  private lose(reason: LeaseLossReason, message: string): void {
    const epoch = this.held;
    if (epoch === null) return;
    this.held = null;
    if (this.expiry) clearTimeout(this.expiry);
    this.expiry = null;
    this.emit('lost', { epoch, reason, message });
  }

  private dropClient(): void {
    const c = this.client;
    this.client = null;
    if (c) {
      c.removeAllListeners('end');
      // Errors of a dropped client are expected (its socket is gone): keep one listener so they are not thrown.
      c.removeAllListeners('error');
      c.on('error', () => undefined);
      void c.end().catch(() => undefined);
    }
  }

  private clearTimers(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

/**
 * The fence as a free function, for a commit path that knows the term but not the `LeaderLease` object: see
 * `LeaderLease.fence`. Uses `clock_timestamp()` (the time of the check, not the transaction's start).
 */
export async function fenceLease(client: pg.ClientBase, lease: { schema: string; name?: string; epoch: number }): Promise<void> {
  const table = `${quoteSchema(lease.schema)}.leader_lease`;
  const name = lease.name ?? 'leader';
  // A lone statement is its own transaction, and its FOR SHARE lock would end with it: the fence must sit inside the
  // commit's transaction block (the server's ReadyForQuery status, which pg keeps: 'T' in a block).
  const status = (client as { getTransactionStatus?: () => string | null }).getTransactionStatus?.();
  if (status !== undefined && status !== 'T') throw new Error(`fence must run inside the commit transaction (after BEGIN); transaction status ${status}`);
  const { rows } = await client.query<LeaseRow>(`SELECT holder, epoch, expires_at > clock_timestamp() AS live FROM ${table} WHERE name = $1 FOR SHARE`, [name]);
  const r = rows[0];
  if (!r) throw new LeaseFencedError(`lease ${name} has never been taken`, lease.epoch, null);
  const current = Number(r.epoch);
  if (current !== lease.epoch) {
    throw new LeaseFencedError(`epoch ${lease.epoch} of lease ${name} is over: replica ${r.holder} leads with epoch ${current}`, lease.epoch, current);
  }
  if (!r.live) throw new LeaseFencedError(`epoch ${lease.epoch} of lease ${name} has expired`, lease.epoch, current);
}
