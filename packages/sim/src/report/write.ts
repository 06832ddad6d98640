import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Progress } from '../progress.js';
import type { ModelFigures } from '../evaluate.js';
import type { SimReport } from '../run.js';
import { accuracyPlotSvg, unlearningPlotSvg } from './plot.js';
import { markdownTable, renderTable, type TableColumn } from './table.js';

const pct = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? (v * 100).toFixed(1) : '');
const num = (digits: number) => (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '');
const int = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '');
const speed = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? `${v.toFixed(1)}x` : '');

const ROUND_COLUMNS: TableColumn[] = [
  { key: 'round', title: 'round' },
  { key: 'testAccuracy', title: 'test acc %', format: pct },
  { key: 'testLoss', title: 'test loss', format: num(4) },
  { key: 'trainLoss', title: 'train loss', format: num(4) },
  { key: 'participants', title: 'clients' },
  { key: 'missing', title: 'missing' },
  { key: 'durationMs', title: 'ms', format: int },
];

const UNLEARNING_COLUMNS: TableColumn[] = [
  { key: 'row', title: 'row', align: 'left' },
  { key: 'testAccuracy', title: 'test acc %', format: pct },
  { key: 'vsRetrain', title: 'vs retrain', format: (v) => (typeof v === 'number' ? `${v >= 0 ? '+' : ''}${(v * 100).toFixed(1)}` : '') },
  { key: 'forgottenAccuracy', title: 'forgotten acc %', format: pct },
  { key: 'backdoorASR', title: 'backdoor ASR %', format: pct },
  { key: 'miaAuc', title: 'MIA AUC', format: num(3) },
  { key: 'rmiaTpr0_1', title: 'RMIA TPR@0.1% %', format: pct },
  { key: 'rmiaTpr1', title: 'RMIA TPR@1% %', format: pct },
  { key: 'rmiaAuc', title: 'RMIA AUC', format: num(3) },
  { key: 'l2', title: 'L2 to retrain', format: num(3) },
  { key: 'cosine', title: 'cos to retrain', format: num(3) },
  { key: 'fidelity', title: 'fidelity', format: num(2) },
  { key: 'clientSampleEpochs', title: 'sample-epochs', format: int },
  { key: 'speedupSampleEpochs', title: 'speed-up (work)', format: speed },
  { key: 'workVsFullHistory', title: 'work vs full history', format: num(2) },
  { key: 'wallTimeMs', title: 'wall ms', format: int },
  { key: 'speedupWall', title: 'speed-up (wall)', format: speed },
];

/** What each column means, written under its table in report.md (a table whose columns need a paper is no report). */
const ROUND_NOTES = [
  '- **round**: the training round (1-based); **test acc %** and **test loss**: the global model after the round, on the held-out test set.',
  "- **train loss**: the clients' mean loss during their local training in the round (example-weighted).",
  "- **clients**: participants whose update the round aggregated; **missing**: selected clients without an accepted update; **ms**: the round's wall time.",
];

function unlearningNotes(miaNoSignal: boolean, noiseFloor: boolean): string[] {
  return [
    "- **row**: the unlearning method (`+N rounds`: followed by N ordinary training rounds); **original**: the trained model before any unlearning. Every method starts from a copy of the same trained state.",
    '- **test acc %**: accuracy on the held-out test set; **vs retrain**: its difference from the exact retrain, in points.',
    "- **forgotten acc %**: accuracy on the forgotten clients' own (clean) training data. Retraining without them sets the level to aim at: their data then counts as unseen.",
    '- **backdoor ASR %**: share of triggered test images (true class other than the target) classified as the backdoor target: the forgotten client\'s backdoor. Near retrain\'s level means it is gone (with `--backdoor`).',
    `- **MIA AUC**: a loss-threshold membership inference of the forgotten clients' data against held-out examples (half of the held-out set; threshold fitted on the original model); 0.5 means members cannot be told from non-members.${miaNoSignal ? ' **In this run the original model scores no better than the retrain (or, without a retrain, about 0.5): the attack finds no membership signal even before unlearning (the model barely overfits), so this column says nothing about forgetting here.**' : ''}`,
    "- **RMIA TPR@0.1% %** and **RMIA TPR@1% %**: the per-example witness (RMIA, Zarifzadeh et al. ICML 2024, offline, against the reference models listed below): share of the forgotten clients' examples flagged as members at a threshold that flags 0.1 % / 1 % of held-out non-members; **RMIA AUC**: its threshold-free AUC. Retrain's value is the target; the score quantiles are in report.json (`witness`).",
    "- **L2 to retrain**: Euclidean distance between this model's weights and the retrained model's; **cos to retrain**: cosine between the two models' displacements from the initial model (1 = the same direction).",
    `- **fidelity**: L2 to retrain divided by the noise floor, the L2 between two exact retrains with different shuffle seeds; at or below 1 the model is as close to retrain as retraining is to itself.${noiseFloor ? '' : ' Empty: this run had no `--noise-floor`.'}`,
    "- **sample-epochs**: examples the clients processed for the job (an epoch over n examples counts n); **speed-up (work)**: retrain's sample-epochs over this row's.",
    "- **work vs full history** (with `--forget-join-round`): this row's sample-epochs as a fraction of the same method replaying the whole history from the initial model instead of from t0, the first round a forgotten client took part in.",
    "- **wall ms**: the job's wall time; **speed-up (wall)**: retrain's wall time over this row's.",
  ];
}

