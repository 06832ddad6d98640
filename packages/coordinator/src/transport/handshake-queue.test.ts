import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HandshakeQueue } from './handshake-queue.js';

/** Awaits a condition instead of sleeping a fixed time before checking it (bounded, so that a bug fails, not hangs). */
async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const busy = (ms: number) => {
  const end = performance.now() + ms;
  while (performance.now() < end);
};

test('handshakes run one at a time, timers get a turn between them, and arrivals beyond the bound are refused', async () => {
  const q = new HandshakeQueue({ concurrency: 1, maxQueued: 3 });
  const order: string[] = [];
  let ticks = 0;
  const timer = setInterval(() => ticks++, 0);
  const accepted = [1, 2, 3, 4, 5].map((i) => q.offer(() => {
    order.push(`start ${i}`);
    busy(15);
    order.push(`end ${i}`);
  }));
  // One is taken off the queue at once (it is scheduled, not yet run), three wait, the fifth is refused.
  assert.deepEqual(accepted, [true, true, true, true, false]);
  assert.equal(q.refused, 1);
  assert.equal(order.length, 0, 'nothing runs inside offer()');
  await until(() => order.length === 8, 'the four accepted handshakes');
  clearInterval(timer);
  assert.deepEqual(order, ['start 1', 'end 1', 'start 2', 'end 2', 'start 3', 'end 3', 'start 4', 'end 4']);
  // Four busy handshakes of 15 ms: a 0 ms interval timer fired between them, not only after all of them.
  assert.ok(ticks >= 4, `the interval timer ran ${ticks} times`);
  assert.equal(q.size, 0);
});

test('asynchronous handshakes overlap up to the concurrency, and a rejected one frees its slot', async () => {
  const q = new HandshakeQueue({ concurrency: 2, maxQueued: 10 });
  let inFlight = 0;
  let peak = 0;
  let done = 0;
  for (let i = 0; i < 6; i++) {
    q.offer(async () => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise((r) => setTimeout(r, 10));
      inFlight--;
      done++;
      if (i === 0) throw new Error('a failed handshake');
    });
  }
  await until(() => done === 6, 'six handshakes');
  assert.equal(peak, 2);
});

test('the bound follows how long handshakes take: a wait beyond maxWaitMs is refused', async () => {
  const q = new HandshakeQueue({ concurrency: 1, maxQueued: 100, maxWaitMs: 100 });
  let first = false;
  q.offer(() => {
    busy(20);
    first = true;
  });
  await until(() => first && q.expectedWaitMs(1) > 0, 'the first handshake to be measured');
  const avg = q.expectedWaitMs(1);
  assert.ok(avg >= 20, `one 20 ms handshake measured as ${avg} ms`);
  // Nothing finishes while offering, so the estimate stays put: the queue takes exactly as many as fit in 100 ms.
  let accepted = 0;
  while (q.offer(() => busy(1))) accepted++;
  assert.equal(q.size, Math.floor(100 / avg), `${accepted} accepted with a ${avg} ms estimate`);
  assert.equal(accepted, q.size + 1, 'the first went straight to running');
  await until(() => q.size === 0, 'the queue to drain');
});
