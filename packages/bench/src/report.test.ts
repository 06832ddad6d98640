import { test } from 'node:test';
import assert from 'node:assert/strict';
import { markdownTable, numericLeaves, rowsOf } from './report.js';

test('rows: numeric leaves flattened, detail skipped, goals judged, failed sections reported', () => {
  const rows = rowsOf({
    aggregation: { ratioToFloor: 0.9, updates: 10, detail: { ratio: 0.9 } },
    codec: { ratioToMemcpy: 0.2, nested: { a: 1, s: 'text' } },
    fleet: { error: 'not yet' },
  });
  assert.deepEqual(
    rows.map((r) => [r.key, r.goal, r.met]),
    [
      ['aggregation.ratioToFloor', '>= 0.8', 'yes'],
      ['aggregation.updates', '', ''],
      ['codec.ratioToMemcpy', '>= 0.5', 'no'],
      ['codec.nested.a', '', ''],
      ['fleet (failed)', '', 'error: not yet'],
    ],
  );
  const md = markdownTable(rows);
  assert.match(md, /^\| key \| value \| goal \| met\? \|/);
  assert.match(md, /\| codec\.ratioToMemcpy \| 0\.2 \| >= 0\.5 \| no \|/);
  assert.match(md, /\| fleet \(failed\) \|  \|  \| error: not yet \|/);
});

test('a NaN figure never meets a goal', () => {
  const [row] = rowsOf({ ingest: { ratioToRawSocket: NaN } });
  assert.equal(row!.met, 'no');
  assert.deepEqual(numericLeaves('x', { a: [1, 2] }), []);
});
