import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeTensor, ErrorCode, fedunlearn, layerView, layoutOf } from '@fedunlearn/protocol';
import { validateUpdate, type OpenTask } from './update-validation.js';

// Examples beside the fuzzer (update-validation.fuzz.test.ts): each refusal's message and ref, which the fuzzer does not
// pin down, and the errors that are not the peer's fault.

const TaskKind = fedunlearn.v1.TaskKind;
const layout = layoutOf([
  { name: 'd/kernel', shape: [2, 2] },
  { name: 'd/bias', shape: [2] },
]);
const task: OpenTask = { clientId: 'owner', kind: TaskKind.TRAIN, layout };
const values = Float32Array.of(1, 2, 3, 4, 5, 6);
const delta = layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, values, i)));

/** `t` null: no open task has the update's id. */
function refusal(update: fedunlearn.v1.IUpdate, sender = 'owner', t: OpenTask | null = task, closed = false) {
  const v = validateUpdate(update, sender, t ?? undefined, closed);
  assert.ok(!v.ok, 'refused');
  return { code: ErrorCode[v.error.code], message: v.error.message, ref: v.error.ref, closesTask: v.closesTask };
}

test('each refusal names the task and says what is wrong', () => {
  assert.deepEqual(refusal({ taskId: 't-9', delta, numExamples: 5 }, 'owner', null, false), {
    code: 'UNKNOWN_TASK',
    message: 'no task t-9',
    ref: 't-9',
    closesTask: false,
  });
  assert.deepEqual(refusal({ taskId: 't-9', delta, numExamples: 5 }, 'owner', null, true), {
    code: 'STALE_TASK',
    message: 'task t-9 is closed (answered, expired or replaced)',
    ref: 't-9',
    closesTask: false,
  });
  assert.deepEqual(refusal({ taskId: 't-9', delta, numExamples: 5 }, 'intruder'), {
    code: 'PERMISSION_DENIED',
    message: 'task t-9 was not given to intruder',
    ref: 't-9',
    closesTask: false,
  });
  assert.deepEqual(refusal({ taskId: 't-9', delta, numExamples: 0 }), {
    code: 'INVALID_ARGUMENT',
    message: 'numExamples must be positive, got 0',
    ref: 't-9',
    closesTask: false,
  });
  // A content fault carries the decoder's message and ends the task.
  assert.deepEqual(refusal({ taskId: 't-9', delta: delta.slice(1), numExamples: 5 }), {
    code: 'SHAPE_MISMATCH',
    message: '1 tensors, the model has 2',
    ref: 't-9',
    closesTask: true,
  });
});

test('an update without a task id is refused with an empty ref; one without a delta is a shape mismatch, not a crash', () => {
  assert.deepEqual(refusal({ numExamples: 5 }, 'owner', null, false), { code: 'UNKNOWN_TASK', message: 'no task ', ref: '', closesTask: false });
  assert.deepEqual(refusal({ taskId: 't-1', numExamples: 5 }), { code: 'SHAPE_MISMATCH', message: '0 tensors, the model has 2', ref: 't-1', closesTask: true });
  // EVALUATE answers carry metrics only: no delta is expected, and none is decoded.
  const v = validateUpdate({ taskId: 't-1', numExamples: 5, metrics: { accuracy: 0.5 } }, 'owner', { ...task, kind: TaskKind.EVALUATE }, false);
  assert.ok(v.ok);
  assert.equal(v.update.delta, null);
  assert.deepEqual(v.update.metrics, { accuracy: 0.5 });
});

test('a decoding error that is not the peer fault (a target of the wrong size) is thrown, not reported as the peer fault', () => {
  assert.throws(() => validateUpdate({ taskId: 't-1', delta, numExamples: 5 }, 'owner', task, false, new Float32Array(3)), {
    name: 'RangeError',
    message: 'target holds 3 values, layout 6',
  });
  // With the right target the values land in it.
  const target = new Float32Array(6);
  const v = validateUpdate({ taskId: 't-1', delta, numExamples: 5 }, 'owner', task, false, target);
  assert.ok(v.ok);
  assert.equal(v.update.delta, target);
  assert.deepEqual(target, values);
});

