import assert from 'node:assert/strict';
import { test } from 'node:test';
import { layoutOf } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { FedAvg } from './fedavg.js';
import { ClippedFedAvg, CoordinateMedian, TrimmedMean } from './robust.js';
import type { AggregationStrategy } from './strategy.js';

const layout = layoutOf([
  { name: 'dense_1/kernel', shape: [784, 64] },
  { name: 'dense_1/bias', shape: [64] },
  { name: 'dense_2/kernel', shape: [64, 10] },
  { name: 'dense_2/bias', shape: [10] },
]);

interface Round {
  base: Float32Array;
  updates: Float32Array[];
  counts: number[];
}

/** Updates as training makes them: per layer a scale of its own, values spread over several orders of magnitude
 *  (log-uniform magnitudes, random signs), counts over three orders (uneven partitions). Seeded. */
function round(seed: number, k: number): Round {
  const r = seedrandom(String(seed));
  const vec = (scale: number) => {
    const v = new Float32Array(layout.totalSize);
    for (let i = 0; i < v.length; i++) v[i] = (r() < 0.5 ? -1 : 1) * scale * 10 ** (-4 * r());
    return v;
  };
  return {
    base: vec(1),
    updates: Array.from({ length: k }, () => vec(0.05)),
    counts: Array.from({ length: k }, () => 1 + Math.floor(10 ** (r() * 3))),
  };
}

function single(strategy: AggregationStrategy, rd: Round, order: number[]): Float32Array {
  const agg = strategy.begin(layout);
  for (const j of order) agg.add(rd.updates[j]!, rd.counts[j]!);
  return agg.apply(rd.base);
}

/** Splits the updates (in `order`) over `parts` replicas, each folding its own and encoding its partial; the leader
 *  decodes and merges the partials in `mergeOrder`, then applies. */
function viaPartials(strategy: AggregationStrategy, rd: Round, order: number[], parts: number, mergeOrder: number[], r: () => number): Float32Array {
  const replicas = Array.from({ length: parts }, () => strategy.begin(layout));
  // Uneven shares, one replica possibly empty: any split must do.
  for (const j of order) replicas[Math.floor(r() * parts)]!.add(rd.updates[j]!, rd.counts[j]!);
  const bytes = replicas.map((a) => a.partial!().encode());
  const leader = strategy.begin(layout);
  for (const p of mergeOrder) leader.merge!(strategy.decodePartial!(bytes[p]!, layout));
  assert.equal(leader.count, rd.updates.length);
  assert.equal(leader.totalExamples, rd.counts.reduce((a, b) => a + b, 0));
  return leader.apply(rd.base);
}

function shuffled(n: number, r: () => number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

function bitsDiffer(a: Float32Array, b: Float32Array): number {
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  let n = 0;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) n++;
  return n;
}

test('FedAvg: N updates split over 1, 2 or 3 partials, folded and merged in any order, give the bits of one aggregator', () => {
  const strategy = new FedAvg();
  for (const seed of [1, 2, 3]) {
    const rd = round(seed, 12);
    const r = seedrandom(`split-${seed}`);
    const want = single(new FedAvg(), rd, rd.updates.map((_, i) => i));
    for (const parts of [1, 2, 3]) {
      for (let trial = 0; trial < 4; trial++) {
        const got = viaPartials(strategy, rd, shuffled(rd.updates.length, r), parts, shuffled(parts, r), r);
        assert.equal(bitsDiffer(got, want), 0, `seed ${seed}, ${parts} partials, trial ${trial}`);
      }
    }
  }
});

