import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clusterStrategyOf } from './cluster-aggregation.js';

test('a cluster accepts the mergeable strategies and refuses the median and the trimmed mean with a clear message', () => {
  assert.equal(clusterStrategyOf({ strategy: 'fedavg' }).name, 'fedavg');
  assert.equal(clusterStrategyOf({ strategy: 'clipped-fedavg', clipNorm: 2 }).name, 'clipped-fedavg');
  for (const strategy of ['median', 'trimmed-mean'] as const) {
    assert.throws(
      () => clusterStrategyOf({ strategy }),
      (e: Error) =>
        e instanceof RangeError &&
        e.message.includes(`aggregation ${strategy} cannot run on several replicas`) &&
        e.message.includes('fedavg or clipped-fedavg') &&
        e.message.includes('--data DIR'),
    );
  }
  // A bad parameter is still strategyOf's error, not a cluster one.
  assert.throws(() => clusterStrategyOf({ strategy: 'clipped-fedavg' }), /needs clipNorm/);
});