/** The accepted update's metrics and norm, or fails. */
function accepted(update: fedunlearn.v1.IUpdate, t: OpenTask = task) {
  const v = validateUpdate(update, 'owner', t, false);
  assert.ok(v.ok, v.ok ? '' : `refused: ${v.error.message}`);
  return v.update;
}

test('metrics: the documented keys at the ends of their ranges are accepted, NaN dropped; out of range or unknown keys end the task', () => {
  const ok = accepted({ taskId: 't', delta, numExamples: 5, metrics: { loss: -0.5, accuracy: 0, steps: 0, samples: 0 } });
  assert.deepEqual(ok.metrics, { loss: -0.5, accuracy: 0, steps: 0, samples: 0 });
  assert.deepEqual(accepted({ taskId: 't', delta, numExamples: 5, metrics: { accuracy: 1, loss: Number.NaN } }).metrics, { accuracy: 1 });
  const range = (k: string, v: number) => refusal({ taskId: 't', delta, numExamples: 5, metrics: { [k]: v } });
  assert.deepEqual(range('accuracy', 1.5), {
    code: 'INVALID_ARGUMENT',
    message: 'metric accuracy = 1.5 is out of range (fraction of local examples classified correctly, in [0, 1])',
    ref: 't',
    closesTask: true,
  });
  assert.equal(range('accuracy', -0.25).message, 'metric accuracy = -0.25 is out of range (fraction of local examples classified correctly, in [0, 1])');
  assert.equal(range('steps', -1).message, 'metric steps = -1 is out of range (optimizer steps taken (>= 0))');
  assert.equal(range('samples', -2).message, 'metric samples = -2 is out of range (examples processed, an epoch over n examples counting n (>= 0))');
  assert.deepEqual(refusal({ taskId: 't', delta, numExamples: 5, metrics: { sourceRound: 3 } }), {
    code: 'METRIC_NOT_ALLOWED',
    message: 'metric "sourceRound" is not accepted from clients (allowed: loss, accuracy, steps, samples)',
    ref: 't',
    closesTask: true,
  });
  // A long key is quoted cut to 64 characters.
  assert.equal(refusal({ taskId: 't', delta, numExamples: 5, metrics: { ['k'.repeat(100)]: 1 } }).message, `metric "${'k'.repeat(64)}" is not accepted from clients (allowed: loss, accuracy, steps, samples)`);
});

test('the example cap and the norm bound: at the bound accepted, above it refused with both figures, ending the task', () => {
  assert.equal(accepted({ taskId: 't', delta, numExamples: 7 }, { ...task, maxExamples: 7 }).numExamples, 7);
  assert.deepEqual(refusal({ taskId: 't', delta, numExamples: 8 }, 'owner', { ...task, maxExamples: 7 }), {
    code: 'TOO_MANY_EXAMPLES',
    message: 'numExamples 8 is above the 7 this client may claim (declared at hello, capped)',
    ref: 't',
    closesTask: true,
  });
  const norm = accepted({ taskId: 't', delta, numExamples: 5 }).norm;
  assert.equal(norm, Math.hypot(...values));
  assert.equal(accepted({ taskId: 't', delta, numExamples: 5 }, { ...task, maxNorm: norm }).norm, norm);
  const bound = norm * (1 - 1e-9);
  assert.deepEqual(refusal({ taskId: 't', delta, numExamples: 5 }, 'owner', { ...task, maxNorm: bound }), {
    code: 'UPDATE_NORM_TOO_LARGE',
    message: `update norm ${norm.toPrecision(4)} is above the bound ${bound.toPrecision(4)}`,
    ref: 't',
    closesTask: true,
  });
});
