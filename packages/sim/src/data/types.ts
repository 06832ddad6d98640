/**
 * The sim package cannot import `LocalDataset` from @fedunlearn/client (its public index is not settled), so this
 * file restates the same shape; structural typing makes the two interchangeable. Keep it in step with
 * packages/client/src/dataset.ts.
 */
export interface LocalDataset {
  /** `count * product(inputShape)` float32 features, row-major. */
  x: Float32Array;
  /** One class index per example. */
  y: Int32Array;
  /** Shape of one example, e.g. [28, 28, 1] or [784]. */
  inputShape: number[];
  numClasses: number;
  count: number;
}

export function featureSize(d: Pick<LocalDataset, 'inputShape'>): number {
  return d.inputShape.reduce((a, b) => a * b, 1);
}

/** The examples at `indices`, copied into a new dataset (same semantics as the client's `subset`). */
export function subset(d: LocalDataset, indices: ArrayLike<number>): LocalDataset {
  const f = featureSize(d);
  const x = new Float32Array(indices.length * f);
  const y = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const j = indices[i]!;
    if (!Number.isInteger(j) || j < 0 || j >= d.count) throw new RangeError(`index ${j} outside [0, ${d.count})`);
    x.set(d.x.subarray(j * f, (j + 1) * f), i * f);
    y[i] = d.y[j]!;
  }
  return { x, y, inputShape: [...d.inputShape], numClasses: d.numClasses, count: indices.length };
}

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
