import assert from 'node:assert/strict';
import { test } from 'node:test';
import { newId } from './ids.js';

test('made ids are 21 letters and digits: none starts with a dash (read as an option by the CLI) and none repeats', () => {
  const ids = Array.from({ length: 20_000 }, () => newId());
  for (const id of ids) assert.match(id, /^[0-9A-Za-z]{21}$/);
  assert.equal(new Set(ids).size, ids.length);
  // Every character of the alphabet turns up first: the ids are not biased to a few leading letters.
  assert.equal(new Set(ids.map((id) => id[0])).size, 62);
});
