import { test } from 'node:test';
import assert from 'node:assert/strict';
import { curvaturePair, estimateUpdate, exactRoundReason } from './fedrecover.js';
import { LbfgsMemory } from './lbfgs.js';

const f32 = (...v: number[]) => Float32Array.from(v);

/** A client whose local training is one gradient step of lr η on f(w) = ½ (w − w*)ᵀ H (w − w*), H = diag(h):
 *  its update at w is U(w) = −η H (w − w*). Linear in w, so the estimate from pairs that span Δw must be exact. */
const h = [4, 2, 1];
const eta = 0.1;
const wStar = [1, -1, 0.5];
const update = (w: number[]) => Float32Array.from(w, (x, i) => -eta * h[i]! * (x - wStar[i]!));

test('estimateUpdate on a quadratic: Û = Ū − B Δw equals the exact update when Δw is in the span of the pairs', () => {
  const wbar = [0, 0, 0];
  const stored = update(wbar); // Ū = (0.4, −0.2, 0.05)
  const mem = new LbfgsMemory(3, 2);
  // Two exact updates at models displaced along e1 and e2 (H-conjugate directions): pairs (Δw, Ū − U).
  for (const dw of [
    [0.5, 0, 0],
    [0, 0.25, 0],
  ]) {
    const exact = update(dw.map((d, i) => wbar[i]! + d));
    assert.equal(mem.push(Float32Array.from(dw), curvaturePair(stored, exact)), true);
  }
  const dw = [0.3, -0.2, 0];
  const est = estimateUpdate(stored, mem, Float32Array.from(dw));
  const truth = update(dw.map((d, i) => wbar[i]! + d)); // (0.28, −0.16, 0.05), by hand: −0.1·4·(0.3−1) = 0.28, ...
  assert.deepEqual(Array.from(truth, (v) => Math.round(v * 1e6) / 1e6), [0.28, -0.16, 0.05]);
  for (let i = 0; i < 3; i++) assert.ok(Math.abs(est[i]! - truth[i]!) < 1e-6, `coordinate ${i}: ${est[i]} vs ${truth[i]}`);
  // The sign matters: adding B Δw instead (the paper's gradient form applied to updates unchanged) moves the other way.
  assert.ok(Math.abs(est[0]! - stored[0]!) > 0.1 && est[0]! < stored[0]!, 'the estimate moved Ū toward U(ŵ)');
});

test('estimateUpdate outside the span of the pairs uses σ for the unseen direction (approximate, as the paper says)', () => {
  const stored = update([0, 0, 0]);
  const mem = new LbfgsMemory(3, 2);
  mem.push(f32(0, 0.25, 0), curvaturePair(stored, update([0, 0.25, 0]))); // σ = η·h₂ = 0.2
  const est = estimateUpdate(stored, mem, f32(0, 0, 1));
  // True curvature along e3 is η·h₃ = 0.1; the L-BFGS matrix uses σ = 0.2 there: Û₃ = 0.05 − 0.2 = −0.15 (truth −0.05).
  assert.ok(Math.abs(est[2]! - -0.15) < 1e-6, `${est[2]}`);
  assert.ok(Math.abs(est[0]! - stored[0]!) < 1e-7 && Math.abs(est[1]! - stored[1]!) < 1e-7);
});

test('exactRoundReason: warm-up, periodic correction every T_c rounds after it, final tuning', () => {
  const p = { warmupRounds: 2, correctionPeriod: 3, finalTuningRounds: 1 };
  const got = Array.from({ length: 10 }, (_, j) => exactRoundReason(j, 10, p));
  assert.deepEqual(got, ['warm-up', 'warm-up', null, null, 'correction', null, null, 'correction', null, 'final tuning']);
  // The paper's defaults on a 10-round history: every round exact.
  assert.ok(Array.from({ length: 10 }, (_, j) => exactRoundReason(j, 10, { warmupRounds: 20, correctionPeriod: 10, finalTuningRounds: 5 })).every((r) => r !== null));
});
