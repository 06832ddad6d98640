export interface TableColumn {
  /** Property of each row shown in this column. */
  key: string;
  title: string;
  /** Default: right when every value in the column is a number, else left. */
  align?: 'left' | 'right';
  /** Default: {@link formatCell}. */
  format?: (v: unknown) => string;
}

type Row = Record<string, unknown>;

/** The default cell text: numbers with at most 4 decimals, nothing for null/undefined, JSON for objects. */
export function formatCell(v: unknown): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'number') return Number.isInteger(v) || !Number.isFinite(v) ? String(v) : v.toFixed(4).replace(/\.?0+$/, '');
  if (typeof v === 'string') return v;
  if (v instanceof Date) return v.toISOString();
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

interface Laid {
  titles: string[];
  cells: string[][];
  aligns: ('left' | 'right')[];
  widths: number[];
}

/** Cells are one line each; width counts code points (no East Asian wide-character handling). */
function width(s: string): number {
  return [...s].length;
}

function oneLine(s: string): string {
  return s.replace(/\r?\n/g, ' ');
}

function layOut(columns: TableColumn[], rows: Row[]): Laid {
  const titles = columns.map((c) => oneLine(c.title));
  const cells = rows.map((r) => columns.map((c) => oneLine((c.format ?? formatCell)(r[c.key]))));
  const aligns = columns.map((c) => {
    if (c.align) return c.align;
    const present = rows.map((r) => r[c.key]).filter((v) => v !== undefined && v !== null);
    return present.length > 0 && present.every((v) => typeof v === 'number' || typeof v === 'bigint') ? 'right' : 'left';
  });
  const widths = columns.map((_, i) => Math.max(width(titles[i]!), ...cells.map((row) => width(row[i]!))));
  return { titles, cells, aligns, widths };
}

function pad(s: string, w: number, align: 'left' | 'right'): string {
  const fill = ' '.repeat(w - width(s));
  return align === 'right' ? fill + s : s + fill;
}

/**
 * A box-drawn text table for terminals and logs. It writes no colour or other escape codes, so its output is the
 * same whether or not stdout is a TTY.
 */
export function renderTable(columns: TableColumn[], rows: Row[]): string {
  const { titles, cells, aligns, widths } = layOut(columns, rows);
  const rule = (l: string, m: string, r: string): string => l + widths.map((w) => '─'.repeat(w + 2)).join(m) + r;
  const line = (row: string[]): string => '│' + row.map((s, i) => ` ${pad(s, widths[i]!, aligns[i]!)} `).join('│') + '│';
  return [
    rule('┌', '┬', '┐'),
    line(titles),
    rule('├', '┼', '┤'),
    ...cells.map((row) => line(row)),
    rule('└', '┴', '┘'),
  ].join('\n');
}

/** The same table as GitHub-flavoured markdown (pipes in cells escaped, columns padded for readable source). */
export function markdownTable(columns: TableColumn[], rows: Row[]): string {
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  const laid = layOut(columns, rows);
  const titles = laid.titles.map(esc);
  const cells = laid.cells.map((row) => row.map(esc));
  const widths = laid.widths.map((_, i) => Math.max(3, width(titles[i]!), ...cells.map((row) => width(row[i]!))));
  const line = (row: string[]): string => '| ' + row.map((s, i) => pad(s, widths[i]!, laid.aligns[i]!)).join(' | ') + ' |';
  const sep = '| ' + widths.map((w, i) => (laid.aligns[i] === 'right' ? '-'.repeat(w - 1) + ':' : ':' + '-'.repeat(w - 1))).join(' | ') + ' |';
  return [line(titles), sep, ...cells.map((row) => line(row))].join('\n');
}
