import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

export interface AccuracySeries {
  name: string;
  /** Accuracy as a fraction in [0, 1] (the axis shows percent). */
  points: { round: number; accuracy: number }[];
}

export interface CostPoint {
  /** Text written next to the point, e.g. 'FedEraser' or 'retrain'. */
  label: string;
  /** Work spent, e.g. client sample-epochs. */
  cost: number;
  /** Fraction in [0, 1]. */
  accuracy: number;
  /** Group the point belongs to (colour and shape), e.g. 'unlearning' or 'baseline'. */
  kind: string;
}

const WIDTH = 480;
const HEIGHT = 300;

/** vega-lite → vega → SVG, headless: the 'none' renderer needs no canvas, text widths are estimated. */
async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Test accuracy per round, one line per series (legend in the given series order). */
export async function accuracyPlotSvg(
  series: AccuracySeries[],
  title: string,
  opts: { xTitle?: string; yTitle?: string } = {},
): Promise<string> {
  const values = series.flatMap((s) => s.points.map((p) => ({ series: s.name, round: p.round, accuracy: p.accuracy })));
  return renderSvg({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    width: WIDTH,
    height: HEIGHT,
    background: 'white',
    data: { values },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'round', type: 'quantitative', title: opts.xTitle ?? 'Round', axis: { format: 'd', tickMinStep: 1 } },
      // Accuracies of interest often sit in a narrow band near the top; a zero-based axis would flatten them.
      y: { field: 'accuracy', type: 'quantitative', title: opts.yTitle ?? 'Test accuracy', axis: { format: '.0%' }, scale: { zero: false } },
      color: { field: 'series', type: 'nominal', title: null, scale: { domain: series.map((s) => s.name) } },
    },
  });
}

/** Accuracy against cost, one labelled point per row: the "same accuracy for a fraction of the work" picture. */
export async function costPlotSvg(rows: CostPoint[], opts: { title: string; costLabel: string; yTitle?: string }): Promise<string> {
  const kinds = [...new Set(rows.map((r) => r.kind))];
  const values = rows.map((r) => ({ label: r.label, cost: r.cost, accuracy: r.accuracy, kind: r.kind }));
  const x = { field: 'cost', type: 'quantitative', title: opts.costLabel, scale: { zero: true } } as const;
  const y = { field: 'accuracy', type: 'quantitative', title: opts.yTitle ?? 'Test accuracy', axis: { format: '.0%' }, scale: { zero: false } } as const;
  return renderSvg({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: opts.title,
    width: WIDTH,
    height: HEIGHT,
    background: 'white',
    data: { values },
    layer: [
      {
        mark: { type: 'point', filled: true, size: 90 },
        encoding: {
          x,
          y,
          color: { field: 'kind', type: 'nominal', title: null, scale: { domain: kinds } },
          shape: { field: 'kind', type: 'nominal', title: null, scale: { domain: kinds } },
        },
      },
      {
        mark: { type: 'text', align: 'left', dx: 8, dy: -6, fontSize: 11 },
        encoding: { x, y, text: { field: 'label', type: 'nominal' } },
      },
    ],
  });
}

/** One row of the unlearning picture: a method's model after unlearning, or the original (cost null). */
export interface UnlearningPoint {
  label: string;
  /** Client sample-epochs the job cost; null for the original model, which no job made. */
  cost: number | null;
  /** Fractions in [0, 1]; null where not measured (no backdoor, nothing forgotten). */
  testAccuracy: number;
  forgottenAccuracy: number | null;
  backdoorASR: number | null;
}

/**
 * The unlearning picture, two panels stacked. Top: test accuracy against client work, one point per method (colour
 * and shape in the legend, no text beside the points, so labels cannot overlap), the original model's accuracy as a
 * dashed line. Bottom: the evidence of forgetting, for the original and every method: the backdoor's success rate and
 * the accuracy on the forgotten clients' data, as horizontal bars (retrain's bars are what "forgotten" looks like).
 */
