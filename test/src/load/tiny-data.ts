import type { LocalDataset } from '@fedunlearn/client';

/** Two Gaussian blobs in `features` dimensions, labelled by blob: learnable from a handful of examples, cheap to train. */
export function tinyDataset(rng: () => number, examples: number, features: number): LocalDataset {
  const x = new Float32Array(examples * features);
  const y = new Int32Array(examples);
  for (let i = 0; i < examples; i++) {
    const label = i % 2;
    y[i] = label;
    for (let f = 0; f < features; f++) x[i * features + f] = (label === 1 ? 1 : -1) + (rng() - 0.5);
  }
  return { x, y, inputShape: [features], numClasses: 2, count: examples };
}
