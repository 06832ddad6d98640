import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { witnessValues, type ModelFigures } from '../evaluate.js';
import type { Progress } from '../progress.js';
import type { SimReport } from '../run.js';
import { meanSd, signalOverSeeds, type SignalVerdict } from '../verify/signal.js';
import { seedsPlotSvg } from './plot.js';
import { markdownTable, renderTable, type TableColumn } from './table.js';
import { rowLabel } from './write.js';

/** A figure over seeds: its mean, sample standard deviation and the per-seed values (seed order). */
export interface Spread {
  mean: number;
  sd: number;
  values: number[];
}

/** The figures one row of the unlearning table has over seeds (null where a run has no such figure). */
export interface SeedRow {
  row: string;
  testAccuracy: Spread;
  vsRetrain: Spread | null;
  forgottenAccuracy: Spread | null;
  backdoorASR: Spread | null;
  lossMiaAuc: Spread | null;
  rmiaTprAt0_1: Spread | null;
  rmiaTprAt1: Spread | null;
  rmiaAuc: Spread | null;
  l2ToRetrain: Spread | null;
  clientSampleEpochs: Spread | null;
  speedupSampleEpochs: Spread | null;
  wallTimeMs: Spread | null;
  /** The witness's references for this row (the same in every seed). */
  witnessReferences: string[];
}

export interface SeedsReport {
  seeds: number[];
  /** The config of the first seed's run (the others differ only in seed and out). */
  config: SimReport['config'];
  rows: SeedRow[];
  /** Which witness separates original from retrain beyond the seeds' spread (verify/signal.ts). */
  signals: SignalVerdict[];
  /**
   * Rows whose mean test accuracy is within 1 point of the retrain's at 10x or more fewer client sample-epochs (mean
   * speed-up): the "retrain-level results cheaply" candidates. Empty when no row gets there.
   */
  cheapAndClose: string[];
}

function spread(values: (number | null | undefined)[]): Spread | null {
  if (values.some((v) => v === null || v === undefined || !Number.isFinite(v))) return null;
  const v = values as number[];
  return { ...meanSd(v), values: v };
}

/**
 * Per-seed reports of the same scenario → each row's mean and spread. Rows are matched by label (method, tuning
 * rounds, full history); a row missing from some seed's run is an error, since its mean would cover other seeds.
 * @throws RangeError without reports or when the seeds' runs do not have the same rows.
 */
export function aggregateSeeds(reports: SimReport[]): SeedsReport {
  if (reports.length === 0) throw new RangeError('no seed reports');
  const labels = (r: SimReport) => r.unlearning.map(rowLabel);
  const first = labels(reports[0]!);
  for (const r of reports) {
    if (!r.original) throw new RangeError(`seed ${r.config.seed}: the run forgot nobody`);
    if (labels(r).join('\n') !== first.join('\n')) throw new RangeError(`seed ${r.config.seed} has rows ${labels(r).join(', ')}; seed ${reports[0]!.config.seed} has ${first.join(', ')}`);
  }
  const retrainOf = (r: SimReport) => r.unlearning.find((u) => u.method === 'retrain') ?? null;
  const figureRow = (row: string, get: (r: SimReport) => ModelFigures & Partial<SimReport['unlearning'][number]>, isOriginal: boolean): SeedRow => {
    const fs = reports.map(get);
    const retrains = reports.map(retrainOf);
    return {
      row,
      testAccuracy: spread(fs.map((f) => f.testAccuracy))!,
      vsRetrain: spread(fs.map((f, i) => (retrains[i] ? f.testAccuracy - retrains[i]!.testAccuracy : null))),
      forgottenAccuracy: spread(fs.map((f) => f.forgottenAccuracy)),
      backdoorASR: spread(fs.map((f) => f.backdoorASR)),
      lossMiaAuc: spread(fs.map((f) => f.mia?.auc)),
      rmiaTprAt0_1: spread(fs.map((f) => f.witness?.tprAt0_1)),
      rmiaTprAt1: spread(fs.map((f) => f.witness?.tprAt1)),
      rmiaAuc: spread(fs.map((f) => f.witness?.auc)),
      l2ToRetrain: isOriginal ? spread(reports.map((r) => r.originalDistanceToRetrain?.l2)) : spread(fs.map((f) => f.distanceToRetrain?.l2)),
      clientSampleEpochs: isOriginal ? null : spread(fs.map((f) => f.clientSampleEpochs)),
      speedupSampleEpochs: isOriginal ? null : spread(fs.map((f) => f.speedupSampleEpochs)),
      wallTimeMs: isOriginal ? null : spread(fs.map((f) => f.wallTimeMs)),
      witnessReferences: fs[0]!.witness?.references ?? [],
    };
  };
  const rows: SeedRow[] = [figureRow('original (not unlearned)', (r) => r.original!, true), ...first.map((label, i) => figureRow(label, (r) => r.unlearning[i]!, false))];

  const signals: SignalVerdict[] = [];
  if (reports.length >= 2 && reports.every((r) => retrainOf(r))) {
    const o = reports.map((r) => witnessValues(r.original!));
    const t = reports.map((r) => witnessValues(retrainOf(r)!));
    o[0]!.forEach((w, k) => {
      const ov = o.map((x) => x[k]!.value);
      const tv = t.map((x) => x[k]!.value);
      if (ov.some((v) => v === null) || tv.some((v) => v === null)) return;
      signals.push(signalOverSeeds(w.name, ov as number[], tv as number[]));
    });
  }
  const cheapAndClose = rows.filter((r) => r.vsRetrain && r.speedupSampleEpochs && Math.abs(r.vsRetrain.mean) <= 0.01 && r.speedupSampleEpochs.mean >= 10).map((r) => r.row);
  return { seeds: reports.map((r) => r.config.seed), config: reports[0]!.config, rows, signals, cheapAndClose };
}

