import { featureSize, type LocalDataset } from '@fedunlearn/client';

/** The SDK's dataset type and helpers: simulated clients hold exactly what a device would. */
export { featureSize, subset, type LocalDataset } from '@fedunlearn/client';

/** Examples of `parts` one after another; all parts must share input shape and class count. */
export function concat(parts: LocalDataset[]): LocalDataset {
  const first = parts[0];
  if (!first) throw new RangeError('concat needs at least one dataset');
  const f = featureSize(first);
  const count = parts.reduce((n, p) => n + p.count, 0);
  const x = new Float32Array(count * f);
  const y = new Int32Array(count);
  let at = 0;
  for (const p of parts) {
    if (p.inputShape.join('x') !== first.inputShape.join('x') || p.numClasses !== first.numClasses) {
      throw new RangeError(`concat: shape ${p.inputShape.join('x')}/${p.numClasses} classes differs from ${first.inputShape.join('x')}/${first.numClasses}`);
    }
    x.set(p.x.subarray(0, p.count * f), at * f);
    y.set(p.y.subarray(0, p.count), at);
    at += p.count;
  }
  return { x, y, inputShape: [...first.inputShape], numClasses: first.numClasses, count };
}
