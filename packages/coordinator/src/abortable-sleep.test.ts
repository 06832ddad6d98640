import { getEventListeners } from 'node:events';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { abortableSleep } from './abortable-sleep.js';

test('abortableSleep leaves no abort listener behind, however many times it waits on one signal', async () => {
  const ctl = new AbortController();
  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);
  process.on('warning', onWarning);
  try {
    for (let i = 0; i < 50; i++) await abortableSleep(0, ctl.signal);
    assert.equal(getEventListeners(ctl.signal, 'abort').length, 0);
    // Warnings are emitted on the next tick.
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(warnings.map((w) => w.name), []);
  } finally {
    process.off('warning', onWarning);
  }
});

test('abortableSleep ends early when the signal aborts, and at once when it already has', async () => {
  const ctl = new AbortController();
  const waiting = abortableSleep(3_600_000, ctl.signal);
  ctl.abort();
  await waiting;
  await abortableSleep(3_600_000, ctl.signal);
  assert.equal(getEventListeners(ctl.signal, 'abort').length, 0);
});
