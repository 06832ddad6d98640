import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_CONFIG } from '../config.js';
import type { ModelFigures } from '../evaluate.js';
import type { SimReport, UnlearningRow } from '../run.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Progress } from '../progress.js';
import { aggregateSeeds, writeSeedsReport } from './seeds.js';

const figures = (acc: number, tpr: number): ModelFigures => ({
  testAccuracy: acc,
  testLoss: 0.3,
  forgottenAccuracy: 0.9,
  backdoorASR: null,
  mia: { auc: 0.5, precision: 0.5, recall: 0.5, tprAt1: 0.01 },
  witness: { tprAt0_1: tpr / 2, tprAt1: tpr, auc: 0.5 + tpr, memberScoreQuantiles: [], nonMemberScoreQuantiles: [], fprResolution: 0.001, references: ['ref'], members: 100, nonMembers: 1000, population: 1000 },
});

function row(method: UnlearningRow['method'], tune: number, acc: number, tpr: number, sampleEpochs: number, speedup: number): UnlearningRow {
  return {
    ...figures(acc, tpr),
    method,
    tuneRounds: tune,
    fullHistory: false,
    t0: 1,
    roundsKeptExact: 0,
    vsFullHistory: null,
    requestedBy: 'operator:sim',
    jobId: 'j',
    distanceToRetrain: { l2: 1, cosine: 0.9 },
    pDiss: null,
    fidelity: null,
    wallTimeMs: 1000,
    clientSampleEpochs: sampleEpochs,
    bytesOnWire: 0,
    speedupWall: 1,
    speedupSampleEpochs: speedup,
    modelBefore: 'a',
    modelAfter: 'b',
    roundsReplayed: 1,
    clientsMissing: 0,
  };
}

function report(seed: number, originalTpr: number, retrainAcc: number, replayAcc: number): SimReport {
  return {
    config: { ...DEFAULT_CONFIG, seed, forget: [0] },
    original: figures(0.9, originalTpr),
    originalDistanceToRetrain: { l2: 3, cosine: 0.8 },
    unlearning: [row('retrain', 0, retrainAcc, 0.01, 1000, 1), row('replay', 2, replayAcc, 0.02, 100, 10)],
  } as unknown as SimReport;
}

test('aggregateSeeds: per-row means and sample SDs, the seed-spread signal rule, and the cheap-and-close rows', () => {
  const agg = aggregateSeeds([report(1, 0.3, 0.9, 0.895), report(2, 0.4, 0.92, 0.915), report(3, 0.35, 0.91, 0.9)]);
  assert.deepEqual(agg.seeds, [1, 2, 3]);
  assert.deepEqual(agg.rows.map((r) => r.row), ['original (not unlearned)', 'retrain', 'replay +2 rounds']);
  const retrain = agg.rows[1]!;
  assert.ok(Math.abs(retrain.testAccuracy.mean - 0.91) < 1e-12);
  assert.ok(Math.abs(retrain.testAccuracy.sd - 0.01) < 1e-12);
  const replay = agg.rows[2]!;
  // vs retrain per seed: -0.005, -0.005, -0.01.
  assert.ok(Math.abs(replay.vsRetrain!.mean + 0.02 / 3) < 1e-12);
  assert.deepEqual(agg.cheapAndClose, ['replay +2 rounds']);
  assert.equal(agg.rows[0]!.clientSampleEpochs, null);
  const rmia = agg.signals.find((s) => s.name === 'RMIA TPR at 1% FPR')!;
  assert.equal(rmia.carriesSignal, true);
  // Forgotten-data accuracy is 0.9 everywhere: no separation, no signal.
  assert.equal(agg.signals.find((s) => s.name === 'forgotten-data accuracy')!.carriesSignal, false);
});

test('aggregateSeeds refuses runs whose rows differ and an empty list', () => {
  const a = report(1, 0.3, 0.9, 0.9);
  const b = { ...report(2, 0.3, 0.9, 0.9), unlearning: [row('retrain', 0, 0.9, 0.01, 1000, 1)] } as SimReport;
  assert.throws(() => aggregateSeeds([a, b]), /seed 2 has rows retrain/);
  assert.throws(() => aggregateSeeds([]), /no seed reports/);
});

test('writeSeedsReport writes the JSON, the table with its verdicts and the plot', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-seeds-'));
  try {
    let terminal = '';
    const agg = aggregateSeeds([report(1, 0.3, 0.9, 0.895), report(2, 0.4, 0.92, 0.915), report(3, 0.35, 0.91, 0.9)]);
    await writeSeedsReport(dir, agg, new Progress(false, { write: (s: string) => (terminal += s), isTTY: false }));
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'seeds.json'), 'utf8')).seeds, [1, 2, 3]);
    const md = readFileSync(join(dir, 'seeds.md'), 'utf8');
    assert.match(md, /\| replay \+2 rounds +\| +90\.3 ± 1\.0 \| +-0\.7 ± 0\.3/);
    assert.match(md, /- RMIA TPR at 1% FPR: \*\*carries signal\*\*/);
    assert.match(md, /Within 1 point of retraining at 10x or more fewer client sample-epochs: replay \+2 rounds\./);
    assert.match(readFileSync(join(dir, 'seeds.svg'), 'utf8'), /^<svg/);
    assert.match(terminal, /seeds 1, 2, 3 \(mean ± sample SD\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
