import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HistoryError } from './history/store.js';
import { roundFailureReason, roundRetryDelayMs } from './round-failure.js';
import { QuorumError } from './rounds/round-engine.js';

const errno = (code: string, message: string) => Object.assign(new Error(message), { code });

test('round failures are classified by what failed', () => {
  assert.equal(roundFailureReason(new QuorumError(3, 1, 2)), 'quorum');
  assert.equal(roundFailureReason(errno('ENOSPC', "ENOSPC: no space left on device, write")), 'disk_full');
  assert.equal(roundFailureReason(Object.assign(new Error('database or disk is full'), { name: 'SqliteError', code: 'SQLITE_FULL' })), 'disk_full');
  assert.equal(roundFailureReason(new HistoryError('x', { cause: errno('EDQUOT', 'quota') })), 'disk_full');
  assert.equal(roundFailureReason(new HistoryError('round 3 is out of order')), 'store');
  assert.equal(roundFailureReason(errno('EIO', 'EIO: i/o error')), 'store');
  assert.equal(roundFailureReason(new RangeError('non-finite value at index 7')), 'invalid_model');
  assert.equal(roundFailureReason(new Error('something else')), 'internal');
});

test('the retry delay doubles per consecutive failure up to its cap', () => {
  assert.deepEqual([1, 2, 3, 4, 5, 6, 7].map((n) => roundRetryDelayMs(n, 100, 1_000)), [100, 200, 400, 800, 1_000, 1_000, 1_000]);
  assert.equal(roundRetryDelayMs(10_000, 100, 60_000), 60_000);
});
