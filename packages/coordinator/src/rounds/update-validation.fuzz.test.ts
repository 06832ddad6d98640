import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DType, encodeTensor, ErrorCode, fedunlearn, layerView, layoutOf, type WeightLayout, type WireTensor } from '@fedunlearn/protocol';
import { validateUpdate, type OpenTask } from './update-validation.js';

// Property tests over update validation: arbitrary tensor lists against the layout of the task they answer, with
// NaN/Inf planted at random positions. An update is accepted only when it is exactly right, and every refusal carries
// the code of what is wrong with it.

const fuzzSeed = process.env.FEDUNLEARN_FUZZ_SEED;
const budget = (numRuns: number): fc.Parameters<unknown> => ({ numRuns, ...(fuzzSeed ? { seed: Number(fuzzSeed) } : {}) });
const TaskKind = fedunlearn.v1.TaskKind;

const layoutArb: fc.Arbitrary<WeightLayout> = fc
  .array(fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 4 })
  .map((shapes) => layoutOf(shapes.map((shape, i) => ({ name: `layer${i}/${shape.length === 1 ? 'bias' : 'kernel'}`, shape }))));

/** One way of getting an update wrong, and the code it must be refused with (null: it is still valid). */
type Fault =
  | { kind: 'none' }
  | { kind: 'poison'; layer: number; at: number; value: number }
  | { kind: 'dropTensor'; layer: number }
  | { kind: 'extraTensor' }
  | { kind: 'rename'; layer: number }
  | { kind: 'reshape'; layer: number; shape: number[] }
  | { kind: 'truncate'; layer: number; by: number }
  | { kind: 'dtype'; layer: number; dtype: number }
  | { kind: 'badScale'; layer: number; scale: number }
  | { kind: 'numExamples'; n: number }
  | { kind: 'metricKey'; key: string }
  | { kind: 'tooManyExamples'; n: number }
  | { kind: 'norm' }
  | { kind: 'foreign' }
  | { kind: 'unknown' }
  | { kind: 'stale' };

const faultArb: fc.Arbitrary<Fault> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ kind: 'none' as const }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('poison' as const), layer: fc.nat(), at: fc.nat(), value: fc.constantFrom(NaN, Infinity, -Infinity) }) },
  fc.record({ kind: fc.constant('dropTensor' as const), layer: fc.nat() }),
  fc.constant({ kind: 'extraTensor' as const }),
  fc.record({ kind: fc.constant('rename' as const), layer: fc.nat() }),
  fc.record({ kind: fc.constant('reshape' as const), layer: fc.nat(), shape: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 3 }) }),
  fc.record({ kind: fc.constant('truncate' as const), layer: fc.nat(), by: fc.integer({ min: 1, max: 3 }) }),
  fc.record({ kind: fc.constant('dtype' as const), layer: fc.nat(), dtype: fc.constantFrom(0, 4, 7, -1) }),
  fc.record({ kind: fc.constant('badScale' as const), layer: fc.nat(), scale: fc.constantFrom(0, -1, NaN, Infinity) }),
  fc.record({ kind: fc.constant('numExamples' as const), n: fc.constantFrom(0, -5) }),
  fc.record({ kind: fc.constant('metricKey' as const), key: fc.constantFrom('sourceRound', '__proto__', 'constructor', 'toString', 'Loss', '') }),
  fc.record({ kind: fc.constant('tooManyExamples' as const), n: fc.integer({ min: 11, max: 2 ** 32 - 1 }) }),
  fc.constant({ kind: 'norm' as const }),
  fc.constant({ kind: 'foreign' as const }),
  fc.constant({ kind: 'unknown' as const }),
  fc.constant({ kind: 'stale' as const }),
);

interface Case {
  layout: WeightLayout;
  values: Float32Array;
  dtype: DType;
  kind: fedunlearn.v1.TaskKind;
  fault: Fault;
}

const caseArb: fc.Arbitrary<Case> = layoutArb.chain((layout) =>
  fc.record({
    layout: fc.constant(layout),
    values: fc.array(fc.float({ min: -1, max: 1, noNaN: true }), { minLength: layout.totalSize, maxLength: layout.totalSize }).map((v) => Float32Array.from(v)),
    dtype: fc.constantFrom(DType.FLOAT32, DType.FLOAT16, DType.INT8),
    kind: fc.constantFrom(TaskKind.TRAIN, TaskKind.CALIBRATE, TaskKind.EVALUATE),
    fault: faultArb,
  }),
);