function witnessCells(f: ModelFigures): Record<string, unknown> {
  return { miaAuc: f.mia?.auc, rmiaTpr0_1: f.witness?.tprAt0_1, rmiaTpr1: f.witness?.tprAt1, rmiaAuc: f.witness?.auc };
}

/** One line per witness: whether it separates the original from the retrain in this run, and by how much. */
function signalLines(report: SimReport): string[] {
  return report.signals.map((s) => `- ${s.name}: ${s.carriesSignal ? '**carries signal**' : 'no signal'} (original − retrain ${s.separation.toFixed(3)} against ${s.noise.toFixed(3)}, ${s.basis})`);
}

/** Each row's member-score quantiles: a witness's mean hides the few examples a model memorised. */
function scoreSpreadLines(report: SimReport): string[] {
  const rows = [{ label: 'original', w: report.original?.witness }, ...report.unlearning.map((r) => ({ label: rowLabel(r), w: r.witness }))];
  return rows.flatMap(({ label, w }) => (w ? [`- ${label}: members ${w.memberScoreQuantiles.map((q) => q.toFixed(3)).join(' / ')}; non-members' median ${w.nonMemberScoreQuantiles[2]!.toFixed(3)}`] : []));
}

/** Which reference models each row's RMIA used, grouped. */
function referenceLines(report: SimReport): string[] {
  const rows = [{ label: 'original', refs: report.original?.witness?.references }, ...report.unlearning.map((r) => ({ label: rowLabel(r), refs: r.witness?.references }))];
  const groups = new Map<string, string[]>();
  for (const r of rows) if (r.refs) groups.set(r.refs.join(' + '), [...(groups.get(r.refs.join(' + ')) ?? []), r.label]);
  return [...groups].map(([refs, labels]) => `- ${labels.join(', ')}: ${refs}`);
}

/** The original model's membership attack cannot tell members from non-members: AUC within this of 0.5. */
const MIA_NO_SIGNAL = 0.05;

export function rowLabel(r: { method: string; tuneRounds: number; fullHistory?: boolean; t0?: number | null; roundsKeptExact?: number; sifu?: { rollbackRound: number; sigma: number } }): string {
  const from = r.sifu
    ? ` (rolled back to round ${r.sifu.rollbackRound}, ${r.sifu.sigma > 0 ? `noise sigma ${r.sifu.sigma}` : 'no noise needed'})`
    : r.fullHistory
      ? ' (full history)'
      : r.t0 && r.roundsKeptExact
        ? ` (from t0 = ${r.t0})`
        : '';
  return (r.tuneRounds > 0 ? `${r.method} +${r.tuneRounds} round${r.tuneRounds === 1 ? '' : 's'}` : r.method) + from;
}

/** Where the training phase's time went, in one sentence. */
function efficiencyLine(r: SimReport): string {
  const e = r.efficiency;
  const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  return (
    `training phase ${s(r.trainingWallTimeMs)}: local training ${(r.trainingShare * 100).toFixed(0)} % of ${e.threads} threads' time ` +
    `(per thread ${e.perThreadTrainingMs.map(s).join(', ')}); rounds ${s(e.roundsMs)}, evaluation after each round ${s(e.evaluationMs)}, ` +
    `connecting ${s(e.connectMs)}`
  );
}

