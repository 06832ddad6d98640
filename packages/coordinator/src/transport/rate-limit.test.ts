import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FailureLockout, KeyedTokenBucket, SlidingWindowLimit } from './rate-limit.js';

/** A clock the test moves by hand. */
function manualClock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => void (now += ms) };
}

test('a token bucket lets a burst through, refuses the next, and refills at its rate per key', () => {
  const c = manualClock();
  const b = new KeyedTokenBucket({ burst: 3, refillPerSecond: 2, clock: c.now });
  assert.deepEqual([b.take('a'), b.take('a'), b.take('a'), b.take('a')], [true, true, true, false]);
  assert.equal(b.take('b'), true, 'another address has its own bucket');
  assert.equal(b.retryAfterMs('a'), 500);
  c.advance(499);
  assert.equal(b.take('a'), false);
  c.advance(1);
  assert.equal(b.take('a'), true);
  assert.equal(b.take('a'), false);
  // A long pause refills to the burst, not beyond it.
  c.advance(60_000);
  assert.deepEqual([b.take('a'), b.take('a'), b.take('a'), b.take('a')], [true, true, true, false]);
});

test('a token bucket forgets quiet keys, so memory follows the active addresses', () => {
  const c = manualClock();
  const b = new KeyedTokenBucket({ burst: 2, refillPerSecond: 1, clock: c.now });
  for (let i = 0; i < 100; i++) b.take(`10.0.0.${i}`);
  assert.equal(b.size, 100);
  c.advance(2_000);
  b.take('fresh');
  assert.equal(b.size, 1);
});

test('a lockout starts after maxFailures within the window, doubles, caps, and a success clears it', () => {
  const c = manualClock();
  const l = new FailureLockout({ maxFailures: 3, windowMs: 60_000, lockMs: 1_000, maxLockMs: 3_000, clock: c.now });
  assert.equal(l.fail('x'), 0);
  assert.equal(l.fail('x'), 0);
  assert.equal(l.lockedFor('x'), 0);
  assert.equal(l.fail('x'), 1_000);
  assert.equal(l.lockedFor('y'), 0, 'other ids are not affected');
  c.advance(999);
  assert.equal(l.lockedFor('x'), 1);
  c.advance(1);
  assert.equal(l.lockedFor('x'), 0);
  l.fail('x');
  l.fail('x');
  assert.equal(l.fail('x'), 2_000, 'the second lockout doubles');
  c.advance(2_000);
  l.fail('x');
  l.fail('x');
  assert.equal(l.fail('x'), 3_000, 'capped at maxLockMs');
  c.advance(3_000);
  l.succeed('x');
  l.fail('x');
  l.fail('x');
  assert.equal(l.fail('x'), 1_000, 'a success resets the doubling');
});

test('succeedAllWithPrefix clears every key of one client and no other', () => {
  const c = manualClock();
  const l = new FailureLockout({ maxFailures: 1, windowMs: 10_000, lockMs: 1_000, maxLockMs: 8_000, clock: c.now });
  for (const k of ['dev-1 10.0.0.1', 'dev-1 10.0.0.2', 'dev-10 10.0.0.1']) assert.equal(l.fail(k), 1_000);
  l.succeedAllWithPrefix('dev-1 ');
  assert.deepEqual(['dev-1 10.0.0.1', 'dev-1 10.0.0.2', 'dev-10 10.0.0.1'].map((k) => l.lockedFor(k)), [0, 0, 1_000]);
});

test('failures spread wider than the window never lock', () => {
  const c = manualClock();
  const l = new FailureLockout({ maxFailures: 3, windowMs: 10_000, lockMs: 1_000, maxLockMs: 8_000, clock: c.now });
  for (let i = 0; i < 10; i++) {
    assert.equal(l.fail('slow'), 0);
    c.advance(5_001);
  }
});

test('a sliding window allows max events per key and frees a slot when the oldest ages out', () => {
  const c = manualClock();
  const w = new SlidingWindowLimit({ max: 2, windowMs: 3_600_000, clock: c.now });
  assert.equal(w.take('k'), true);
  c.advance(1_000);
  assert.equal(w.take('k'), true);
  assert.equal(w.take('k'), false);
  assert.equal(w.take('other'), true);
  assert.equal(w.retryAfterMs('k'), 3_599_000);
  c.advance(3_599_000);
  assert.equal(w.take('k'), true, 'the first event left the window');
  assert.equal(w.take('k'), false, 'the second is still in it');
});

test('limiters refuse nonsensical settings', () => {
  assert.throws(() => new KeyedTokenBucket({ burst: 0, refillPerSecond: 1 }), RangeError);
  assert.throws(() => new FailureLockout({ maxFailures: 1, windowMs: 1, lockMs: 10, maxLockMs: 5 }), RangeError);
  assert.throws(() => new SlidingWindowLimit({ max: 0, windowMs: 1 }), RangeError);
});