test('clipped FedAvg merges from partials; the clip norm travels with them and a different one is refused', () => {
  const strategy = new ClippedFedAvg(0.5);
  const rd = round(4, 10);
  const r = seedrandom('clipped');
  const want = single(strategy, rd, rd.updates.map((_, i) => i));
  // Each clipped term w_k·Δ_k is rounded once to float64 (clip/norm is not exact), identically on a replica and on one
  // aggregator; their float64 sums may then differ in the last bit between groupings, which moves the float32 model
  // only where its exact value lies within 2^-53 (relative) of a float32 rounding boundary: at most one float32 ulp.
  let differing = 0;
  for (const parts of [1, 2, 3]) {
    for (let trial = 0; trial < 3; trial++) {
      const got = viaPartials(strategy, rd, shuffled(rd.updates.length, r), parts, shuffled(parts, r), r);
      differing += bitsDiffer(got, want);
      for (let i = 0; i < got.length; i++) {
        const ulp = Math.abs(Math.fround(want[i]!) * 2 ** -23) || 2 ** -149;
        assert.ok(Math.abs(got[i]! - want[i]!) <= ulp, `value ${i}: ${got[i]} vs ${want[i]}`);
      }
    }
  }
  assert.ok(differing <= 9 * layout.totalSize * 1e-3, `${differing} values differ by one ulp`);

  const other = new ClippedFedAvg(1).begin(layout);
  other.add(rd.updates[0]!, 3);
  const bytes = other.partial!().encode();
  assert.throws(() => strategy.decodePartial(bytes, layout), /parameters \[1\] cannot merge into one with \[0.5\]/);
  const leader = strategy.begin(layout);
  assert.throws(() => leader.merge!(new ClippedFedAvg(1).decodePartial(bytes, layout)), /parameters \[1\] cannot merge into one with \[0.5\]/);
});

test('the median and the trimmed mean say they cannot merge and offer no partials', () => {
  for (const s of [new CoordinateMedian(), new TrimmedMean(0.1)]) {
    assert.equal(s.mergeable, false);
    assert.equal(s.begin(layout).partial, undefined);
    assert.equal(s.begin(layout).merge, undefined);
  }
  assert.equal(new FedAvg().mergeable, true);
  assert.equal(new ClippedFedAvg(1).mergeable, true);
});

test('partials: an empty one is valid and merges as nothing; bad bytes and misuse are refused with a clear error', () => {
  const fedavg = new FedAvg();
  const rd = round(5, 3);
  const empty = fedavg.begin(layout).partial!();
  assert.equal(empty.count, 0);
  const emptyBytes = empty.encode();
  assert.ok(emptyBytes.byteLength < 64, 'an empty partial carries no sum');
  const leader = fedavg.begin(layout);
  leader.merge!(fedavg.decodePartial(emptyBytes, layout));
  assert.equal(leader.count, 0);
  assert.throws(() => leader.apply(rd.base), /no update/);

  const one = fedavg.begin(layout);
  one.add(rd.updates[0]!, 5);
  const bytes = one.partial!().encode();
  assert.equal(bytes.byteLength, 32 + 8 + 8 * layout.totalSize);
  assert.throws(() => one.add(rd.updates[1]!, 1), /already applied/);
  assert.throws(() => fedavg.decodePartial(bytes.subarray(0, bytes.byteLength - 8), layout), /header describes/);
  assert.throws(() => fedavg.decodePartial(new Uint8Array(40), layout), /not a partial aggregate/);
  assert.throws(() => new ClippedFedAvg(1).decodePartial(bytes, layout), /partial aggregate of fedavg cannot merge into clipped-fedavg/);
  const small = layoutOf([{ name: 'w', shape: [3] }]);
  assert.throws(() => fedavg.decodePartial(bytes, small), /of 50890 values, the model has 3/);
  const poisoned = bytes.slice();
  new DataView(poisoned.buffer).setFloat64(bytes.byteLength - 8, Number.NaN, true);
  assert.throws(() => fedavg.decodePartial(poisoned, layout), /is NaN/);
  // A partial decoded from an unaligned view still reads right.
  const shifted = new Uint8Array(bytes.byteLength + 3);
  shifted.set(bytes, 3);
  const again = fedavg.decodePartial(shifted.subarray(3), layout);
  const a = fedavg.begin(layout);
  a.merge!(again);
  const b = fedavg.begin(layout);
  b.add(rd.updates[0]!, 5);
  assert.equal(bitsDiffer(a.apply(rd.base), b.apply(rd.base)), 0);
});
