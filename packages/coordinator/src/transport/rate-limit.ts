/**
 * In-memory limiters, one set per Coordinator (no module state). Every limiter takes a clock so that tests can move
 * time by hand; keys that have gone quiet are dropped, so memory follows the active keys, not every key ever seen.
 */

/** Milliseconds since some epoch; Date.now by default. */
export type Clock = () => number;

/** A value now (the in-memory limiters here), or once a shared store answered (the Redis-backed ones of a cluster,
 *  `cluster/shared-limits.ts`): a caller that awaits works with either. */
export type MaybePromise<T> = T | Promise<T>;

/** Attempts allowed per key: handshakes per address (`KeyedTokenBucket`), forget requests per client
 *  (`SlidingWindowLimit`). */
export interface AttemptLimit {
  /** Records an attempt of `key` when allowed; false when the key is over its limit. */
  take(key: string): MaybePromise<boolean>;
  /** Milliseconds until `key` may try again (0: now). */
  retryAfterMs(key: string): MaybePromise<number>;
}

/** Lockout after repeated failures (`FailureLockout`): wrong secrets per client and address, and per client. */
export interface Lockout {
  /** Milliseconds `key` stays locked (0: not locked). */
  lockedFor(key: string): MaybePromise<number>;
  /** Records a failure; how long the key is now locked (0: not locked). */
  fail(key: string): MaybePromise<number>;
  /** Clears the key's failures and lockouts. */
  succeed(key: string): MaybePromise<void>;
  /** Clears every key that starts with `prefix`. */
  succeedAllWithPrefix(prefix: string): MaybePromise<void>;
}

export interface TokenBucketOptions {
  /** Tokens a quiet key starts with: how many attempts may come at once. */
  burst: number;
  /** Tokens added per second, up to `burst`. */
  refillPerSecond: number;
  clock?: Clock;
}

/** One token bucket per key (a remote address): `take` spends a token, or refuses when the bucket is empty. */
export class KeyedTokenBucket implements AttemptLimit {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly clock: Clock;
  private lastSweep: number;

  constructor(private readonly opts: TokenBucketOptions) {
    if (!(opts.burst >= 1) || !(opts.refillPerSecond > 0)) throw new RangeError('a token bucket needs burst >= 1 and refillPerSecond > 0');
    this.clock = opts.clock ?? Date.now;
    this.lastSweep = this.clock();
  }

  /** Spends one token of `key`; false when none is left. */
  take(key: string): boolean {
    const now = this.clock();
    this.sweep(now);
    const b = this.buckets.get(key) ?? { tokens: this.opts.burst, at: now };
    b.tokens = Math.min(this.opts.burst, b.tokens + ((now - b.at) / 1000) * this.opts.refillPerSecond);
    b.at = now;
    this.buckets.set(key, b);
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Milliseconds until `key` has a token again (0: now). */
  retryAfterMs(key: string): number {
    const b = this.buckets.get(key);
    if (!b) return 0;
    const tokens = Math.min(this.opts.burst, b.tokens + ((this.clock() - b.at) / 1000) * this.opts.refillPerSecond);
    return tokens >= 1 ? 0 : Math.ceil(((1 - tokens) / this.opts.refillPerSecond) * 1000);
  }

  get size(): number {
    return this.buckets.size;
  }

  /** Forgets buckets that have refilled completely: they behave exactly like a new key. */
  private sweep(now: number): void {
    const fullAfterMs = (this.opts.burst / this.opts.refillPerSecond) * 1000;
    if (now - this.lastSweep < fullAfterMs) return;
    this.lastSweep = now;
    for (const [k, b] of this.buckets) if (now - b.at >= fullAfterMs) this.buckets.delete(k);
  }
}

export interface LockoutOptions {
  /** Failures within `windowMs` that lock a key. */
  maxFailures: number;
  windowMs: number;
  /** The first lockout; each further one (without a success in between) doubles it, up to `maxLockMs`. */
  lockMs: number;
  maxLockMs: number;
  clock?: Clock;
}

interface LockState {
  failures: number[];
  lockedUntil: number;
  lockouts: number;
  /** When the state can be forgotten: the window and any lockout have passed. */
  idleAt: number;
}

/**
 * Exponential lockout after repeated failures (wrong secrets for one client id): a secret cannot be guessed online.
 * A success clears the key's record.
 */
export class FailureLockout implements Lockout {
  private readonly state = new Map<string, LockState>();
  private readonly clock: Clock;
  private lastSweep = 0;

