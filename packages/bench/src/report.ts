/** Turns results into table rows and markdown. Pure: the CLI does the I/O. */

/** A target: a minimum (ratios to a floor) or a maximum (memory). */
export type Goal = { atLeast: number } | { atMost: number };

/** The targets, keyed by dotted path into results.json. */
export const GOALS: Readonly<Record<string, Goal>> = {
  'aggregation.ratioToFloor': { atLeast: 0.8 },
  'codec.ratioToMemcpy': { atLeast: 0.5 },
  'ingest.ratioToRawSocket': { atLeast: 0.7 },
  // "under 1 GB with a 1M-parameter model", measured on the heaviest history: every update kept in fp32.
  'fleet.model1M.fp32.coordinatorPeakRssMb': { atMost: 1024 },
  // Local training's FLOP rate against the same backend's 1024x1024 matmul (issue 16).
  'training.cnn.ratioToMatmulFloor': { atLeast: 0.6 },
};

export function goalText(g: Goal): string {
  return 'atLeast' in g ? `>= ${g.atLeast}` : `<= ${g.atMost}`;
}

export function goalMet(g: Goal, value: number): boolean {
  return Number.isFinite(value) && ('atLeast' in g ? value >= g.atLeast : value <= g.atMost);
}

export interface Row {
  key: string;
  value: number;
  goal: string;
  met: string;
}

/** Every numeric leaf of a section's result (except its `detail` breakdown), as dotted keys. */
export function numericLeaves(prefix: string, value: unknown, out: { key: string; value: number }[] = []): { key: string; value: number }[] {
  if (typeof value === 'number') out.push({ key: prefix, value });
  else if (value && typeof value === 'object' && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) if (k !== 'detail') numericLeaves(`${prefix}.${k}`, v, out);
  }
  return out;
}

export function rowsOf(sections: Record<string, unknown>): Row[] {
  const rows: Row[] = [];
  for (const [name, result] of Object.entries(sections)) {
    if (result && typeof result === 'object' && 'error' in result) {
      rows.push({ key: `${name} (failed)`, value: NaN, goal: '', met: `error: ${String((result as { error: unknown }).error)}` });
      continue;
    }
    for (const leaf of numericLeaves(name, result)) {
      const g = GOALS[leaf.key];
      rows.push({
        key: leaf.key,
        value: leaf.value,
        goal: g ? goalText(g) : '',
        met: g ? (goalMet(g, leaf.value) ? 'yes' : 'no') : '',
      });
    }
  }
  return rows;
}

export function markdownTable(rows: readonly Row[]): string {
  const lines = ['| key | value | goal | met? |', '| --- | ---: | --- | --- |'];
  for (const r of rows) lines.push(`| ${r.key} | ${Number.isNaN(r.value) ? '' : String(r.value)} | ${r.goal} | ${r.met.replace(/\|/g, '\\|').replace(/\n/g, ' ')} |`);
  return lines.join('\n');
}
