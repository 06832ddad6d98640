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

test('tryReserve takes bytes at once only while they fit and nobody waits; exactly the window fits', () => {
  const w = new UploadWindow(100);
  assert.equal(w.tryReserve('a', 60), true);
  assert.equal(w.grantedBytes, 60);
  // 60 + 40 is exactly the window: it fits.
  assert.equal(w.tryReserve('b', 40), true);
  assert.equal(w.grantedBytes, 100);
  // One more byte does not, and nothing is reserved for it.
  assert.equal(w.tryReserve('c', 1), false);
  assert.equal(w.grantedBytes, 100);
  assert.equal(w.waiting, 0, 'a refused tryReserve leaves no request behind');
  w.release('a');
  assert.equal(w.grantedBytes, 40);
  // Someone waiting goes first: a tryReserve that would fit is still refused.
  const granted: string[] = [];
  w.request('big', 90, () => granted.push('big'));
  assert.equal(granted.length, 0, '40 + 90 > 100: big waits');
  assert.equal(w.tryReserve('small', 1), false);
  w.release('b');
  assert.deepEqual(granted, ['big']);
  assert.equal(w.grantedBytes, 90);
  // An id reserved by tryReserve, or waiting, cannot ask again either way.
  assert.throws(() => w.tryReserve('big', 1), /upload big was already requested/);
  assert.throws(() => w.request('big', 1, () => undefined), /upload big was already requested/);
  w.request('late', 20, () => granted.push('late'));
  assert.throws(() => w.tryReserve('late', 1), /upload late was already requested/);
  w.release('big');
  assert.deepEqual(granted, ['big', 'late']);
});

test('a queued request is granted when it fits exactly, and the window refuses a non-positive size with its value', () => {
  const w = new UploadWindow(100);
  const granted: string[] = [];
  w.request('a', 70, () => granted.push('a'));
  w.request('b', 30, () => granted.push('b')); // 70 + 30 = 100: fits exactly, granted at once
  assert.deepEqual(granted, ['a', 'b']);
  assert.equal(w.grantedBytes, 100);
  assert.throws(() => new UploadWindow(-5), /the upload window must be positive, got -5/);
  assert.throws(() => new UploadWindow(Number.NaN), /got NaN/);
});
