import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { DEFAULT_CONFIG, validateConfig } from './config.js';
import { runSimulation } from './run.js';

test('a forgotten client that joins at round 6 of 10 costs FedEraser about half of its full-history cost, measured side by side in one run', { timeout: 300_000 }, async () => {
  const out = mkdtempSync(join(tmpdir(), 'fedunlearn-sim-late-'));
  try {
    const report = await runSimulation({
      ...DEFAULT_CONFIG,
      clients: 3,
      clientsPerRound: 3,
      rounds: 10,
      historyInterval: 1,
      limitPerClass: 10,
      forget: [0],
      forgetJoinRound: 6,
      methods: ['federaser'],
      threads: 1,
      out,
      quiet: true,
    });
    // client-000 was not selected before round 6.
    assert.deepEqual(
      report.rounds.map((r) => r.participants),
      [2, 2, 2, 2, 2, 3, 3, 3, 3, 3],
    );
    const fromT0 = report.unlearning.find((r) => r.method === 'federaser' && !r.fullHistory)!;
    const full = report.unlearning.find((r) => r.method === 'federaser' && r.fullHistory)!;
    assert.ok(fromT0 && full, 'both rows were measured');
    assert.equal(fromT0.t0, 6);
    assert.equal(fromT0.roundsKeptExact, 5);
    assert.equal(full.roundsKeptExact, 0);
    assert.equal(fromT0.roundsReplayed, 5);
    assert.equal(full.roundsReplayed, 10);
    const ratio = fromT0.clientSampleEpochs / full.clientSampleEpochs;
    assert.ok(ratio <= 0.55, `from t0 ${fromT0.clientSampleEpochs} sample-epochs against ${full.clientSampleEpochs} over the full history: ${ratio.toFixed(3)}`);
    assert.equal(fromT0.vsFullHistory?.sampleEpochs, ratio);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('--forget-join-round is checked against --rounds and needs --forget', () => {
  assert.throws(() => validateConfig({ ...DEFAULT_CONFIG, forget: [0], forgetJoinRound: 11 }), /--forget-join-round: must be an integer in 1\.\.10/);
  assert.throws(() => validateConfig({ ...DEFAULT_CONFIG, forgetJoinRound: 3 }), /needs --forget/);
});

test('the simulation runs fedrecover only on a history that keeps every round\'s full updates', () => {
  // FedRecover estimates every replayed round from its stored updates: Δt must be 1 (the default is FedEraser's 2).
  assert.throws(() => validateConfig({ ...DEFAULT_CONFIG, methods: ['fedrecover'] }), /--history-interval: method fedrecover needs the full updates of every round: pass --history-interval 1/);
  assert.throws(() => validateConfig({ ...DEFAULT_CONFIG, methods: ['fedrecover'], historyInterval: 1, retention: 'norms' }), /--retention/);
  assert.doesNotThrow(() => validateConfig({ ...DEFAULT_CONFIG, methods: ['fedrecover'], historyInterval: 1 }));
});
