import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createClient } from 'redis';
import { FailureLockout, type AttemptLimit, type Lockout } from '../transport/rate-limit.js';
import { RedisAttemptLimit, RedisLockout } from './shared-limits.js';
import { REDIS_URL, uniqueName } from './services.test-support.js';

type Redis = ReturnType<typeof createClient>;

describe('shared limits on the real Redis: two limiter instances (two replicas, two connections) share one count', () => {
  const prefix = uniqueName('fu-limits');
  let one: Redis;
  let two: Redis;

  before(async () => {
    one = createClient({ url: REDIS_URL });
    two = createClient({ url: REDIS_URL });
    await one.connect();
    await two.connect();
  });
  after(async () => {
    const keys = await one.keys(`${prefix}*`);
    if (keys.length) await one.del(keys);
    await one.quit();
    if (two.isOpen) await two.quit();
  });

  test('attempts per key: what replica A took counts on replica B; other keys are unaffected', async () => {
    const opts = { keyPrefix: `${prefix}:forget`, max: 3, windowMs: 3_600_000 };
    const a: AttemptLimit = new RedisAttemptLimit(one, opts);
    const b: AttemptLimit = new RedisAttemptLimit(two, opts);
    assert.equal(await a.take('c1'), true);
    assert.equal(await b.take('c1'), true);
    assert.equal(await b.retryAfterMs('c1'), 0);
    assert.equal(await a.take('c1'), true);
    assert.equal(await b.take('c1'), false, 'the fourth attempt, on the other replica, must be refused');
    assert.equal(await a.take('c1'), false);
    const wait = await b.retryAfterMs('c1');
    assert.ok(wait > 0 && wait <= 3_600_000, `retry after ${wait} ms`);
    assert.equal(await a.take('c2'), true);
  });

  test('handshakes per address as a shared token bucket: burst attempts at once across replicas, then refused', async () => {
    const opts = { keyPrefix: `${prefix}:hello`, burst: 4, refillPerSecond: 0.5 };
    const a = RedisAttemptLimit.tokenBucket(one, opts);
    const b = RedisAttemptLimit.tokenBucket(two, opts);
    const got = [await a.take('10.0.0.1'), await b.take('10.0.0.1'), await a.take('10.0.0.1'), await b.take('10.0.0.1'), await a.take('10.0.0.1'), await b.take('10.0.0.1')];
    assert.deepEqual(got, [true, true, true, true, false, false]);
    // burst / refill = 8 s window.
    const wait = await a.retryAfterMs('10.0.0.1');
    assert.ok(wait > 0 && wait <= 8_000, `retry after ${wait} ms`);
  });

  test('lockouts: failures on two replicas add up, the lock shows on both, and it doubles like the in-memory one', async () => {
    const opts = { maxFailures: 3, windowMs: 60_000, lockMs: 10_000, maxLockMs: 40_000 };
    const a: Lockout = new RedisLockout(one, { keyPrefix: `${prefix}:auth`, ...opts });
    const b: Lockout = new RedisLockout(two, { keyPrefix: `${prefix}:auth`, ...opts });
    // The in-memory lockout on a clock that does not move: what the shared one must answer, failure by failure.
    const memory = new FailureLockout({ ...opts, clock: () => 0 });
    const shared: number[] = [];
    const local: number[] = [];
    for (let i = 0; i < 12; i++) {
      shared.push(await (i % 2 === 0 ? a : b).fail('c1 10.0.0.1'));
      local.push(memory.fail('c1 10.0.0.1'));
      if (i === 2) {
        const lockedA = await a.lockedFor('c1 10.0.0.1');
        const lockedB = await b.lockedFor('c1 10.0.0.1');
        assert.ok(lockedA > 0 && lockedA <= 10_000 && lockedB > 0 && lockedB <= 10_000, `locked ${lockedA} / ${lockedB} ms`);
      }
    }
    // The in-memory one reports the time left of a running lock on every failure; the shared one too, from Redis,
    // which has moved on by a few ms: compare the lockouts (the failures that lock), and that no failure unlocks.
    const lockouts = (xs: number[]) => xs.filter((_, i) => i % 3 === 2);
    assert.deepEqual(lockouts(shared), lockouts(local));
    assert.deepEqual(lockouts(shared), [10_000, 20_000, 40_000, 40_000]);
    assert.ok(shared.every((ms, i) => i < 2 || ms > 0), `a failure after the first lockout must find the key locked: ${shared}`);

    await b.succeed('c1 10.0.0.1');
    assert.equal(await a.lockedFor('c1 10.0.0.1'), 0);
    // Success forgot the doubling too: the next lockout is the first again.
    for (let i = 0; i < 2; i++) assert.equal(await a.fail('c1 10.0.0.1'), 0);
    assert.equal(await b.fail('c1 10.0.0.1'), 10_000);
  });

  test('succeedAllWithPrefix on one replica clears one client\'s lockouts at every address, and only those', async () => {
    const opts = { keyPrefix: `${prefix}:rot`, maxFailures: 1, windowMs: 60_000, lockMs: 30_000, maxLockMs: 60_000 };
    const a = new RedisLockout(one, opts);
    const b = new RedisLockout(two, opts);
    for (const key of ['c1 10.0.0.1', 'c1 10.0.0.2', 'c10 10.0.0.1', 'c*1 10.0.0.3']) assert.ok((await a.fail(key)) > 0);
    await b.succeedAllWithPrefix('c1 ');
    assert.equal(await a.lockedFor('c1 10.0.0.1'), 0);
    assert.equal(await a.lockedFor('c1 10.0.0.2'), 0);
    assert.ok((await a.lockedFor('c10 10.0.0.1')) > 0, 'another client whose id starts the same must stay locked');
    assert.ok((await a.lockedFor('c*1 10.0.0.3')) > 0, 'a glob character in a key is matched literally');
    await b.succeedAllWithPrefix('c*');
    assert.equal(await a.lockedFor('c*1 10.0.0.3'), 0);
    assert.ok((await a.lockedFor('c10 10.0.0.1')) > 0);
  });

  test('Redis unreachable: the attempt is refused with the error, never let through', async () => {
    const broken = createClient({ url: REDIS_URL });
    await broken.connect();
    const limit = new RedisAttemptLimit(broken, { keyPrefix: `${prefix}:down`, max: 5, windowMs: 1_000 });
    await broken.quit();
    await assert.rejects(limit.take('x'), /closed/i);
    const lockout = new RedisLockout(broken, { keyPrefix: `${prefix}:down`, maxFailures: 1, windowMs: 1_000, lockMs: 1_000, maxLockMs: 1_000 });
    await assert.rejects(lockout.lockedFor('x'), /closed/i);
  });

  test('bad options are refused with a clear error', () => {
    assert.throws(() => new RedisAttemptLimit(one, { keyPrefix: prefix, max: 0, windowMs: 1 }), /max >= 1/);
    assert.throws(() => RedisAttemptLimit.tokenBucket(one, { keyPrefix: prefix, burst: 1, refillPerSecond: 0 }), /refillPerSecond > 0/);
    assert.throws(() => new RedisLockout(one, { keyPrefix: prefix, maxFailures: 1, windowMs: 1, lockMs: 5, maxLockMs: 1 }), /lockMs <= maxLockMs/);
  });
});
