import { test } from 'node:test';
import assert from 'node:assert/strict';
import seedrandom from 'seedrandom';
import { compactHvp, LbfgsMemory, solveDense } from './lbfgs.js';

const f32 = (...v: number[]) => Float32Array.from(v);

function close(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(Math.abs(actual[i]! - expected[i]!) <= tol * Math.max(1, Math.abs(expected[i]!)), `${what}[${i}]: ${actual[i]} vs ${expected[i]}`);
  }
}

/** The BFGS recursion from B0 = σI over dense n × n float64 matrices (the textbook form, Nocedal and Wright eq. 6.19),
 *  to check the compact form against: B ← B − B s sᵀ B / sᵀBs + y yᵀ / yᵀs. */
function bfgsDense(S: Float32Array[], Y: Float32Array[]): number[][] {
  const n = S[0]!.length;
  const s = S.at(-1)!;
  const y = Y.at(-1)!;
  let sy = 0;
  let ss = 0;
  for (let i = 0; i < n; i++) {
    sy += s[i]! * y[i]!;
    ss += s[i]! * s[i]!;
  }
  const sigma = sy / ss;
  let B = Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => (i === j ? sigma : 0)));
  for (let k = 0; k < S.length; k++) {
    const sk = Array.from(S[k]!);
    const yk = Array.from(Y[k]!);
    const Bs = B.map((row) => row.reduce((a, v, j) => a + v * sk[j]!, 0));
    const sBs = sk.reduce((a, v, i) => a + v * Bs[i]!, 0);
    const ys = yk.reduce((a, v, i) => a + v * sk[i]!, 0);
    B = B.map((row, i) => row.map((v, j) => v - (Bs[i]! * Bs[j]!) / sBs + (yk[i]! * yk[j]!) / ys));
  }
  return B;
}

test('one pair, by hand: s = (1, 0), y = (2, 1) gives σ = 2 and B = [[2, 1], [1, 2.5]]', () => {
  // σ = yᵀs / sᵀs = 2; B = σI − σ s sᵀ / sᵀs + y yᵀ / yᵀs = [[0, 0], [0, 2]] + [[2, 1], [1, 0.5]].
  const S = [f32(1, 0)];
  const Y = [f32(2, 1)];
  close(compactHvp(S, Y, f32(1, 0)), [2, 1], 1e-6, 'B e1 (the secant condition B s = y)');
  close(compactHvp(S, Y, f32(0, 1)), [1, 2.5], 1e-6, 'B e2');
  close(compactHvp(S, Y, f32(3, -2)), [4, -2], 1e-6, 'B (3, -2)');
});

test('a quadratic with a known Hessian: on the span of H-conjugate pairs, B v = H v; off it, σ v', () => {
  // H = diag(4, 2, 1, 3); the pairs s = e1, e2 (H-conjugate) with y = H s, exactly what a quadratic gives.
  const H = [4, 2, 1, 3];
  const S = [f32(1, 0, 0, 0), f32(0, 1, 0, 0)];
  const Y = S.map((s) => Float32Array.from(s, (v, i) => v * H[i]!));
  const v = f32(0.5, -3, 0, 0);
  close(compactHvp(S, Y, v), [2, -6, 0, 0], 1e-6, 'B v in the span');
  // σ = y2ᵀs2 / s2ᵀs2 = 2: the directions no pair saw are scaled by σ, not by their true curvature (1 and 3).
  close(compactHvp(S, Y, f32(0, 0, 1, 1)), [0, 0, 2, 2], 1e-6, 'B v off the span');
});

test('the compact form equals the BFGS recursion from σI for random pairs (n = 6, m = 3)', () => {
  const rng = seedrandom('lbfgs');
  const n = 6;
  // A random symmetric positive definite Hessian, so that every pair has positive curvature.
  const A = Array.from({ length: n }, () => Array.from({ length: n }, () => rng() - 0.5));
  const H = A.map((_, i) => A.map((_, j) => A[i]!.reduce((a, v, k) => a + v * A[j]![k]!, 0) + (i === j ? 0.5 : 0)));
  const S = Array.from({ length: 3 }, () => Float32Array.from({ length: n }, () => rng() - 0.5));
  const Y = S.map((s) => Float32Array.from(H, (row) => row.reduce((a, v, j) => a + v * s[j]!, 0)));
  const B = bfgsDense(S, Y);
  const v = Float32Array.from({ length: n }, () => rng() - 0.5);
  const expected = B.map((row) => row.reduce((a, x, j) => a + x * v[j]!, 0));
  close(compactHvp(S, Y, v), expected, 1e-4, 'compact vs recursive');
  // The secant condition of the newest pair holds exactly for BFGS: B s_m = y_m.
  close(compactHvp(S, Y, S[2]!), Y[2]!, 1e-4, 'B s_last');
});

test('LbfgsMemory keeps the newest pairs, drops pairs without positive curvature, and refuses bad shapes', () => {
  const mem = new LbfgsMemory(2, 1);
  assert.throws(() => mem.hvp(f32(1, 0)), RangeError, 'no pair yet');
  assert.equal(mem.push(f32(0, 0), f32(1, 1)), false, 's = 0 carries no curvature');
  assert.equal(mem.push(f32(1, 0), f32(-1, 0)), false, 'negative curvature');
  assert.equal(mem.length, 0);
  assert.equal(mem.push(f32(1, 0), f32(5, 0)), true);
  assert.equal(mem.push(f32(0, 1), f32(0, 3)), true);
  assert.equal(mem.length, 1, 'capacity 1: the older pair went');
  // Only (e2, 3 e2) is left: σ = 3 and B = 3I.
  close(mem.hvp(f32(1, 1)), [3, 3], 1e-6, 'B from the newest pair');
  assert.throws(() => mem.push(f32(1), f32(1)), RangeError);
  assert.throws(() => new LbfgsMemory(2, 0), RangeError);
  assert.throws(() => compactHvp([f32(1, 0)], [f32(1, 0)], f32(1, 0, 0)), RangeError);
});

test('solveDense: pivoting and a singular system', () => {
  // [[0, 1], [2, 0]] x = [3, 4] → x = [2, 3] (needs a row swap).
  close(solveDense(Float64Array.from([0, 1, 2, 0]), Float64Array.from([3, 4]), 2), [2, 3], 1e-12, 'x');
  assert.throws(() => solveDense(Float64Array.from([1, 2, 2, 4]), Float64Array.from([1, 1]), 2), RangeError);
});
