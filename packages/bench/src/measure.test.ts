import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compare, quantile, spreadOf } from './measure.js';

/** A fake clock that only moves when a workload says so: timings are exact and the test never depends on the machine. */
function fakeClock() {
  let t = 0;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

test('compare interleaves candidate and baseline, warm-up first, and counts every call', async () => {
  const clock = fakeClock();
  const order: string[] = [];
  const cand = { run: () => { order.push('A'); clock.advance(2); } };
  const base = { run: () => { order.push('B'); clock.advance(1); } };
  const c = await compare(cand, base, { warmup: 2, repeats: 5, now: clock.now });
  assert.equal(order.join(''), 'AB'.repeat(7));
  assert.equal(c.repeats, 5);
  assert.equal(c.candidate.median, 2);
  assert.equal(c.baseline.median, 1);
  assert.equal(c.ratio, 0.5, 'a candidate twice as slow as its baseline is at ratio 0.5');
  assert.equal(c.pairRatios.min, 0.5);
  assert.equal(c.pairRatios.max, 0.5);
});

test('warm-up runs are not measured, and the median ignores one outlier', async () => {
  const clock = fakeClock();
  let calls = 0;
  // Candidate times: 100 and 100 in warm-up, then 10, 11, 1000, 12, 13.
  const times = [100, 100, 10, 11, 1000, 12, 13];
  const cand = { run: () => clock.advance(times[calls++]!) };
  const base = { run: () => clock.advance(20) };
  const c = await compare(cand, base, { warmup: 2, repeats: 5, now: clock.now });
  assert.equal(calls, 7);
  assert.equal(c.candidate.median, 12);
  assert.equal(c.candidate.min, 10);
  assert.equal(c.candidate.max, 1000);
  assert.equal(c.ratio, 20 / 12);
});

test('async workloads are awaited before the clock is read', async () => {
  const clock = fakeClock();
  const order: string[] = [];
  const cand = { run: async () => { await new Promise((r) => setImmediate(r)); clock.advance(4); order.push('A'); } };
  const base = { run: async () => { clock.advance(8); order.push('B'); } };
  const c = await compare(cand, base, { warmup: 0, repeats: 3, now: clock.now });
  assert.equal(order.join(''), 'ABABAB');
  assert.equal(c.ratio, 2);
});

test('bad repeat counts are refused', async () => {
  const w = { run: () => undefined };
  await assert.rejects(compare(w, w, { warmup: 0, repeats: 0 }), RangeError);
  await assert.rejects(compare(w, w, { warmup: -1, repeats: 1 }), RangeError);
  await assert.rejects(compare(w, w, { warmup: 0, repeats: 1.5 }), RangeError);
});

test('quantiles interpolate linearly; spread is order independent', () => {
  assert.equal(quantile([1, 2, 3, 4], 0.5), 2.5);
  assert.equal(quantile([1, 2, 3, 4, 5], 0.25), 2);
  assert.ok(Number.isNaN(quantile([], 0.5)));
  assert.deepEqual(spreadOf([5, 1, 3]), { median: 3, min: 1, max: 5, q1: 2, q3: 4 });
});
