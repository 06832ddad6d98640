import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UploadWindow } from './upload-window.js';

test('grants in request order while the reserved bytes fit the window; a later small request never overtakes', () => {
  const w = new UploadWindow(100);
  const granted: string[] = [];
  const ask = (id: string, bytes: number) => w.request(id, bytes, () => granted.push(id));
  ask('a', 60);
  ask('b', 50); // 110 > 100: waits
  ask('c', 10); // would fit, but comes after b
  assert.deepEqual(granted, ['a']);
  assert.equal(w.grantedBytes, 60);
  assert.equal(w.waiting, 2);
  w.release('a');
  assert.deepEqual(granted, ['a', 'b', 'c']);
  assert.equal(w.grantedBytes, 60);
  assert.equal(w.waiting, 0);
});

test('one request is always granted when nothing is reserved, even above the window', () => {
  const w = new UploadWindow(100);
  const granted: string[] = [];
  w.request('huge', 500, () => granted.push('huge'));
  w.request('small', 1, () => granted.push('small'));
  assert.deepEqual(granted, ['huge'], 'alone, the large one goes; nothing joins it');
  w.release('huge');
  assert.deepEqual(granted, ['huge', 'small']);
});

test('a withdrawn request frees its place in line; releasing unknown ids changes nothing; an id asks once', () => {
  const w = new UploadWindow(100);
  const granted: string[] = [];
  w.request('a', 100, () => granted.push('a'));
  w.request('b', 100, () => granted.push('b'));
  w.request('c', 100, () => granted.push('c'));
  w.release('b'); // still waiting: withdrawn
  w.release('nobody');
  assert.equal(w.waiting, 1);
  assert.throws(() => w.request('a', 1, () => undefined), /already requested/);
  assert.throws(() => w.request('c', 1, () => undefined), /already requested/);
  w.release('a');
  assert.deepEqual(granted, ['a', 'c']);
  assert.equal(w.grantedBytes, 100);
  assert.throws(() => new UploadWindow(0), RangeError);
});