  constructor(private readonly opts: LockoutOptions) {
    if (!(opts.maxFailures >= 1) || !(opts.windowMs > 0) || !(opts.lockMs > 0) || !(opts.maxLockMs >= opts.lockMs)) {
      throw new RangeError('a lockout needs maxFailures >= 1, windowMs > 0 and 0 < lockMs <= maxLockMs');
    }
    this.clock = opts.clock ?? Date.now;
  }

  /** Milliseconds `key` stays locked (0: not locked). */
  lockedFor(key: string): number {
    const s = this.state.get(key);
    return s ? Math.max(0, s.lockedUntil - this.clock()) : 0;
  }

  /** Records a failure; returns how long the key is now locked (0: not locked). */
  fail(key: string): number {
    const now = this.clock();
    this.sweep(now);
    const s = this.state.get(key) ?? { failures: [], lockedUntil: 0, lockouts: 0, idleAt: 0 };
    s.failures = s.failures.filter((t) => now - t < this.opts.windowMs);
    s.failures.push(now);
    if (s.failures.length >= this.opts.maxFailures) {
      const ms = Math.min(this.opts.maxLockMs, this.opts.lockMs * 2 ** s.lockouts);
      s.lockouts++;
      s.lockedUntil = now + ms;
      s.failures = [];
    }
    // The doubling is remembered for one more maximum lockout after the last one ends.
    s.idleAt = Math.max(now + this.opts.windowMs, s.lockedUntil + (s.lockouts > 0 ? this.opts.maxLockMs : 0));
    this.state.set(key, s);
    return Math.max(0, s.lockedUntil - now);
  }

  succeed(key: string): void {
    this.state.delete(key);
  }

  /** Clears every key that starts with `prefix` (e.g. one client id's lockouts at every address). */
  succeedAllWithPrefix(prefix: string): void {
    for (const k of this.state.keys()) if (k.startsWith(prefix)) this.state.delete(k);
  }

  get size(): number {
    return this.state.size;
  }

  private sweep(now: number): void {
    if (now - this.lastSweep < this.opts.windowMs) return;
    this.lastSweep = now;
    for (const [k, s] of this.state) if (now >= s.idleAt) this.state.delete(k);
  }
}

export interface WindowLimitOptions {
  /** Events allowed per key within `windowMs`. */
  max: number;
  windowMs: number;
  clock?: Clock;
}

/** At most `max` events per key in any sliding window of `windowMs` (forget requests per client per hour). */
export class SlidingWindowLimit implements AttemptLimit {
  private readonly events = new Map<string, number[]>();
  private readonly clock: Clock;
  private lastSweep = 0;

  constructor(private readonly opts: WindowLimitOptions) {
    if (!(opts.max >= 1) || !(opts.windowMs > 0)) throw new RangeError('a window limit needs max >= 1 and windowMs > 0');
    this.clock = opts.clock ?? Date.now;
  }

  /** Records an event of `key` when allowed; false (nothing recorded) when the key is over its limit. */
  take(key: string): boolean {
    const now = this.clock();
    if (now - this.lastSweep >= this.opts.windowMs) {
      this.lastSweep = now;
      for (const [k, ts] of this.events) if (now - (ts[ts.length - 1] ?? 0) >= this.opts.windowMs) this.events.delete(k);
    }
    const ts = (this.events.get(key) ?? []).filter((t) => now - t < this.opts.windowMs);
    if (ts.length >= this.opts.max) {
      this.events.set(key, ts);
      return false;
    }
    ts.push(now);
    this.events.set(key, ts);
    return true;
  }

  /** Milliseconds until `key` may have another event (0: now). */
  retryAfterMs(key: string): number {
    const now = this.clock();
    const ts = (this.events.get(key) ?? []).filter((t) => now - t < this.opts.windowMs);
    return ts.length < this.opts.max ? 0 : (ts[0] ?? now) + this.opts.windowMs - now;
  }

  get size(): number {
    return this.events.size;
  }
}