/** Builds the update the case describes and the code it must get (null: accepted). */
function build(c: Case): { update: fedunlearn.v1.IUpdate; sender: string; task: OpenTask | undefined; closed: boolean; want: ErrorCode | null } {
  const { layout, fault } = c;
  const values = Float32Array.from(c.values);
  const pick = (layer: number) => layer % layout.specs.length;
  // Planted before encoding: an int8 encoder refuses NaN, so the poison is written into the encoded bytes instead.
  const poisonedLayer = fault.kind === 'poison' ? pick(fault.layer) : -1;
  let delta: WireTensor[] = layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, values, i), c.dtype));
  delta = delta.map((t) => ({ ...t, data: Uint8Array.from(t.data!) }));
  const trains = c.kind !== TaskKind.EVALUATE;
  let want: ErrorCode | null = null;
  let numExamples = 10;
  let sender = 'owner';
  let task: OpenTask | undefined = { clientId: 'owner', kind: c.kind, layout, maxExamples: 10, maxNorm: 1e3 };
  let closed = false;
  const metrics: Record<string, number> = { loss: 0.5, accuracy: NaN };
  switch (fault.kind) {
    case 'none':
      break;
    case 'poison': {
      const t = delta[poisonedLayer]!;
      const n = layout.sizes[poisonedLayer]!;
      const at = fault.at % n;
      const dv = new DataView(t.data!.buffer);
      if (c.dtype === DType.FLOAT32) dv.setFloat32(at * 4, fault.value, true);
      else if (c.dtype === DType.FLOAT16) dv.setUint16(at * 2, Number.isNaN(fault.value) ? 0x7e00 : fault.value > 0 ? 0x7c00 : 0xfc00, true);
      else delta[poisonedLayer] = { ...t, scale: fault.value };
      want = trains ? (c.dtype === DType.INT8 ? ErrorCode.INVALID_ARGUMENT : ErrorCode.NON_FINITE_VALUES) : null;
      break;
    }
    case 'dropTensor':
      delta.splice(pick(fault.layer), 1);
      want = trains ? ErrorCode.SHAPE_MISMATCH : null;
      break;
    case 'extraTensor':
      delta.push(encodeTensor('extra/bias', [1], new Float32Array(1)));
      want = trains ? ErrorCode.SHAPE_MISMATCH : null;
      break;
    case 'rename': {
      const i = pick(fault.layer);
      delta[i] = { ...delta[i]!, name: `${delta[i]!.name}-renamed` };
      want = trains ? ErrorCode.SHAPE_MISMATCH : null;
      break;
    }
    case 'reshape': {
      const i = pick(fault.layer);
      const same = fault.shape.length === layout.specs[i]!.shape.length && fault.shape.every((d, j) => d === layout.specs[i]!.shape[j]);
      delta[i] = { ...delta[i]!, shape: fault.shape };
      want = trains && !same ? ErrorCode.SHAPE_MISMATCH : null;
      break;
    }
    case 'truncate': {
      const i = pick(fault.layer);
      delta[i] = { ...delta[i]!, data: delta[i]!.data!.subarray(0, Math.max(0, delta[i]!.data!.byteLength - fault.by)) };
      want = trains ? ErrorCode.SHAPE_MISMATCH : null;
      break;
    }
    case 'dtype': {
      const i = pick(fault.layer);
      delta[i] = { ...delta[i]!, dtype: fault.dtype };
      want = trains ? ErrorCode.DTYPE_MISMATCH : null;
      break;
    }
    case 'badScale': {
      const i = pick(fault.layer);
      // Only int8 tensors read their scale.
      delta[i] = { ...delta[i]!, scale: fault.scale };
      want = trains && c.dtype === DType.INT8 ? ErrorCode.INVALID_ARGUMENT : null;
      break;
    }
    case 'numExamples':
      numExamples = fault.n;
      want = ErrorCode.INVALID_ARGUMENT;
      break;
    case 'metricKey':
      Object.defineProperty(metrics, fault.key, { value: 1.75, enumerable: true, configurable: true, writable: true });
      want = ErrorCode.METRIC_NOT_ALLOWED;
      break;
    case 'tooManyExamples':
      numExamples = fault.n;
      want = ErrorCode.TOO_MANY_EXAMPLES;
      break;
    case 'norm': {
      // Half the norm of what was sent: any decoding (int8 rounds by at most 0.4 %) stays far above it. Below 1e-3
      // float16 may flush the values to zero, so the bound is then set above them instead.
      let ss = 0;
      for (const v of c.values) ss += v * v;
      const big = Math.sqrt(ss) > 1e-3;
      task = { ...task!, maxNorm: big ? Math.sqrt(ss) / 2 : 1 };
      want = trains && big ? ErrorCode.UPDATE_NORM_TOO_LARGE : null;
      break;
    }
    case 'foreign':
      sender = 'intruder';
      want = ErrorCode.PERMISSION_DENIED;
      break;
    case 'unknown':
      task = undefined;
      want = ErrorCode.UNKNOWN_TASK;
      break;
    case 'stale':
      task = undefined;
      closed = true;
      want = ErrorCode.STALE_TASK;
      break;
  }
  return { update: { taskId: 't-1', delta, numExamples, metrics }, sender, task, closed, want };
}

