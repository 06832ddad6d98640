import { layoutOf, type WeightLayout, type WeightSpec } from '@fedunlearn/protocol';

/**
 * A dense network's layout with about `params` values: two large kernels with their biases and a small output layer,
 * so that per-layer work (views, headers) is exercised as in a real model without dominating it.
 */
export function denseLayout(params: number): WeightLayout {
  const width = Math.max(8, Math.floor(Math.sqrt(params / 2)));
  const specs: WeightSpec[] = [
    { name: 'dense1/kernel', shape: [width, width] },
    { name: 'dense1/bias', shape: [width] },
    { name: 'dense2/kernel', shape: [width, width] },
    { name: 'dense2/bias', shape: [width] },
    { name: 'out/kernel', shape: [width, 10] },
    { name: 'out/bias', shape: [10] },
  ];
  return layoutOf(specs);
}

/** Deterministic pseudo-random values in [-scale, scale] (xorshift32): cheap to make, the same in every run. */
export function filled(n: number, seed: number, scale = 0.01): Float32Array {
  const out = new Float32Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = ((x / 4294967296) * 2 - 1) * scale;
  }
  return out;
}

export function round(x: number, digits: number): number {
  return Math.round(x * 10 ** digits) / 10 ** digits;
}
