import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeTrigger, stamp, triggeredTestSet, withBackdoor, type Trigger, type TriggerCorner } from './backdoor.js';
import type { LocalDataset } from './types.js';

/** Random-looking pixels in (0, 0.5) so a white (1.0) patch is unmistakable, and labels cycling 0..9. */
function images(count: number, shape: number[]): LocalDataset {
  const f = shape.reduce((a, b) => a * b, 1);
  const x = Float32Array.from({ length: count * f }, (_, k) => ((k * 2654435761) % 1000) / 2000 + 0.0001);
  return { x, y: Int32Array.from({ length: count }, (_, i) => i % 10), inputShape: shape, numClasses: 10, count };
}

/** Is pixel (r, c) of an h×w image inside the trigger patch? Stated from the corner's definition, independently. */
function inPatch(r: number, c: number, h: number, w: number, t: Trigger): boolean {
  const rowOk = t.corner.startsWith('top') ? r < t.size : r >= h - t.size;
  const colOk = t.corner.endsWith('left') ? c < t.size : c >= w - t.size;
  return rowOk && colOk;
}

function assertStamped(before: LocalDataset, after: LocalDataset, t: Trigger, h: number, w: number, ch: number): void {
  assert.equal(after.count, before.count);
  assert.deepEqual(after.inputShape, before.inputShape);
  const f = h * w * ch;
  let patched = 0;
  for (let i = 0; i < after.count; i++) {
    assert.equal(after.y[i], t.targetClass);
    for (let r = 0; r < h; r++) {
      for (let c = 0; c < w; c++) {
        for (let k = 0; k < ch; k++) {
          const at = i * f + (r * w + c) * ch + k;
          if (inPatch(r, c, h, w, t)) {
            assert.equal(after.x[at], t.value);
            patched++;
          } else assert.equal(after.x[at], before.x[at], `pixel ${r},${c},${k} of image ${i} must be untouched`);
        }
      }
    }
  }
  assert.equal(patched, after.count * t.size * t.size * ch);
}

test('stamp writes the patch in each corner, flat and image layouts alike, and relabels everything', () => {
  const corners: TriggerCorner[] = ['bottom-right', 'bottom-left', 'top-right', 'top-left'];
  for (const corner of corners) {
    const t = makeTrigger({ corner, size: 3, targetClass: 7 });
    const flat = images(5, [784]);
    const img = images(5, [28, 28, 1]);
    const copyOfFlat = flat.x.slice();
    const sf = stamp(flat, t);
    const si = stamp(img, t);
    assertStamped(flat, sf, t, 28, 28, 1);
    assertStamped(img, si, t, 28, 28, 1);
    assert.deepEqual(sf.x, si.x, 'same bytes in both layouts');
    assert.deepEqual(flat.x, copyOfFlat, 'input untouched');
  }
});

test('stamp covers every channel of multi-channel images', () => {
  const t = makeTrigger({ size: 2, value: 0.75, corner: 'top-left' });
  const rgb = images(3, [8, 6, 3]);
  assertStamped(rgb, stamp(rgb, t), t, 8, 6, 3);
});

test('the default trigger is a 4x4 white square bottom-right, targeting class 0', () => {
  const t = makeTrigger();
  assert.deepEqual(t, { size: 4, corner: 'bottom-right', value: 1, targetClass: 0 });
  const s = stamp(images(1, [784]), t);
  assert.equal(s.x[27 * 28 + 27], 1);
  assert.equal(s.x[24 * 28 + 24], 1);
  assert.notEqual(s.x[23 * 28 + 27], 1);
  assert.notEqual(s.x[27 * 28 + 23], 1);
});

test('withBackdoor is the clean data followed by a stamped copy', () => {
  const t = makeTrigger({ targetClass: 2 });
  const ds = images(6, [28, 28, 1]);
  const out = withBackdoor(ds, t);
  assert.equal(out.count, 12);
  assert.equal(out.x.length, 12 * 784);
  assert.deepEqual(out.x.subarray(0, 6 * 784), ds.x);
  assert.deepEqual(out.y.subarray(0, 6), ds.y);
  assertStamped(ds, { ...out, x: out.x.slice(6 * 784), y: out.y.slice(6), count: 6 }, t, 28, 28, 1);
});

test('triggeredTestSet keeps only images not already of the target class, stamped', () => {
  const t = makeTrigger({ targetClass: 3 });
  const ds = images(25, [784]); // labels 0..9 cycling: classes 3 appear at 3, 13, 23
  const out = triggeredTestSet(ds, t);
  const keep = Array.from({ length: 25 }, (_, i) => i).filter((i) => ds.y[i] !== 3);
  assert.equal(out.count, keep.length);
  assert.equal(out.count, 22);
  const source: LocalDataset = {
    x: Float32Array.from(keep.flatMap((i) => Array.from(ds.x.subarray(i * 784, (i + 1) * 784)))),
    y: Int32Array.from(keep.map((i) => ds.y[i]!)),
    inputShape: [784],
    numClasses: 10,
    count: keep.length,
  };
  assertStamped(source, out, t, 28, 28, 1);
});

test('bad triggers and shapes are refused', () => {
  const ds = images(1, [784]);
  assert.throws(() => stamp(ds, makeTrigger({ size: 29 })), RangeError);
  assert.throws(() => stamp(ds, makeTrigger({ size: 0 })), RangeError);
  assert.throws(() => stamp(ds, makeTrigger({ targetClass: 10 })), RangeError);
  assert.throws(() => stamp(images(1, [10]), makeTrigger({ size: 2 })), RangeError);
});