const fmt = (scale: number, digits: number, signed = false) => (v: unknown) => {
  const s = v as Spread | null;
  if (!s) return '';
  const m = s.mean * scale;
  return `${signed && m >= 0 ? '+' : ''}${m.toFixed(digits)} ± ${(s.sd * scale).toFixed(digits)}`;
};

const COLUMNS: TableColumn[] = [
  { key: 'row', title: 'row', align: 'left' },
  { key: 'testAccuracy', title: 'test acc %', format: fmt(100, 1), align: 'right' },
  { key: 'vsRetrain', title: 'vs retrain', format: fmt(100, 1, true), align: 'right' },
  { key: 'forgottenAccuracy', title: 'forgotten acc %', format: fmt(100, 1), align: 'right' },
  { key: 'backdoorASR', title: 'backdoor ASR %', format: fmt(100, 1), align: 'right' },
  { key: 'lossMiaAuc', title: 'loss MIA AUC', format: fmt(1, 3), align: 'right' },
  { key: 'rmiaTprAt0_1', title: 'RMIA TPR@0.1% %', format: fmt(100, 1), align: 'right' },
  { key: 'rmiaTprAt1', title: 'RMIA TPR@1% %', format: fmt(100, 1), align: 'right' },
  { key: 'rmiaAuc', title: 'RMIA AUC', format: fmt(1, 3), align: 'right' },
  { key: 'l2ToRetrain', title: 'L2 to retrain', format: fmt(1, 2), align: 'right' },
  { key: 'speedupSampleEpochs', title: 'speed-up (work)', format: fmt(1, 1), align: 'right' },
];

/** seeds.json, seeds.md (the table with the signal verdicts) and seeds.svg; the table on the terminal. */
export async function writeSeedsReport(dir: string, agg: SeedsReport, progress: Progress): Promise<void> {
  writeFileSync(join(dir, 'seeds.json'), JSON.stringify(agg, null, 2));
  const rows = agg.rows as unknown as Record<string, unknown>[];
  const verdicts = agg.signals.map(
    (s) => `- ${s.name}: ${s.carriesSignal ? '**carries signal**' : 'no signal'} (original − retrain ${s.separation.toFixed(3)} against ${s.noise.toFixed(3)}, ${s.basis})`,
  );
  const title = `${agg.config.dataset} ${agg.config.model}, ${agg.config.partition}, ${agg.config.clients} clients, ${agg.config.rounds} rounds x ${agg.config.localEpochs} local epochs, forget ${agg.config.forget.join(',')}; seeds ${agg.seeds.join(', ')} (mean ± sample SD)`;
  const refs = [...new Set(agg.rows.map((r) => r.witnessReferences.join(' + ')))].map((r) => `- ${agg.rows.filter((x) => x.witnessReferences.join(' + ') === r).map((x) => x.row).join(', ')}: ${r}`);
  const cheap = agg.cheapAndClose.length > 0 ? `Within 1 point of retraining at 10x or more fewer client sample-epochs: ${agg.cheapAndClose.join(', ')}.` : 'No row is within 1 point of retraining at 10x or more fewer client sample-epochs.';
  const md = [
    `# ${title}`,
    '',
    markdownTable(COLUMNS, rows),
    '',
    'Which witness separates the original from the retrain beyond the seeds\' spread:',
    '',
    ...verdicts,
    '',
    'RMIA references per row:',
    '',
    ...refs,
    '',
    cheap,
    '',
  ];
  writeFileSync(join(dir, 'seeds.md'), md.join('\n'));
  writeFileSync(join(dir, 'seeds.svg'), await seedsPlotSvg(agg.rows, { title }));
  progress.log(`\n${title}\n${renderTable(COLUMNS, rows)}\n${verdicts.join('\n').replace(/\*\*/g, '')}\n${cheap}\nreport: ${join(dir, 'seeds.json')}, ${join(dir, 'seeds.md')}, plot: ${join(dir, 'seeds.svg')}`);
}
