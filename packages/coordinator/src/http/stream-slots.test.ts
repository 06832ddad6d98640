import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StreamSlots } from './stream-slots.js';

test('stream slots: bounded per address and in total, each refusal naming its limit; a release counts once', () => {
  const slots = new StreamSlots({ perAddress: 2, total: 3 });
  const a1 = slots.acquire('10.0.0.1');
  const a2 = slots.acquire('10.0.0.1');
  assert.ok('release' in a1 && 'release' in a2);
  const a3 = slots.acquire('10.0.0.1');
  assert.ok('refused' in a3 && /at most 2 .*limits\.eventStreamsPerAddress/.test(a3.refused.message));
  assert.ok('release' in slots.acquire('10.0.0.2'));
  const b2 = slots.acquire('10.0.0.2');
  assert.ok('refused' in b2 && /at most 3 .*limits\.eventStreams\)/.test(b2.refused.message), 'the total bound, though 10.0.0.2 holds only one');
  assert.equal(slots.open, 3);
  a1.release();
  a1.release();
  assert.equal(slots.open, 2, 'a second release of the same slot gives nothing back');
  assert.equal(slots.openFrom('10.0.0.1'), 1);
  a2.release();
  assert.equal(slots.openFrom('10.0.0.1'), 0);
  assert.ok('release' in slots.acquire('10.0.0.1'));
});

test('stream slots: a limit that is not a positive integer is refused', () => {
  assert.throws(() => new StreamSlots({ perAddress: 0, total: 3 }), /perAddress must be a positive integer, got 0/);
  assert.throws(() => new StreamSlots({ perAddress: 1, total: 1.5 }), /total must be a positive integer/);
});
