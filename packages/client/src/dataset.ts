/**
 * Labelled examples held on the device, in the flat layout TensorFlow.js takes without copies.
 * `x` holds `count * product(inputShape)` float32 features (row-major), `y` one class index per example.
 */
export interface LocalDataset {
  x: Float32Array;
  y: Int32Array;
  /** Shape of one example, e.g. [28, 28, 1] or [784]. */
  inputShape: number[];
  numClasses: number;
  count: number;
}

export function featureSize(d: Pick<LocalDataset, 'inputShape'>): number {
  return d.inputShape.reduce((a, b) => a * b, 1);
}

/** Checks that a dataset's arrays agree with its declared shape; the SDK refuses to train on one that does not. */
export function assertDataset(d: LocalDataset): void {
  const f = featureSize(d);
  if (!Number.isInteger(d.count) || d.count < 0) throw new RangeError(`dataset count ${d.count}`);
  if (d.x.length !== d.count * f) throw new RangeError(`dataset x holds ${d.x.length} values, expected ${d.count} x ${f}`);
  if (d.y.length !== d.count) throw new RangeError(`dataset y holds ${d.y.length} labels, expected ${d.count}`);
  for (let i = 0; i < d.count; i++) {
    const c = d.y[i]!;
    if (c < 0 || c >= d.numClasses) throw new RangeError(`label ${c} at ${i} outside [0, ${d.numClasses})`);
  }
}

/** The examples at `indices`, copied into a new dataset. */
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

/** The federation's model as the coordinator's Welcome describes it: the shape of one example and the class count. */
export interface ModelSignature {
  /** Shape of one example the model takes, e.g. [784] or [28, 28, 1]. */
  inputShape: number[];
  /** Classes the model's output scores. */
  numClasses: number;
}

/**
 * Why `d` cannot train the model `m`, or null when it can: its examples must have exactly the model's input shape,
 * and its labels must be classes the model has (a device may hold fewer classes than the model, never more).
 */
export function datasetMismatch(d: Pick<LocalDataset, 'inputShape' | 'numClasses'>, m: ModelSignature): string | null {
  if (d.inputShape.length !== m.inputShape.length || d.inputShape.some((n, i) => n !== m.inputShape[i])) {
    return `dataset examples are [${d.inputShape}], the federation's model takes [${m.inputShape}]`;
  }
  if (d.numClasses > m.numClasses) return `dataset has ${d.numClasses} classes, the federation's model ${m.numClasses}`;
  return null;
}
