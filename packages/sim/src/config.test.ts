import { test } from 'node:test';
import assert from 'node:assert/strict';
import { applyScenario, DEFAULT_CONFIG, SCENARIOS, validateConfig } from './config.js';

test('a scenario replaces the defaults but never a flag the user gave', () => {
  const c = applyScenario({ ...DEFAULT_CONFIG, rounds: 7 }, 'memorise', new Set(['rounds']));
  assert.equal(c.rounds, 7);
  assert.equal(c.localEpochs, SCENARIOS.memorise!.localEpochs);
  assert.equal(c.testFraction, 0.8);
  assert.deepEqual(c.forget, [0]);
  assert.doesNotThrow(() => validateConfig(c));
  assert.throws(() => applyScenario(DEFAULT_CONFIG, 'nope', new Set()), /'nope' is not one of memorise/);
});

test('--test-fraction must be in (0, 1)', () => {
  assert.throws(() => validateConfig({ ...DEFAULT_CONFIG, testFraction: 1 }), /--test-fraction/);
  assert.throws(() => validateConfig({ ...DEFAULT_CONFIG, testFraction: 0 }), /--test-fraction/);
});
