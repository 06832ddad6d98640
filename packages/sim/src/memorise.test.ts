import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_CONFIG, SCENARIOS, type SimConfig } from './config.js';
import { runSimulation } from './run.js';

// Can the per-example witness tell? The memorisation scenario, small and seeded: few examples per client, several local
// epochs, so the model fits the forgotten client's data. The original model then must be caught (RMIA TPR at 1 % FPR
// well above the exact retrain's, which never saw that data); a witness blind to memorisation fails here. Every bound
// is relative to figures of this same run.

test('memorisation scenario: the per-example witness separates the original from the retrain', { timeout: 600_000 }, async () => {
  const out = mkdtempSync(join(tmpdir(), 'fedunlearn-memorise-'));
  try {
    const cfg: SimConfig = {
      ...DEFAULT_CONFIG,
      ...SCENARIOS.memorise,
      // Smaller than the preset: 5 clients of ~100 examples, 10 rounds; 3,000 held-out examples.
      clients: 5,
      clientsPerRound: 5,
      rounds: 10,
      limitPerClass: 350,
      testFraction: 6 / 7,
      methods: ['retrain', 'replay'],
      tuneRounds: [0],
      seed: 1,
      threads: 1,
      out,
      quiet: true,
    };
    const report = await runSimulation(cfg);
    const original = report.original!;
    const retrain = report.unlearning.find((r) => r.method === 'retrain')!;
    const replay = report.unlearning.find((r) => r.method === 'replay')!;
    const line = (name: string, f: typeof original) =>
      `${name}: RMIA TPR@1% ${f.witness!.tprAt1.toFixed(3)} TPR@0.1% ${f.witness!.tprAt0_1.toFixed(3)} AUC ${f.witness!.auc.toFixed(3)} (refs ${f.witness!.references.join(' + ')}); loss AUC ${f.mia!.auc.toFixed(3)}; forgotten acc ${f.forgottenAccuracy}; test acc ${f.testAccuracy}`;
    const table = [line('original', original), line('retrain', retrain), line('replay', replay), ...report.signals.map((s) => `${s.name}: ${s.carriesSignal} (${s.separation.toFixed(3)} vs ${s.noise.toFixed(3)})`)].join('\n');
    console.log(table);

    // The retrain is never its own reference.
    assert.ok(!retrain.witness!.references.includes('exact retrain'), table);
    assert.ok(original.witness!.references.includes('exact retrain'), table);
    // The witness catches the original far more often than the retrain, beyond its sampling error in this run.
    assert.ok(original.witness!.tprAt1 >= 3 * retrain.witness!.tprAt1 && original.witness!.tprAt1 >= 0.1, table);
    assert.equal(report.signals.find((s) => s.name === 'RMIA TPR at 1% FPR')!.carriesSignal, true, table);
    // The model did learn the task (not a witness of a broken model).
    assert.ok(retrain.testAccuracy > 0.6, table);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