/** report.json, the plots, a markdown summary, and the tables on the terminal. */
export async function writeReport(dir: string, report: SimReport, progress: Progress): Promise<void> {
  writeFileSync(join(dir, 'report.json'), JSON.stringify(report, null, 2));
  const accuracySvg = await accuracyPlotSvg(
    [{ name: 'global model', points: report.rounds.map((r) => ({ round: r.round, accuracy: r.testAccuracy })) }],
    `${report.config.dataset} ${report.config.model}: test accuracy per round (${report.config.clients} clients, ${report.config.partition})`,
  );
  writeFileSync(join(dir, 'accuracy.svg'), accuracySvg);
  const md: string[] = [
    `# Simulation report`,
    '',
    `backend: ${report.backend}; wall time ${(report.wallTimeMs / 1000).toFixed(1)} s`,
    '',
    efficiencyLine(report),
    '',
    '## Training',
    '',
    markdownTable(ROUND_COLUMNS, report.rounds as unknown as Record<string, unknown>[]),
    '',
    ...ROUND_NOTES,
    '',
    `Participants of each round (seed ${report.config.seed}; the same seed and flags select the same clients):`,
    '',
    ...report.rounds.map((r) => `- round ${r.round}: ${r.participantIds.length === report.config.clients ? `all ${r.participantIds.length} clients` : r.participantIds.join(', ')}`),
    '',
  ];
  let terminal = `\nTraining (${report.config.dataset}, ${report.config.model}, ${report.config.clients} clients, backend ${report.backend})\n${renderTable(ROUND_COLUMNS, report.rounds as unknown as Record<string, unknown>[])}\nfinal test accuracy ${pct(report.finalTestAccuracy)}%\n`;
  if (report.original) {
    const retrain = report.unlearning.find((r) => r.method === 'retrain');
    const rows: Record<string, unknown>[] = [
      { row: 'original (not unlearned)', ...report.original, ...witnessCells(report.original) },
      ...report.unlearning.map((r) => ({
        row: rowLabel(r),
        ...r,
        vsRetrain: retrain ? r.testAccuracy - retrain.testAccuracy : null,
        ...witnessCells(r),
        l2: r.distanceToRetrain?.l2,
        workVsFullHistory: r.vsFullHistory?.sampleEpochs ?? null,
        cosine: r.distanceToRetrain?.cosine,
      })),
    ];
    const title = `Unlearning ${report.forgotten.join(', ')} (${report.config.methods.join(', ')}; history interval ${report.config.historyInterval}, calibration ratio ${report.config.calibrationRatio})`;
    const originalAuc = report.original.mia?.auc;
    // The run's own verdict (original against retrain, beyond sampling error) where there is a retrain; else the band.
    const verdict = report.signals.find((v) => v.name === 'loss-threshold MIA AUC');
    const miaNoSignal = verdict ? !verdict.carriesSignal : originalAuc !== undefined && Math.abs(originalAuc - 0.5) < MIA_NO_SIGNAL;
    // Where it carries no signal the column says so itself, not only a footnote.
    const columns = UNLEARNING_COLUMNS.map((c) => (c.key === 'miaAuc' && miaNoSignal ? { ...c, title: 'MIA AUC (no signal here)' } : c));
    const floorNote = report.noiseFloor
      ? `fidelity: L2 to retrain over the noise floor (L2 ${report.noiseFloor.l2BetweenRetrains.toFixed(3)} between two exact retrains with different seeds)`
      : 'fidelity: empty without --noise-floor (a second exact retrain with other seeds, whose distance to the first is the noise floor)';
    const miaNote = miaNoSignal
      ? verdict
        ? `MIA AUC: the original model scores ${originalAuc!.toFixed(3)}, not above the retrain's by more than the figure's sampling error: the loss attack finds no signal in this run, so the column says nothing about forgetting here`
        : `MIA AUC: the original model already scores ${originalAuc!.toFixed(3)}, about 0.5: the membership attack finds no signal in this regime, so the column says nothing about forgetting here`
      : null;
    const signals = signalLines(report);
    terminal += `\n${title}\n${renderTable(columns, rows)}\n${[floorNote, miaNote].filter(Boolean).join('\n')}\n${signals.join('\n').replace(/\*\*/g, '')}\ncolumns are explained in report.md\n`;
    md.push('## Unlearning', '', title, '', markdownTable(columns, rows), '', ...unlearningNotes(miaNoSignal, report.noiseFloor !== null), '');
    if (signals.length > 0) md.push('Which witness separates the original from the retrain beyond its sampling error in this run (a witness without signal cannot show forgetting here):', '', ...signals, '');
    const spread = scoreSpreadLines(report);
    if (spread.length > 0) md.push("RMIA scores' spread per row (quantiles 5, 25, 50, 75, 95 % of the members' scores; the non-members' median; a score is the share of population examples an example dominates):", '', ...spread, '');
    const refs = referenceLines(report);
    if (refs.length > 0) md.push('RMIA reference models per row:', '', ...refs, '');
    if (report.noiseFloor) md.push(`Noise floor: L2 ${report.noiseFloor.l2BetweenRetrains.toFixed(4)} between two exact retrains with different shuffle seeds.`, '');
    const svg = await unlearningPlotSvg(
      [
        { label: 'original (not unlearned)', cost: null, testAccuracy: report.original.testAccuracy, forgottenAccuracy: report.original.forgottenAccuracy, backdoorASR: report.original.backdoorASR },
        ...report.unlearning.map((r) => ({ label: rowLabel(r), cost: r.clientSampleEpochs, testAccuracy: r.testAccuracy, forgottenAccuracy: r.forgottenAccuracy, backdoorASR: r.backdoorASR })),
      ],
      { title: `Unlearning ${report.forgotten.join(', ')} (${report.config.dataset} ${report.config.model}, ${report.config.clients} clients)`, costLabel: 'client sample-epochs' },
    );
    writeFileSync(join(dir, 'unlearning.svg'), svg);
  }
  md.push(...report.notes.map((n) => `- ${n}`));
  writeFileSync(join(dir, 'report.md'), md.join('\n'));
  progress.log(terminal);
  progress.log(`report: ${join(dir, 'report.json')}, plots: ${join(dir, 'accuracy.svg')}${report.original ? `, ${join(dir, 'unlearning.svg')}` : ''}`);
}
