import { test } from 'node:test';
import assert from 'node:assert/strict';
import { balancedShares } from './fleet.js';

const client = (id: number, count: number) => ({ id, data: { count } });

test('balancedShares evens out examples per thread, keeps every client once and their order within a thread', () => {
  // The Fashion-MNIST Dirichlet(0.5) split of the README's CNN run (seed 1): round-robin gave 26,456 and 33,544.
  const sizes = [5495, 7146, 4667, 9479, 7150, 5621, 5000, 5296, 4144, 6002];
  const clients = sizes.map((n, i) => client(i, n));
  const shares = balancedShares(clients, 2);
  const loads = shares.map((s) => s.reduce((n, c) => n + c.data.count, 0));
  assert.equal(loads[0]! + loads[1]!, sizes.reduce((a, b) => a + b, 0));
  assert.deepEqual([...loads].sort(), [29880, 30120]);
  assert.deepEqual(shares.flat().map((c) => c.id).sort((a, b) => a - b), sizes.map((_, i) => i));
  for (const s of shares) assert.deepEqual(s.map((c) => c.id), [...s.map((c) => c.id)].sort((a, b) => a - b));
  assert.deepEqual(balancedShares(clients, 2), shares, 'deterministic');
  // Equal clients split evenly by count, as round-robin did.
  assert.deepEqual(balancedShares(Array.from({ length: 7 }, (_, i) => client(i, 60)), 3).map((s) => s.length), [3, 2, 2]);
});
