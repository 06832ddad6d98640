import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NO_STOPPING, stopReason } from './stopping.js';

test('max rounds stops once the federation committed that many training rounds', () => {
  const rule = { ...NO_STOPPING, maxRounds: 3 };
  assert.equal(stopReason(rule, 2, []), null);
  assert.match(stopReason(rule, 3, [])!, /max rounds reached \(3 of 3\)/);
  assert.equal(stopReason(NO_STOPPING, 1_000_000, []), null, '0 is no limit');
});

test('patience stops when the last rounds did not beat the best loss before them by min delta', () => {
  const rule = { maxRounds: 0, patienceRounds: 2, minDelta: 0.01 };
  assert.equal(stopReason(rule, 3, [1.0, 0.8, 0.6]), null, 'still improving');
  assert.equal(stopReason(rule, 2, [1.0, 1.0]), null, 'not enough rounds to judge');
  assert.match(stopReason(rule, 4, [1.0, 0.5, 0.495, 0.499])!, /plateaued/, 'improvements under min delta do not count');
  assert.equal(stopReason(rule, 4, [1.0, 0.5, 0.48, 0.6]), null, 'one improvement above min delta resets it');
  assert.equal(stopReason(rule, 4, [1.0, NaN, 0.5, 0.3]), null, 'rounds without a loss are skipped');
});
