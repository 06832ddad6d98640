/**
 * The L-BFGS approximation of a Hessian-vector product in compact form (Byrd, Nocedal and Schnabel, "Representations
 * of quasi-Newton matrices and their use in limited memory methods", Math. Programming 63, 1994, eq. 2.17 / 3.5),
 * as FedRecover uses it to approximate a client's integrated Hessian (Cao et al., IEEE S&P 2023, Algorithm 1).
 *
 * From m pairs (s_i, y_i), s_i = Δw_i (a model difference) and y_i = Δg_i (the matching gradient difference), oldest
 * first, the approximation is
 *
 *     B = σ I − [Y  σS] M⁻¹ [Yᵀ ; σSᵀ],   M = [[−D, Lᵀ], [L, σ SᵀS]]   (2m × 2m),
 *
 * with S, Y the n × m matrices of the pairs, D = diag(s_iᵀ y_i), L the strictly lower triangle of SᵀY
 * (L_ij = s_iᵀ y_j for i > j) and σ = y_lastᵀ s_last / s_lastᵀ s_last (the paper's choice). B is what the BFGS
 * recursion from B₀ = σI reaches after the m pairs, in O(n·m) time and memory: the n × n matrix is never formed.
 *
 * Shapes: every vector is a flat Float32Array of the model's length n (WeightLayout.totalSize); the small matrices are
 * 2m × 2m, float64. Dot products are accumulated in float64 (a vector can hold ~10⁵ values).
 */

/** Pairs whose curvature s·y is at most this fraction of |s|·|y| are dropped: BFGS needs s·y > 0 (B stays positive
 *  definite and M invertible); the usual safeguard (Nocedal and Wright, Numerical Optimization, 2nd ed., section 6.1). */
export const CURVATURE_EPSILON = 1e-8;

function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

/**
 * Solves the dense system A x = b (A is k × k, row-major, float64) by Gaussian elimination with partial pivoting.
 * Throws RangeError when A is singular (a pivot below 1e-300 relative to the largest entry).
 */
export function solveDense(a: Float64Array, b: Float64Array, k: number): Float64Array {
  const m = Float64Array.from(a);
  const x = Float64Array.from(b);
  let scale = 0;
  for (const v of m) scale = Math.max(scale, Math.abs(v));
  for (let c = 0; c < k; c++) {
    let p = c;
    for (let r = c + 1; r < k; r++) if (Math.abs(m[r * k + c]!) > Math.abs(m[p * k + c]!)) p = r;
    if (!(Math.abs(m[p * k + c]!) > 1e-300 * Math.max(scale, 1e-300))) throw new RangeError('the L-BFGS middle matrix is singular');
    if (p !== c) {
      for (let j = 0; j < k; j++) [m[c * k + j], m[p * k + j]] = [m[p * k + j]!, m[c * k + j]!];
      [x[c], x[p]] = [x[p]!, x[c]!];
    }
    for (let r = c + 1; r < k; r++) {
      const f = m[r * k + c]! / m[c * k + c]!;
      if (f === 0) continue;
      for (let j = c; j < k; j++) m[r * k + j] = m[r * k + j]! - f * m[c * k + j]!;
      x[r] = x[r]! - f * x[c]!;
    }
  }
  for (let r = k - 1; r >= 0; r--) {
    let s = x[r]!;
    for (let j = r + 1; j < k; j++) s -= m[r * k + j]! * x[j]!;
    x[r] = s / m[r * k + r]!;
  }
  return x;
}

/**
 * B v for the compact L-BFGS matrix B of the pairs (S[i], Y[i]), oldest first (module comment). Writes into `out`
 * (length n; may not alias `v`) and returns it. Throws RangeError on mismatched lengths, no pairs, or a pair without
 * positive curvature (LbfgsMemory drops those before they get here).
 */
