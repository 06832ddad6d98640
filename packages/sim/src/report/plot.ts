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
