/** One named weight tensor of a model, in the order the model lists them. */
export interface WeightSpec {
  name: string;
  shape: number[];
}

/** Where each weight tensor lives inside one flat float32 buffer. */
export interface WeightLayout {
  specs: readonly WeightSpec[];
  offsets: readonly number[];
  sizes: readonly number[];
  totalSize: number;
}

/** A model's parameters: one flat buffer with per-layer views, so that arithmetic never allocates per layer. */
export interface FlatWeights {
  layout: WeightLayout;
  values: Float32Array;
}

export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function layoutOf(specs: readonly WeightSpec[]): WeightLayout {
  const offsets: number[] = [];
  const sizes: number[] = [];
  let total = 0;
  for (const s of specs) {
    offsets.push(total);
    const n = sizeOf(s.shape);
    sizes.push(n);
    total += n;
  }
  return { specs: specs.map((s) => ({ name: s.name, shape: [...s.shape] })), offsets, sizes, totalSize: total };
}

export function zerosLike(layout: WeightLayout): FlatWeights {
  return { layout, values: new Float32Array(layout.totalSize) };
}

/** A view (no copy) of layer `i` inside a flat buffer laid out by `layout`. */
export function layerView(layout: WeightLayout, values: Float32Array, i: number): Float32Array {
  const offset = layout.offsets[i];
  const size = layout.sizes[i];
  if (offset === undefined || size === undefined) throw new RangeError(`no layer ${i} in a layout of ${layout.specs.length}`);
  return values.subarray(offset, offset + size);
}

export function sameLayout(a: WeightLayout, b: WeightLayout): boolean {
  if (a.specs.length !== b.specs.length) return false;
  return a.specs.every((s, i) => {
    const o = b.specs[i]!;
    return s.name === o.name && s.shape.length === o.shape.length && s.shape.every((d, j) => d === o.shape[j]);
  });
}

/** Per-layer L2 norms of a flat buffer, accumulated in float64. */
export function layerNorms(layout: WeightLayout, values: Float32Array): Float64Array {
  const norms = new Float64Array(layout.specs.length);
  for (let l = 0; l < layout.specs.length; l++) {
    const off = layout.offsets[l]!;
    const end = off + layout.sizes[l]!;
    let s = 0;
    for (let i = off; i < end; i++) {
      const v = values[i]!;
      s += v * v;
    }
    norms[l] = Math.sqrt(s);
  }
  return norms;
}

/** L2 norm of a whole flat buffer, accumulated in float64 (a float32 sum of squares overflows from values near 1e19). */
export function l2Norm(values: Float32Array): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    s += v * v;
  }
  return Math.sqrt(s);
}
