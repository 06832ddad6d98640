import { test } from 'node:test';
import assert from 'node:assert/strict';
import { accuracyPlotSvg, costPlotSvg, unlearningPlotSvg } from './plot.js';

/** Well-formedness check: every opened element is closed in order (enough to catch truncated or broken output). */
function assertBalancedXml(svg: string): void {
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z][\w:-]*)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (selfClosing) continue;
    if (closing) assert.equal(stack.pop(), name, `closing </${name}>`);
    else stack.push(name!);
  }
  assert.deepEqual(stack, []);
}

const count = (s: string, needle: string): number => s.split(needle).length - 1;

/** Text content of all <text> elements. */
const texts = (svg: string): string[] => [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]!);

test('accuracy plot: an SVG with the title, axis titles and one legend entry and one line per series', async () => {
  const series = [
    { name: 'FedAvg', points: [1, 2, 3, 4].map((round) => ({ round, accuracy: 0.5 + round / 10 })) },
    { name: 'FedEraser', points: [1, 2, 3, 4].map((round) => ({ round, accuracy: 0.4 + round / 10 })) },
    { name: 'Retrain', points: [1, 2, 3].map((round) => ({ round, accuracy: 0.3 + round / 10 })) },
  ];
  const svg = await accuracyPlotSvg(series, 'Accuracy per round');
  assert.match(svg, /^<svg[\s>]/);
  assert.match(svg, /<\/svg>\s*$/);
  assertBalancedXml(svg);
  const t = texts(svg);
  for (const s of ['Accuracy per round', 'Round', 'Test accuracy', 'FedAvg', 'FedEraser', 'Retrain']) assert.ok(t.includes(s), `missing text ${s}`);
  // Vega draws one path per series for the line, one symbol per data point on it.
  assert.equal(count(svg, 'aria-roledescription="line mark"'), series.length);
  assert.equal(count(svg, 'aria-roledescription="point"'), series.reduce((n, s) => n + s.points.length, 0));
  const custom = await accuracyPlotSvg(series.slice(0, 1), 'ASR', { yTitle: 'Attack success rate' });
  assert.ok(texts(custom).includes('Attack success rate'));
});

test('cost plot: labelled points and the cost axis title', async () => {
  const rows = [
    { label: 'retrain', cost: 120000, accuracy: 0.97, kind: 'baseline' },
    { label: 'FedEraser', cost: 30000, accuracy: 0.955, kind: 'unlearning' },
    { label: 'no-op', cost: 0, accuracy: 0.98, kind: 'baseline' },
  ];
  const svg = await costPlotSvg(rows, { title: 'Accuracy vs cost', costLabel: 'client sample-epochs' });
  assert.match(svg, /^<svg[\s>]/);
  assertBalancedXml(svg);
  const t = texts(svg);
  for (const s of ['Accuracy vs cost', 'client sample-epochs', 'retrain', 'FedEraser', 'no-op', 'baseline', 'unlearning']) {
    assert.ok(t.includes(s), `missing text ${s}`);
  }
  assert.equal(count(svg, 'aria-roledescription="point"'), rows.length);
});

test('unlearning plot: the original shown, each method once in the legend, and the evidence of forgetting as bars', async () => {
  const points = [
    { label: 'original (not unlearned)', cost: null, testAccuracy: 0.911, forgottenAccuracy: 0.943, backdoorASR: 0.611 },
    { label: 'retrain', cost: 76000, testAccuracy: 0.912, forgottenAccuracy: 0.925, backdoorASR: 0.011 },
    // Lands on retrain's point: colour and shape keep both visible.
    { label: 'rollback', cost: 76000, testAccuracy: 0.912, forgottenAccuracy: 0.925, backdoorASR: 0.011 },
    { label: 'federaser', cost: 18240, testAccuracy: 0.85, forgottenAccuracy: 0.868, backdoorASR: 0.01 },
    { label: 'replay', cost: 0, testAccuracy: 0.812, forgottenAccuracy: 0.813, backdoorASR: 0.054 },
  ];
  const svg = await unlearningPlotSvg(points, { title: 'Unlearning client-000', costLabel: 'client sample-epochs' });
  assertBalancedXml(svg);
  const t = texts(svg);
  for (const s of ['Unlearning client-000', 'Test accuracy against client work', 'Evidence of forgetting', 'client sample-epochs', 'backdoor success rate', "accuracy on the forgotten clients' data"]) {
    assert.ok(t.includes(s), `missing text ${s}`);
  }
  assert.ok(t.some((s) => s.includes('original (not unlearned), 91.1 %')), 'the original model is named with its accuracy');
  // Methods are named once each in the legend and once on the bar axis; no label is drawn beside a point.
  for (const p of points.slice(1)) assert.equal(t.filter((s) => s === p.label).length, 2, p.label);
  assert.equal(t.filter((s) => s === 'original (not unlearned)').length, 1, 'the original has bars, not a point');
  assert.equal(count(svg, 'aria-roledescription="point"'), points.length - 1);
  assert.equal(count(svg, 'aria-roledescription="bar"'), points.length * 2);
  assert.equal(count(svg, 'aria-roledescription="rule mark"'), 1, "the original model's accuracy line");
});
