import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatCell, markdownTable, renderTable, type TableColumn } from './table.js';

const columns: TableColumn[] = [
  { key: 'method', title: 'Method' },
  { key: 'acc', title: 'Accuracy' },
  { key: 'cost', title: 'Cost', format: (v) => `${(v as number) / 1000}k` },
  { key: 'note', title: 'Note', align: 'right' },
];
const rows = [
  { method: 'retrain', acc: 0.97123456, cost: 120000, note: 'slow' },
  { method: 'FedEraser', acc: 0.955, cost: 30000 },
  { method: 'a|b', acc: 1, cost: 0, note: 'x' },
];

test('renderTable: every line equally wide, column borders line up, numbers right-aligned', () => {
  const out = renderTable(columns, rows);
  const lines = out.split('\n');
  assert.equal(lines.length, 4 + rows.length); // top, header, rule, rows, bottom
  const width = [...lines[0]!].length;
  for (const l of lines) assert.equal([...l].length, width, l);
  // The positions of the vertical borders are identical on the header and data lines.
  const borders = (l: string): number[] => [...l].flatMap((ch, i) => ('│┬┼┴┌┐├┤└┘'.includes(ch) ? [i] : []));
  const expected = borders(lines[0]!);
  for (const l of lines) assert.deepEqual(borders(l), expected, l);
  assert.ok(!/\u001b\[/.test(out), 'no escape codes');
  // Accuracy (all numbers) is right-aligned: cell text ends right before the trailing space of its column.
  const cells = (l: string): string[] => l.split('│').slice(1, -1);
  const accCells = lines.slice(3, 3 + rows.length).map((l) => cells(l)[1]!);
  assert.deepEqual(accCells.map((c) => c.trimStart().trimEnd()), ['0.9712', '0.955', '1']);
  for (const c of accCells) assert.ok(c.endsWith(' ') && !c.endsWith('  '), `right-aligned: '${c}'`);
  // Method (strings) is left-aligned, the custom formatter is used, a missing value is blank.
  const first = cells(lines[3]!);
  assert.ok(first[0]!.startsWith(' retrain '));
  assert.equal(first[2]!.trim(), '120k');
  assert.equal(cells(lines[4]!)[3]!.trim(), '');
  assert.ok(cells(lines[5]!)[3]!.endsWith('x '), 'explicit right alignment');
});

test('markdownTable: header, alignment row and escaped pipes', () => {
  const md = markdownTable(columns, rows);
  const lines = md.split('\n');
  assert.equal(lines.length, 2 + rows.length);
  const split = (l: string): string[] => l.split(/(?<!\\)\|/).slice(1, -1).map((c) => c.trim());
  assert.deepEqual(split(lines[0]!), ['Method', 'Accuracy', 'Cost', 'Note']);
  const align = split(lines[1]!);
  assert.match(align[0]!, /^:-+$/);
  assert.match(align[1]!, /^-+:$/);
  assert.match(align[3]!, /^-+:$/);
  assert.deepEqual(split(lines[4]!), ['a\\|b', '1', '0k', 'x']);
  for (const l of lines) assert.equal(split(l).length, 4);
});

test('formatCell: numbers to at most 4 decimals, blanks for missing values', () => {
  assert.equal(formatCell(0.123456), '0.1235');
  assert.equal(formatCell(0.5), '0.5');
  assert.equal(formatCell(42), '42');
  assert.equal(formatCell(undefined), '');
  assert.equal(formatCell(null), '');
  assert.equal(formatCell('s'), 's');
  assert.equal(formatCell({ a: 1 }), '{"a":1}');
});
