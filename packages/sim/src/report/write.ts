import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Progress } from '../progress.js';
import type { SimReport } from '../run.js';
import { accuracyPlotSvg, costPlotSvg } from './plot.js';
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
  { key: 'l2', title: 'L2 to retrain', format: num(3) },
  { key: 'cosine', title: 'cos to retrain', format: num(3) },
  { key: 'fidelity', title: 'fidelity', format: num(2) },
  { key: 'clientSampleEpochs', title: 'sample-epochs', format: int },
  { key: 'speedupSampleEpochs', title: 'speed-up (work)', format: speed },
  { key: 'wallTimeMs', title: 'wall ms', format: int },
  { key: 'speedupWall', title: 'speed-up (wall)', format: speed },
];

function rowLabel(r: { method: string; tuneRounds: number }): string {
  return r.tuneRounds > 0 ? `${r.method} +${r.tuneRounds} rounds` : r.method;
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
  const md: string[] = [`# Simulation report`, '', `backend: ${report.backend}; wall time ${(report.wallTimeMs / 1000).toFixed(1)} s`, '', efficiencyLine(report), '', '## Training', '', markdownTable(ROUND_COLUMNS, report.rounds as unknown as Record<string, unknown>[]), ''];
  let terminal = `\nTraining (${report.config.dataset}, ${report.config.model}, ${report.config.clients} clients, backend ${report.backend})\n${renderTable(ROUND_COLUMNS, report.rounds as unknown as Record<string, unknown>[])}\nfinal test accuracy ${pct(report.finalTestAccuracy)}%\n`;
  if (report.original) {
    const retrain = report.unlearning.find((r) => r.method === 'retrain');
    const rows: Record<string, unknown>[] = [
      { row: 'original (not unlearned)', ...report.original, miaAuc: report.original.mia?.auc },
      ...report.unlearning.map((r) => ({
        row: rowLabel(r),
        ...r,
        vsRetrain: retrain ? r.testAccuracy - retrain.testAccuracy : null,
        miaAuc: r.mia?.auc,
        l2: r.distanceToRetrain?.l2,
        cosine: r.distanceToRetrain?.cosine,
      })),
    ];
    const title = `Unlearning ${report.forgotten.join(', ')} (${report.config.methods.join(', ')}; history interval ${report.config.historyInterval}, calibration ratio ${report.config.calibrationRatio})`;
    terminal += `\n${title}\n${renderTable(UNLEARNING_COLUMNS, rows)}\n`;
    md.push('## Unlearning', '', title, '', markdownTable(UNLEARNING_COLUMNS, rows), '');
    const costSvg = await costPlotSvg(
      report.unlearning.map((r) => ({ label: rowLabel(r), cost: r.clientSampleEpochs, accuracy: r.testAccuracy, kind: r.method })),
      { title: 'Unlearning: test accuracy against client work', costLabel: 'client sample-epochs' },
    );
    writeFileSync(join(dir, 'unlearning.svg'), costSvg);
  }
  md.push(...report.notes.map((n) => `- ${n}`));
  writeFileSync(join(dir, 'report.md'), md.join('\n'));
  progress.log(terminal);
  progress.log(`report: ${join(dir, 'report.json')}, plots: ${join(dir, 'accuracy.svg')}${report.original ? `, ${join(dir, 'unlearning.svg')}` : ''}`);
}
