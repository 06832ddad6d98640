import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_CONFIG } from '../config.js';
import { Progress } from '../progress.js';
import type { SimReport, UnlearningRow } from '../run.js';
import { writeReport } from './write.js';

function row(method: UnlearningRow['method'], over: Partial<UnlearningRow> = {}): UnlearningRow {
  return {
    method,
    tuneRounds: 0,
    fullHistory: false,
    t0: 1,
    roundsKeptExact: 0,
    vsFullHistory: null,
    requestedBy: 'operator:sim',
    jobId: `job-${method}`,
    testAccuracy: 0.9,
    testLoss: 0.3,
    forgottenAccuracy: 0.91,
    backdoorASR: 0.01,
    mia: { auc: 0.5, precision: 0.5, recall: 0.5, tprAt1: 0.01 },
    witness: null,
    distanceToRetrain: { l2: 1, cosine: 0.9 },
    pDiss: 0.1,
    fidelity: null,
    wallTimeMs: 1000,
    clientSampleEpochs: 1000,
    bytesOnWire: 1,
    speedupWall: 1,
    speedupSampleEpochs: 1,
    modelBefore: 'a',
    modelAfter: 'b',
    roundsReplayed: 2,
    clientsMissing: 0,
    ...over,
  };
}

function report(originalAuc: number, noiseFloor: number | null): SimReport {
  return {
    config: { ...DEFAULT_CONFIG, forget: [0], backdoor: true, noiseFloor: noiseFloor !== null },
    backend: 'wasm',
    model: { name: 'mlp', parameters: 10 },
    data: { train: 10, test: 10, perClient: [5, 5] },
    rounds: [1, 2].map((round) => ({ round, testAccuracy: 0.8, testLoss: 0.5, participants: 2, participantIds: ['client-000', 'client-001'], modelSha256: `sha${round}`, missing: 0, durationMs: 10, trainLoss: 0.6 })),
    finalTestAccuracy: 0.8,
    wallTimeMs: 1,
    trainingWallTimeMs: 1,
    trainingShare: 0.5,
    efficiency: { threads: 2, connectMs: 1, roundsMs: 1, evaluationMs: 1, perThreadTrainingMs: [1, 1], roundIdleMs: 0 },
    storedBytes: 1,
    history: { clientRounds: 4 } as SimReport['history'],
    forgotten: ['client-000'],
    originalDistanceToRetrain: null,
    original: { testAccuracy: 0.9, testLoss: 0.3, forgottenAccuracy: 0.95, backdoorASR: 0.6, mia: { auc: originalAuc, precision: 0.5, recall: 0.5, tprAt1: 0.01 }, witness: null },
    unlearning: [row('retrain', { fidelity: noiseFloor === null ? null : 0.5 }), row('federaser', { fidelity: noiseFloor === null ? null : 1.5 })],
    noiseFloor: noiseFloor === null ? null : { l2BetweenRetrains: noiseFloor },
    signals: [],
    jobs: [],
    notes: [],
  };
}

async function written(r: SimReport): Promise<{ md: string; terminal: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-report-'));
  let terminal = '';
  try {
    await writeReport(dir, r, new Progress(false, { write: (s: string) => (terminal += s), isTTY: false }));
    return { md: readFileSync(join(dir, 'report.md'), 'utf8'), terminal };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('report.md explains every column of its tables and lists each round\'s participants', async () => {
  const { md } = await written(report(0.62, 0.8));
  const header = (title: string) => md.split('\n').find((l) => l.startsWith('| round') === (title === 'round') && l.startsWith('| ') && l.includes(title))!;
  for (const [first, line] of [['round', header('round')], ['row', header('row')]] as const) {
    assert.ok(line, `table with ${first}`);
    const titles = line.split('|').slice(1, -1).map((c) => c.trim());
    for (const t of titles) assert.ok(md.includes(`**${t}**`), `column '${t}' is explained`);
  }
  assert.match(md, /- round 1: client-000, client-001/);
  assert.match(md, /Noise floor: L2 0\.8000/);
  assert.doesNotMatch(md, /no signal/, 'an original model at AUC 0.62 gives the attack a signal');
});

test('an MIA AUC of about 0.5 for the original model is flagged in the column title and the notes; fidelity says what it needs', async () => {
  const { md, terminal } = await written(report(0.503, null));
  assert.match(md, /\| MIA AUC \(no signal here\)/);
  assert.match(md, /scores no better than the retrain \(or, without a retrain, about 0\.5\)/);
  assert.match(md, /Empty: this run had no `--noise-floor`/);
  assert.match(terminal, /MIA AUC \(no signal here\)/);
  assert.match(terminal, /fidelity: empty without --noise-floor/);
  assert.match(terminal, /original model already scores 0\.503/);
});

test('the report says which witness carries signal in the run, and which does not', async () => {
  const r = report(0.503, null);
  r.signals = [
    { name: 'RMIA TPR at 1% FPR', separation: 0.3, noise: 0.1, carriesSignal: true, basis: 'b' },
    { name: 'loss-threshold MIA AUC', separation: 0.01, noise: 0.05, carriesSignal: false, basis: 'b' },
  ];
  const { md, terminal } = await written(r);
  assert.match(md, /- RMIA TPR at 1% FPR: \*\*carries signal\*\* \(original − retrain 0\.300 against 0\.100/);
  assert.match(md, /- loss-threshold MIA AUC: no signal/);
  assert.match(terminal, /RMIA TPR at 1% FPR: carries signal/);
});

test('the MIA column is flagged by the run\'s own verdict when there is one, not by a fixed band around 0.5', async () => {
  const r = report(0.62, null);
  r.signals = [{ name: 'loss-threshold MIA AUC', separation: 0.05, noise: 0.09, carriesSignal: false, basis: 'b' }];
  const { md, terminal } = await written(r);
  assert.match(md, /\| MIA AUC \(no signal here\)/);
  assert.match(terminal, /not above the retrain's by more than the figure's sampling error/);
  r.signals = [{ name: 'loss-threshold MIA AUC', separation: 0.01, noise: 0.005, carriesSignal: true, basis: 'b' }];
  r.original!.mia!.auc = 0.51;
  assert.doesNotMatch((await written(r)).md, /no signal here/);
});

test("report.md gives each row's RMIA score quantiles", async () => {
  const r = report(0.62, null);
  r.original!.witness = { tprAt0_1: 0.05, tprAt1: 0.15, auc: 0.7, memberScoreQuantiles: [0.1, 0.4, 0.75, 0.95, 0.999], nonMemberScoreQuantiles: [0.05, 0.25, 0.5, 0.75, 0.95], fprResolution: 0.001, references: ['initial model', 'exact retrain'], members: 100, nonMembers: 1000, population: 1000 };
  const { md } = await written(r);
  assert.match(md, /- original: members 0\.100 \/ 0\.400 \/ 0\.750 \/ 0\.950 \/ 0\.999; non-members' median 0\.500/);
  assert.match(md, /- original: initial model \+ exact retrain/);
});