export async function unlearningPlotSvg(points: UnlearningPoint[], opts: { title: string; costLabel: string }): Promise<string> {
  const methods = points.filter((p) => p.cost !== null);
  const original = points.find((p) => p.cost === null);
  const order = points.map((p) => p.label);
  const methodOrder = methods.map((p) => p.label);
  const evidence = points.flatMap((p) => [
    ...(p.backdoorASR !== null ? [{ label: p.label, measure: 'backdoor success rate', value: p.backdoorASR }] : []),
    ...(p.forgottenAccuracy !== null ? [{ label: p.label, measure: "accuracy on the forgotten clients' data", value: p.forgottenAccuracy }] : []),
  ]);
  const x = { field: 'cost', type: 'quantitative', title: opts.costLabel, scale: { zero: true } } as const;
  const y = { field: 'testAccuracy', type: 'quantitative', title: 'Test accuracy', axis: { format: '.0%' }, scale: { zero: false } } as const;
  const pctText = (v: number): string => `${(v * 100).toFixed(1)} %`;
  const top = {
    title: {
      text: 'Test accuracy against client work',
      ...(original ? { subtitle: `dashed line: the ${original.label}, ${pctText(original.testAccuracy)}` } : {}),
    },
    width: WIDTH,
    height: HEIGHT * 0.8,
    layer: [
      ...(original
        ? [{ data: { values: [{ testAccuracy: original.testAccuracy }] }, mark: { type: 'rule', color: '#777', strokeWidth: 1.5, strokeDash: [6, 4] }, encoding: { y } }]
        : []),
      {
        data: { values: methods },
        mark: { type: 'point', filled: false, strokeWidth: 2, size: 110 },
        encoding: {
          x,
          y,
          // Colour and shape both: methods that land on the same point (retrain and rollback often do) stay visible.
          color: { field: 'label', type: 'nominal', title: 'method', scale: { domain: methodOrder } },
          shape: { field: 'label', type: 'nominal', title: 'method', scale: { domain: methodOrder } },
        },
      },
    ],
  };
  const measures = ['backdoor success rate', "accuracy on the forgotten clients' data"].filter((m) => evidence.some((e) => e.measure === m));
  const bottom = {
    title: { text: 'Evidence of forgetting', subtitle: "retrain's bars are the target: what a model that never saw the forgotten clients scores" },
    width: WIDTH,
    data: { values: evidence },
    mark: { type: 'bar' },
    encoding: {
      y: { field: 'label', type: 'nominal', title: null, sort: order, axis: { labelLimit: 400 } },
      yOffset: { field: 'measure', type: 'nominal', sort: measures },
      x: { field: 'value', type: 'quantitative', title: null, axis: { format: '.0%' }, scale: { domain: [0, 1] } },
      color: {
        field: 'measure',
        type: 'nominal',
        title: null,
        scale: { domain: measures, range: measures.map((m) => (m.startsWith('backdoor') ? '#d62728' : '#1f77b4')) },
        legend: { orient: 'top', direction: 'horizontal', labelLimit: 400 },
      },
    },
  };
  return renderSvg({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: opts.title,
    background: 'white',
    vconcat: [top, bottom],
    resolve: { scale: { color: 'independent', shape: 'independent' }, legend: { color: 'independent', shape: 'independent' } },
    spacing: 30,
    config: { legend: { labelLimit: 400 } },
  } as unknown as TopLevelSpec);
}

/** One row of the seeds picture: means and sample SDs over seeds (fractions in [0, 1]; cost in sample-epochs). */
export interface SeedPoint {
  row: string;
  testAccuracy: { mean: number; sd: number };
  clientSampleEpochs: { mean: number; sd: number } | null;
  rmiaTprAt1: { mean: number; sd: number } | null;
}

/**
 * The seeds picture, two panels: test accuracy (mean ± SD error bars) against client work, one point per method; and
 * the per-example witness (RMIA TPR at 1 % FPR, mean ± SD) for the original and every method, retrain's being the target.
 */
export async function seedsPlotSvg(points: SeedPoint[], opts: { title: string }): Promise<string> {
  const order = points.map((p) => p.row);
  const work = points
    .filter((p) => p.clientSampleEpochs)
    .map((p) => ({ row: p.row, cost: p.clientSampleEpochs!.mean, acc: p.testAccuracy.mean, lo: p.testAccuracy.mean - p.testAccuracy.sd, hi: p.testAccuracy.mean + p.testAccuracy.sd }));
  const tpr = points.filter((p) => p.rmiaTprAt1).map((p) => ({ row: p.row, v: p.rmiaTprAt1!.mean, lo: Math.max(0, p.rmiaTprAt1!.mean - p.rmiaTprAt1!.sd), hi: p.rmiaTprAt1!.mean + p.rmiaTprAt1!.sd }));
  const x = { field: 'cost', type: 'quantitative', title: 'client sample-epochs (mean)', scale: { zero: true } } as const;
  const top = {
    title: 'Test accuracy against client work (mean ± SD over seeds)',
    width: WIDTH,
    height: HEIGHT * 0.8,
    data: { values: work },
    layer: [
      { mark: { type: 'rule' }, encoding: { x, y: { field: 'lo', type: 'quantitative', scale: { zero: false }, title: 'Test accuracy', axis: { format: '.0%' } }, y2: { field: 'hi' }, color: { field: 'row', type: 'nominal', title: 'method', scale: { domain: order } } } },
      { mark: { type: 'point', filled: false, strokeWidth: 2, size: 110 }, encoding: { x, y: { field: 'acc', type: 'quantitative' }, color: { field: 'row', type: 'nominal', title: 'method', scale: { domain: order } }, shape: { field: 'row', type: 'nominal', title: 'method', scale: { domain: order } } } },
    ],
  };
  const bottom = {
    title: { text: 'Per-example witness: RMIA TPR at 1 % FPR (mean ± SD)', subtitle: "retrain's bar is the target; the original's is what memorisation looks like" },
    width: WIDTH,
    data: { values: tpr },
    layer: [
      { mark: { type: 'bar', color: '#1f77b4' }, encoding: { y: { field: 'row', type: 'nominal', title: null, sort: order, axis: { labelLimit: 400 } }, x: { field: 'v', type: 'quantitative', title: null, axis: { format: '.0%' } } } },
      { mark: { type: 'rule', color: 'black' }, encoding: { y: { field: 'row', type: 'nominal', sort: order }, x: { field: 'lo', type: 'quantitative' }, x2: { field: 'hi' } } },
    ],
  };
  return renderSvg({
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: opts.title,
    background: 'white',
    vconcat: [top, bottom],
    resolve: { scale: { color: 'independent', shape: 'independent' } },
    spacing: 30,
    config: { legend: { labelLimit: 400 } },
  } as unknown as TopLevelSpec);
}
