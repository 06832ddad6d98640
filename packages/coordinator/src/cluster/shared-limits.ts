import { RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import type { AttemptLimit, Lockout } from '../transport/rate-limit.js';

/**
 * The abuse limits that must hold for the whole federation when several replicas serve it, kept in Redis by
 * rate-limiter-flexible (`RateLimiterRedis`: one atomic Lua INCR-with-TTL per attempt), behind the same interfaces as
 * the in-memory limiters of `transport/rate-limit.ts`:
 *
 * - handshakes per address (`RedisAttemptLimit.tokenBucket`): a client bouncing between replicas behind a load balancer
 *   must not get a bucket per replica;
 * - wrong-secret lockouts per client and address, and per client (`RedisLockout`): otherwise N replicas allow N times
 *   the guesses;
 * - forget requests per client (`RedisAttemptLimit`).
 *
 * What stays per replica: the upload window (it bounds one process's memory), connections per address and the
 * handshake queue (they bound one process's sockets and CPU), the operator API's limit (@fastify/rate-limit).
 *
 * Differences from the in-memory limiters, all from the library's fixed windows (a key's window starts at its first
 * attempt and its TTL is kept in whole seconds): durations are rounded up to whole seconds; the token bucket is a
 * window of `burst` attempts per `burst / refillPerSecond` seconds (the same long-run rate and burst, refilled at
 * once at the window's end rather than continuously); the forget limit's window is fixed from the first request, not
 * sliding (at most 2·max requests in a span of one window, across its boundary). A Redis error is thrown to the
 * caller, which refuses the attempt: a replica that lost Redis takes no new work (issue 14, section 4).
 */

/** The `redis` package's client (connected); rate-limiter-flexible talks to it with `useRedisPackage`. */
export type LimiterRedisClient = object;

export interface RedisAttemptLimitOptions {
  /** Redis key prefix of this limit in this federation, e.g. `fedunlearn:<federation>:forget`. */
  keyPrefix: string;
  /** Attempts allowed per key within a window. */
  max: number;
  /** The window, in milliseconds (rounded up to whole seconds). */
  windowMs: number;
}

/** At most `max` attempts per key per window, counted in Redis: every replica sharing the prefix shares the count. */
export class RedisAttemptLimit implements AttemptLimit {
  private readonly limiter: RateLimiterRedis;

  constructor(redis: LimiterRedisClient, opts: RedisAttemptLimitOptions) {
    if (!(Number.isInteger(opts.max) && opts.max >= 1) || !(opts.windowMs > 0)) {
      throw new RangeError(`a shared limit needs an integer max >= 1 and windowMs > 0, got max ${opts.max}, windowMs ${opts.windowMs}`);
    }
    this.limiter = new RateLimiterRedis({ storeClient: redis, useRedisPackage: true, keyPrefix: opts.keyPrefix, points: opts.max, duration: seconds(opts.windowMs) });
  }

  /**
   * The shared form of `KeyedTokenBucket`: `burst` attempts per window of burst / refillPerSecond seconds (see the
   * module comment for how it differs from a continuous refill).
   */
  static tokenBucket(redis: LimiterRedisClient, opts: { keyPrefix: string; burst: number; refillPerSecond: number }): RedisAttemptLimit {
    if (!(opts.burst >= 1) || !(opts.refillPerSecond > 0)) throw new RangeError('a token bucket needs burst >= 1 and refillPerSecond > 0');
    return new RedisAttemptLimit(redis, { keyPrefix: opts.keyPrefix, max: Math.floor(opts.burst), windowMs: (opts.burst / opts.refillPerSecond) * 1000 });
  }

  async take(key: string): Promise<boolean> {
    try {
      await this.limiter.consume(key);
      return true;
    } catch (e) {
      if (e instanceof RateLimiterRes) return false;
      throw e;
    }
  }

  async retryAfterMs(key: string): Promise<number> {
    const r = await this.limiter.get(key);
    return r && r.consumedPoints >= this.limiter.points ? Math.max(0, r.msBeforeNext) : 0;
  }
}

export interface RedisLockoutOptions {
  /** Redis key prefix of this lockout in this federation. */
  keyPrefix: string;
  /** Failures within `windowMs` that lock a key. */
  maxFailures: number;
  windowMs: number;
  /** The first lockout; each further one (without a success in between) doubles it, up to `maxLockMs`. */
  lockMs: number;
  maxLockMs: number;
}

/**
 * The shared form of `FailureLockout`: `maxFailures` failures within a window lock the key for `lockMs`, doubling at
 * each further lockout up to `maxLockMs`; the doubling is remembered for one maximum lockout after the last one ends;
 * a success clears the key. Three Redis keys per locked key: its failures (`:fail`), its lock (`:lock`), its lockout
 * count (`:n`). Exactly one replica locks at the threshold: Redis's INCR is atomic, and only the failure that makes
 * the count equal `maxFailures` locks.
 */
export class RedisLockout implements Lockout {
  private readonly failures: RateLimiterRedis;
  private readonly locks: RateLimiterRedis;
  private readonly lockouts: RateLimiterRedis;
  private readonly prefixes: string[];

  constructor(
    private readonly redis: LimiterRedisClient,
    private readonly opts: RedisLockoutOptions,
  ) {
    if (!(Number.isInteger(opts.maxFailures) && opts.maxFailures >= 1) || !(opts.windowMs > 0) || !(opts.lockMs > 0) || !(opts.maxLockMs >= opts.lockMs)) {
      throw new RangeError('a lockout needs an integer maxFailures >= 1, windowMs > 0 and 0 < lockMs <= maxLockMs');
    }
    const make = (suffix: string, points: number, ms: number) =>
      new RateLimiterRedis({ storeClient: redis, useRedisPackage: true, keyPrefix: `${opts.keyPrefix}:${suffix}`, points, duration: seconds(ms) });
    this.failures = make('fail', opts.maxFailures, opts.windowMs);
    this.locks = make('lock', 1, opts.maxLockMs);
    this.lockouts = make('n', Number.MAX_SAFE_INTEGER, opts.maxLockMs);
    this.prefixes = [this.failures, this.locks, this.lockouts].map((l) => l.getKey(''));
  }

  async lockedFor(key: string): Promise<number> {
    const r = await this.locks.get(key);
    return r ? Math.max(0, r.msBeforeNext) : 0;
  }

  async fail(key: string): Promise<number> {
    const r = await this.failures.penalty(key, 1);
    // Failures past the threshold (another replica's, concurrent with the one that locked) add nothing.
    if (r.consumedPoints !== this.opts.maxFailures) return this.lockedFor(key);
    await this.failures.delete(key);
    const before = (await this.lockouts.get(key))?.consumedPoints ?? 0;
    const ms = seconds(Math.min(this.opts.maxLockMs, this.opts.lockMs * 2 ** before)) * 1000;
    await this.lockouts.set(key, before + 1, seconds(ms + this.opts.maxLockMs));
    await this.locks.block(key, ms / 1000);
    return ms;
  }

  async succeed(key: string): Promise<void> {
    await Promise.all([this.failures.delete(key), this.locks.delete(key), this.lockouts.delete(key)]);
  }

  async succeedAllWithPrefix(prefix: string): Promise<void> {
    const client = this.redis as ScanningClient;
    for (const p of this.prefixes) {
      for await (const batch of client.scanIterator({ MATCH: `${globEscape(p + prefix)}*`, COUNT: 200 })) {
        // node-redis 5 yields a batch of keys per SCAN call (4 yielded one key at a time).
        const keys = Array.isArray(batch) ? batch : [batch];
        if (keys.length > 0) await client.del(keys);
      }
    }
  }
}

interface ScanningClient {
  scanIterator(opts: { MATCH: string; COUNT: number }): AsyncIterable<string[] | string>;
  del(keys: string[]): Promise<number>;
}

/** Whole seconds, at least 1: the library keeps TTLs in seconds, and 0 would mean no expiry at all. */
function seconds(ms: number): number {
  return Math.max(1, Math.ceil(ms / 1000));
}

/** Escapes Redis glob characters, so that a client id or address is matched literally. */
function globEscape(s: string): string {
  return s.replace(/[\\*?[\]]/g, '\\$&');
}
