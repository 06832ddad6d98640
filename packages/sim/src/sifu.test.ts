import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { DEFAULT_CONFIG, validateConfig } from './config.js';
import { runSimulation } from './run.js';

test('the simulation runs sifu: its row carries the certificate (rolled back to t0 - 1 with the default sigma, no noise), and no full-history row', { timeout: 300_000 }, async () => {
  const out = mkdtempSync(join(tmpdir(), 'fedunlearn-sim-sifu-'));
  try {
    const report = await runSimulation({
      ...DEFAULT_CONFIG,
      clients: 3,
      clientsPerRound: 3,
      rounds: 4,
      historyInterval: 1,
      limitPerClass: 10,
      forget: [0],
      forgetJoinRound: 3,
      methods: ['sifu'],
      threads: 1,
      out,
      quiet: true,
    });
    assert.deepEqual(report.unlearning.map((r) => [r.method, r.fullHistory]), [['sifu', false]]);
    const row = report.unlearning[0]!;
    const cert = report.jobs.find((j) => j.jobId === row.jobId)!.certificate!;
    // One client in three moves a round's aggregate far more than sigma 0.05 covers: back to the model before t0.
    assert.ok(cert.headBound > cert.budget, `head bound ${cert.headBound} against budget ${cert.budget}`);
    assert.deepEqual(row.sifu, { rollbackRound: 2, bound: 0, budget: cert.budget, sigma: 0, epsilon: 0.5, delta: 1e-5 });
    assert.equal(row.t0, 3);
    assert.equal(row.roundsReplayed, 2, 'rounds 3 and 4 continued with the remaining clients');
    assert.match(readFileSync(join(out, 'report.md'), 'utf8'), /\| sifu \(rolled back to round 2, no noise needed\)/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('--sifu-sigma must be positive', () => {
  assert.throws(() => validateConfig({ ...DEFAULT_CONFIG, sifuSigma: 0 }), /sifu-sigma: must be positive/);
});