export function compactHvp(S: readonly Float32Array[], Y: readonly Float32Array[], v: Float32Array, out: Float32Array = new Float32Array(v.length)): Float32Array {
  const m = S.length;
  if (m === 0 || Y.length !== m) throw new RangeError(`L-BFGS needs as many s as y vectors, at least one (got ${S.length} and ${Y.length})`);
  const n = v.length;
  for (const x of [...S, ...Y, out]) if (x.length !== n) throw new RangeError(`an L-BFGS vector has ${x.length} values, expected ${n}`);
  if (out === v) throw new RangeError('out may not alias v');
  const sy = new Float64Array(m * m); // sy[i*m+j] = s_i·y_j
  const ss = new Float64Array(m * m);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < m; j++) sy[i * m + j] = dot(S[i]!, Y[j]!);
    for (let j = 0; j <= i; j++) ss[i * m + j] = ss[j * m + i] = dot(S[i]!, S[j]!);
  }
  for (let i = 0; i < m; i++) if (!(sy[i * m + i]! > 0)) throw new RangeError(`L-BFGS pair ${i} has no positive curvature (s·y = ${sy[i * m + i]})`);
  const last = m - 1;
  const sigma = sy[last * m + last]! / ss[last * m + last]!;
  const k = 2 * m;
  const mid = new Float64Array(k * k);
  for (let i = 0; i < m; i++) {
    mid[i * k + i] = -sy[i * m + i]!; // −D
    for (let j = 0; j < m; j++) {
      const lower = i > j ? sy[i * m + j]! : 0; // L_ij
      mid[(m + i) * k + j] = lower; // L
      mid[j * k + (m + i)] = lower; // Lᵀ
      mid[(m + i) * k + (m + j)] = sigma * ss[i * m + j]!; // σ SᵀS
    }
  }
  const rhs = new Float64Array(k);
  for (let i = 0; i < m; i++) {
    rhs[i] = dot(Y[i]!, v);
    rhs[m + i] = sigma * dot(S[i]!, v);
  }
  const p = solveDense(mid, rhs, k);
  // B v = σ v − Y p_y − σ S p_s, summed per coordinate in float64.
  for (let t = 0; t < n; t++) {
    let acc = sigma * v[t]!;
    for (let i = 0; i < m; i++) acc -= p[i]! * Y[i]![t]! + sigma * p[m + i]! * S[i]![t]!;
    out[t] = acc;
  }
  return out;
}

/**
 * A bounded memory of L-BFGS pairs (the newest `capacity` kept, oldest dropped first): FedRecover keeps one per client
 * (its buffer of s pairs, the paper's "buffer size"). Vectors pushed are owned by the memory from then on.
 */
export class LbfgsMemory {
  private readonly s: Float32Array[] = [];
  private readonly y: Float32Array[] = [];

  constructor(
    readonly size: number,
    readonly capacity: number,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`L-BFGS memory must hold at least one pair, got ${capacity}`);
  }

  get length(): number {
    return this.s.length;
  }

  /**
   * Adds the pair (Δw, Δg). Returns false, keeping nothing, when its curvature Δw·Δg is not positive enough (see
   * CURVATURE_EPSILON), e.g. Δw = 0: such a pair carries no usable curvature. Throws RangeError on a wrong length.
   */
  push(dw: Float32Array, dg: Float32Array): boolean {
    if (dw.length !== this.size || dg.length !== this.size) throw new RangeError(`an L-BFGS pair must have ${this.size} values, got ${dw.length} and ${dg.length}`);
    const sy = dot(dw, dg);
    const norms = Math.sqrt(dot(dw, dw) * dot(dg, dg));
    if (!(sy > CURVATURE_EPSILON * norms) || !Number.isFinite(sy)) return false;
    this.s.push(dw);
    this.y.push(dg);
    if (this.s.length > this.capacity) {
      this.s.shift();
      this.y.shift();
    }
    return true;
  }

  /** B v from the pairs held (compactHvp). Throws RangeError when the memory is empty. */
  hvp(v: Float32Array, out?: Float32Array): Float32Array {
    return compactHvp(this.s, this.y, v, out);
  }
}
