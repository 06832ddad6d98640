import seedrandom from 'seedrandom';

/** A seeded source of uniform numbers in [0, 1); everything random in the simulation draws from one of these. */
export interface Rng {
  /** Uniform in [0, 1). */
  next(): number;
  /** Uniform integer in [0, n). */
  int(n: number): number;
}

/**
 * A deterministic generator for `seed`, optionally narrowed to a named stream (e.g. makeRng(7, 'split', 'class', 3)),
 * so independent uses of one user seed do not share, or perturb, each other's sequence.
 */
export function makeRng(seed: number | string, ...stream: (string | number)[]): Rng {
  const prng = seedrandom([String(seed), ...stream.map(String)].join('/'));
  return {
    next: () => prng.double(),
    int: (n: number) => {
      if (!Number.isInteger(n) || n <= 0) throw new RangeError(`rng.int(${n}): n must be a positive integer`);
      return Math.floor(prng.double() * n);
    },
  };
}

/** Anything indexable and writable: plain arrays and typed arrays alike. */
export interface MutableArrayLike<T> {
  length: number;
  [i: number]: T;
}

/** Fisher–Yates shuffle in place; returns `a` for chaining. */
export function shuffleInPlace<T, A extends MutableArrayLike<T>>(a: A & MutableArrayLike<T>, rng: Rng): A {
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    const t = a[i]!;
    a[i] = a[j]!;
    a[j] = t;
  }
  return a;
}

/** A uniformly random permutation of 0..n-1. */
export function permutation(n: number, rng: Rng): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  return shuffleInPlace(p, rng);
}

/** Standard normal by Box–Muller (one of the pair is discarded: simplicity over speed, draws are few). */
export function normal(rng: Rng): number {
  let u = rng.next();
  while (u === 0) u = rng.next();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
}

/**
 * Gamma(shape, 1) by Marsaglia & Tsang (2000). For shape < 1 it uses the boost
 * Gamma(a) = Gamma(a + 1) * U^(1/a), which is what makes small Dirichlet α (very skewed splits) work.
 */
export function gamma(shape: number, rng: Rng): number {
  if (!(shape > 0) || !Number.isFinite(shape)) throw new RangeError(`gamma shape ${shape} must be positive and finite`);
  if (shape < 1) {
    let u = rng.next();
    while (u === 0) u = rng.next();
    return gamma(shape + 1, rng) * Math.pow(u, 1 / shape);
  }
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    let z: number;
    let v: number;
    do {
      z = normal(rng);
      v = 1 + c * z;
    } while (v <= 0);
    v = v * v * v;
    const u = rng.next();
    if (u < 1 - 0.0331 * z * z * z * z) return d * v;
    if (Math.log(u) < 0.5 * z * z + d * (1 - v + Math.log(v))) return d * v;
  }
}

/**
 * A draw from the symmetric Dirichlet(α, …, α) over k outcomes. With tiny α every gamma draw can underflow to 0;
 * then all mass goes to one random outcome, which is the limit the distribution tends to.
 */
export function dirichlet(alpha: number, k: number, rng: Rng): Float64Array {
  const p = new Float64Array(k);
  let sum = 0;
  for (let i = 0; i < k; i++) {
    p[i] = gamma(alpha, rng);
    sum += p[i]!;
  }
  if (sum === 0 || !Number.isFinite(sum)) {
    p.fill(0);
    p[rng.int(k)] = 1;
    return p;
  }
  for (let i = 0; i < k; i++) p[i] = p[i]! / sum;
  return p;
}