test('an update is accepted exactly when it is right, and refused with the code of its fault otherwise', () => {
  const seen = new Set<string>();
  fc.assert(
    fc.property(caseArb, (c) => {
      const { update, sender, task, closed, want } = build(c);
      const v = validateUpdate(update, sender, task, closed);
      const got = v.ok ? 'accepted' : ErrorCode[v.error.code];
      assert.equal(got, want === null ? 'accepted' : ErrorCode[want], v.ok ? '' : v.error.message);
      seen.add(got!);
      if (!v.ok) {
        assert.equal(v.error.ref, 't-1', 'every refusal names the task');
        // Content faults end the task; a stranger, a missing count or an unknown id leave it to its owner.
        const contentFault =
          ['SHAPE_MISMATCH', 'DTYPE_MISMATCH', 'NON_FINITE_VALUES', 'UPDATE_NORM_TOO_LARGE', 'TOO_MANY_EXAMPLES', 'METRIC_NOT_ALLOWED'].includes(got!) ||
          (got === 'INVALID_ARGUMENT' && c.fault.kind !== 'numExamples');
        assert.equal(v.closesTask, contentFault);
        return;
      }
      assert.deepEqual(v.update.metrics, { loss: 0.5 }, 'non-finite metrics are dropped');
      if (c.kind === TaskKind.EVALUATE) return assert.equal(v.update.delta, null);
      const delta = v.update.delta!;
      assert.equal(delta.length, c.layout.totalSize);
      for (let i = 0; i < delta.length; i++) {
        assert.ok(Number.isFinite(delta[i]!));
        // fp16 keeps 11 bits, int8 half a step of max|x| / 127.
        const tol = c.dtype === DType.FLOAT32 ? 0 : c.dtype === DType.FLOAT16 ? 2 ** -11 : 0.5 / 127 + 1e-6;
        assert.ok(Math.abs(delta[i]! - c.values[i]!) <= tol, `value ${i}: sent ${c.values[i]}, accepted ${delta[i]}`);
      }
    }),
    budget(3000),
  );
  assert.deepEqual(
    [...seen].sort(),
    ['DTYPE_MISMATCH', 'INVALID_ARGUMENT', 'METRIC_NOT_ALLOWED', 'NON_FINITE_VALUES', 'PERMISSION_DENIED', 'SHAPE_MISMATCH', 'STALE_TASK', 'TOO_MANY_EXAMPLES', 'UNKNOWN_TASK', 'UPDATE_NORM_TOO_LARGE', 'accepted'],
  );
});

/** The MNIST MLP (784-128-64-10): its first kernel, 100,352 values, is larger than every internal step of the check. */
const MLP = layoutOf([
  { name: 'dense1/kernel', shape: [784, 128] },
  { name: 'dense1/bias', shape: [128] },
  { name: 'dense2/kernel', shape: [128, 64] },
  { name: 'dense2/bias', shape: [64] },
  { name: 'out/kernel', shape: [64, 10] },
  { name: 'out/bias', shape: [10] },
]);
/** First index past each internal step of the float32 check (4,096-value blocks, 16,384-value copy steps), and the
 *  last index of each layer. */
const BOUNDARIES: [number, number][] = [...[4096, 16384, 32768, 65536, 98304].map((at): [number, number] => [0, at]), ...MLP.sizes.map((n, l): [number, number] => [l, n - 1])];

test('a full-size update with NaN or ±Inf past any internal step of the check is refused; clean, it is accepted', () => {
  const clean = new Float32Array(MLP.totalSize);
  for (let i = 0; i < clean.length; i++) clean[i] = Math.cos(i) * 0.01;
  const task: OpenTask = { clientId: 'owner', kind: TaskKind.TRAIN, layout: MLP };
  const encode = (v: Float32Array, dtype: DType): WireTensor[] => MLP.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(MLP, v, i), dtype));
  const ok = validateUpdate({ taskId: 't-1', delta: encode(clean, DType.FLOAT32), numExamples: 10 }, 'owner', task, false);
  assert.ok(ok.ok && ok.update.delta!.every((x, i) => x === clean[i]));
  fc.assert(
    fc.property(
      fc.oneof(
        fc.constantFrom(...BOUNDARIES),
        fc.tuple(fc.nat({ max: MLP.specs.length - 1 }), fc.nat()).map(([l, pos]): [number, number] => [l, pos % MLP.sizes[l]!]),
      ),
      fc.constantFrom(NaN, Infinity, -Infinity),
      fc.constantFrom(DType.FLOAT32, DType.FLOAT16),
      ([layer, at], bad, dtype) => {
        const v = clean.slice();
        v[MLP.offsets[layer]! + at] = bad;
        const verdict = validateUpdate({ taskId: 't-1', delta: encode(v, dtype), numExamples: 10 }, 'owner', task, false);
        assert.ok(!verdict.ok, `${bad} at ${at} of layer ${layer} (${DType[dtype]}) was accepted`);
        assert.equal(ErrorCode[verdict.error.code], 'NON_FINITE_VALUES');
        assert.ok(verdict.error.message.includes(MLP.specs[layer]!.name) && verdict.error.message.endsWith(`index ${at}`), verdict.error.message);
        assert.equal(verdict.closesTask, true);
      },
    ),
    budget(80),
  );
});
