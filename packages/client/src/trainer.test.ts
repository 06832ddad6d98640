import { test } from 'node:test';
import assert from 'node:assert/strict';
import seedrandom from 'seedrandom';
import * as tf from '@tensorflow/tfjs';
import { layerView } from '@fedunlearn/protocol';
import { shuffledOrder, stepCount, Trainer } from './trainer.js';
import type { LocalDataset } from './dataset.js';

// Determinism is promised on the cpu backend; this file tests the trainer, not backend selection.
await tf.setBackend('cpu');

/** `count` points around one centre per class, far enough apart (relative to the noise) to separate linearly. */
function blobs(count: number, classes: number, dims: number, seed: string): LocalDataset {
  const rng = seedrandom(seed);
  const centres = Array.from({ length: classes }, () => Array.from({ length: dims }, () => (rng() * 2 - 1) * 3));
  const x = new Float32Array(count * dims);
  const y = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    const c = i % classes;
    y[i] = c;
    for (let d = 0; d < dims; d++) x[i * dims + d] = centres[c]![d]! + (rng() * 2 - 1) * 0.5;
  }
  return { x, y, inputShape: [dims], numClasses: classes, count };
}

function mlp(dims: number, hidden: number, classes: number): tf.Sequential {
  return tf.sequential({
    layers: [
      tf.layers.dense({ inputShape: [dims], units: hidden, activation: 'relu', name: 'hidden' }),
      tf.layers.dense({ units: classes, activation: 'softmax', name: 'out' }),
    ],
  });
}

/** Topology JSON (what the coordinator ships) and the model's initial weights, flat. */
function exported(model: tf.LayersModel): { topology: string; start: Float32Array } {
  const topology = JSON.stringify(model.toJSON(null, false));
  const start = Float32Array.from(model.getWeights().flatMap((w) => Array.from(w.dataSync())));
  model.dispose();
  return { topology, start };
}

const MLP = exported(mlp(6, 16, 4));
const DATA = blobs(120, 4, 6, 'blobs');

test('layoutFor lists model.weights with topology names, the same from any trainer', async () => {
  const a = new Trainer({ tf });
  const b = new Trainer({ tf });
  const la = await a.layoutFor(MLP.topology);
  const lb = await b.layoutFor(MLP.topology);
  assert.deepEqual(
    la.specs.map((s) => [s.name, s.shape]),
    [
      ['hidden/kernel', [6, 16]],
      ['hidden/bias', [16]],
      ['out/kernel', [16, 4]],
      ['out/bias', [4]],
    ],
  );
  assert.deepEqual(lb, la);
  assert.equal(la.totalSize, 6 * 16 + 16 + 16 * 4 + 4);
  assert.equal(la.totalSize, MLP.start.length);
  a.dispose();
  b.dispose();
});

test('training on separable data lowers the loss and raises the accuracy', async () => {
  const trainer = new Trainer({ tf });
  const before = await trainer.evaluate(MLP.topology, MLP.start, DATA);
  const out = await trainer.train(MLP.topology, MLP.start, DATA, { learningRate: 0.1, batchSize: 16, epochs: 10, seed: 1 });
  const trained = MLP.start.map((v, i) => v + out.delta[i]!);
  const after = await trainer.evaluate(MLP.topology, trained, DATA, 32);
  assert.equal(before.count, 120);
  assert.ok(after.loss < before.loss / 2, `loss ${before.loss} -> ${after.loss}`);
  assert.ok(after.accuracy > 0.95, `accuracy ${before.accuracy} -> ${after.accuracy}`);
  assert.ok(after.accuracy > before.accuracy);
  assert.equal(out.numExamples, 120);
  assert.equal(out.metrics.steps, 80);
  assert.equal(out.metrics.sampleEpochs, 10);
  // Training metrics average over the run, so they sit between the start and the end.
  assert.ok(out.metrics.loss < before.loss && out.metrics.loss > after.loss);
  assert.ok(out.trainMs > 0);

  // predict agrees with evaluate: rows are distributions whose argmax gives the same accuracy.
  const probs = await trainer.predict(MLP.topology, trained, DATA.x, DATA.count);
  assert.equal(probs.length, DATA.count * 4);
  let correct = 0;
  for (let i = 0; i < DATA.count; i++) {
    const row = Array.from(probs.subarray(i * 4, i * 4 + 4));
    assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-5);
    if (row.indexOf(Math.max(...row)) === DATA.y[i]) correct++;
  }
  assert.equal(correct / DATA.count, after.accuracy);
  trainer.dispose();
});

test('same seed, data and start give the same delta; another seed does not', async () => {
  const trainer = new Trainer({ tf });
  const opts = { learningRate: 0.05, batchSize: 8, epochs: 1.5, seed: 42 };
  const a = await trainer.train(MLP.topology, MLP.start, DATA, opts);
  const b = await new Trainer({ tf }).train(MLP.topology, MLP.start, DATA, opts);
  const c = await trainer.train(MLP.topology, MLP.start, DATA, { ...opts, seed: 43 });
  assert.deepEqual(b.delta, a.delta);
  assert.deepEqual(b.metrics, a.metrics);
  assert.notDeepEqual(c.delta, a.delta);
  trainer.dispose();
});

test('shuffledOrder is a seeded permutation that differs per epoch', () => {
  const a = shuffledOrder(50, 7, 0);
  assert.deepEqual([...a].sort((p, q) => p - q), Array.from({ length: 50 }, (_, i) => i));
  assert.deepEqual(shuffledOrder(50, 7, 0), a);
  assert.notDeepEqual(shuffledOrder(50, 7, 1), a);
  assert.notDeepEqual(shuffledOrder(50, 8, 0), a);
});

/**
 * With one-hot inputs (example j lights input j) and a bias-free softmax layer, an SGD step changes kernel row j only
 * if example j is in the batch, by -lr/n * (p - onehot(y_j)) for a batch of n. With weights starting at zero and a
 * tiny learning rate p stays ~uniform, so each row's delta reveals exactly which batches the example was in.
 */
test('fractional epochs run the expected steps over the expected examples', async () => {
  const count = 90;
  const classes = 3;
  const batchSize = 20; // 5 batches per epoch, the last one of 10
  const lr = 1e-3;
  const model = tf.sequential({
    layers: [tf.layers.dense({ inputShape: [count], units: classes, activation: 'softmax', useBias: false, name: 'probe' })],
  });
  const { topology } = exported(model);
  const start = new Float32Array(count * classes);
  const x = new Float32Array(count * count);
  for (let j = 0; j < count; j++) x[j * count + j] = 1;
  const y = Int32Array.from({ length: count }, (_, j) => j % classes);
  const data: LocalDataset = { x, y, inputShape: [count], numClasses: classes, count };
  const trainer = new Trainer({ tf });

  for (const [epochs, steps] of [
    [0.5, 2],
    [1, 5],
    [1.5, 7],
    [0.01, 1],
    [2.99, 14],
  ] as const) {
    assert.equal(stepCount(epochs, count, batchSize), steps);
    const seed = 5;
    const out = await trainer.train(topology, start, data, { learningRate: lr, batchSize, epochs, seed });
    assert.equal(out.metrics.steps, steps);

    // Independently replay which examples each step took, and the expected first-order row updates.
    const weight = new Float64Array(count);
    let processed = 0;
    for (let s = 0; s < steps; s++) {
      const order = shuffledOrder(count, seed, Math.floor(s / 5));
      const b = s % 5;
      const batch = order.subarray(b * batchSize, Math.min(count, (b + 1) * batchSize));
      for (const j of batch) weight[j]! += 1 / batch.length;
      processed += batch.length;
    }
    assert.ok(Math.abs(out.metrics.sampleEpochs - processed / count) < 1e-12);
    for (let j = 0; j < count; j++) {
      for (let c = 0; c < classes; c++) {
        const got = out.delta[j * classes + c]!;
        const expected = -lr * weight[j]! * (1 / classes - (c === y[j] ? 1 : 0));
        if (weight[j] === 0) assert.equal(got, 0, `epochs ${epochs}: example ${j} was not in a batch`);
        else assert.ok(Math.abs(got - expected) <= 1e-3 * Math.abs(expected), `epochs ${epochs} row ${j}: ${got} vs ${expected}`);
      }
    }
  }
  trainer.dispose();
});

test('delta is exactly the trained weights minus the start', async () => {
  let built: tf.LayersModel | undefined;
  const trainer = new Trainer({
    tf,
    modelFactory: async (json) => (built = await tf.models.modelFromJSON({ modelTopology: JSON.parse(json) })),
  });
  const rng = seedrandom('start');
  const start = MLP.start.map(() => rng() - 0.5);
  const out = await trainer.train(MLP.topology, start, DATA, { learningRate: 0.05, batchSize: 32, epochs: 1, seed: 9 });
  assert.ok(built);
  const layout = await trainer.layoutFor(MLP.topology);
  const weights = built.getWeights();
  let changed = 0;
  weights.forEach((w, l) => {
    const now = w.dataSync();
    const d = layerView(layout, out.delta, l);
    const s = layerView(layout, start, l);
    for (let i = 0; i < now.length; i++) {
      assert.equal(d[i], Math.fround(now[i]! - s[i]!));
      if (d[i] !== 0) changed++;
    }
  });
  assert.ok(changed > layout.totalSize / 2);
  trainer.dispose();
});

test('train, evaluate and predict leave no tensors behind', async () => {
  const trainer = new Trainer({ tf });
  await trainer.layoutFor(MLP.topology); // builds and caches the model's variables
  const before = tf.memory().numTensors;
  await trainer.train(MLP.topology, MLP.start, DATA, { learningRate: 0.05, batchSize: 7, epochs: 1.3, seed: 2 });
  assert.equal(tf.memory().numTensors, before);
  await trainer.evaluate(MLP.topology, MLP.start, DATA, 50);
  assert.equal(tf.memory().numTensors, before);
  await trainer.predict(MLP.topology, MLP.start, DATA.x.subarray(0, 6 * 5), 5);
  assert.equal(tf.memory().numTensors, before);
  await assert.rejects(trainer.train(MLP.topology, MLP.start.subarray(1), DATA, { learningRate: 0.05, batchSize: 7, epochs: 1, seed: 2 }), RangeError);
  assert.equal(tf.memory().numTensors, before);
  trainer.dispose();
  await new Promise((r) => setImmediate(r));
  assert.ok(tf.memory().numTensors < before, 'dispose frees the cached model');
});

test('overlapping calls on one model do not disturb each other', async () => {
  const trainer = new Trainer({ tf });
  // Enough steps that training spans several 50 ms yields on any machine; correctness below does not depend on timing.
  const opts = { learningRate: 0.05, batchSize: 4, epochs: 30, seed: 11 };
  const other = MLP.start.map((v) => v * 0.5);
  const alone = await trainer.train(MLP.topology, MLP.start, DATA, opts);
  const evalAlone = await trainer.evaluate(MLP.topology, other, DATA);
  // Training yields to the event loop between steps; the evaluation must not load its weights mid-run.
  const [together, evalTogether] = await Promise.all([
    trainer.train(MLP.topology, MLP.start, DATA, opts),
    trainer.evaluate(MLP.topology, other, DATA),
  ]);
  assert.deepEqual(together.delta, alone.delta);
  assert.deepEqual(evalTogether, evalAlone);
  trainer.dispose();
});

test('bad inputs are refused', async () => {
  const trainer = new Trainer({ tf });
  const ok = { learningRate: 0.05, batchSize: 8, epochs: 1, seed: 1 };
  await assert.rejects(trainer.train(MLP.topology, MLP.start, DATA, { ...ok, batchSize: 0 }), RangeError);
  await assert.rejects(trainer.train(MLP.topology, MLP.start, DATA, { ...ok, epochs: 0 }), RangeError);
  await assert.rejects(trainer.train(MLP.topology, MLP.start, DATA, { ...ok, learningRate: NaN }), RangeError);
  await assert.rejects(trainer.train(MLP.topology, MLP.start, blobs(10, 4, 5, 'other'), ok), RangeError);
  await assert.rejects(trainer.train(MLP.topology, MLP.start, blobs(10, 5, 6, 'other'), ok), RangeError);
  await assert.rejects(trainer.train(MLP.topology, MLP.start, { ...DATA, count: 0, x: new Float32Array(0), y: new Int32Array(0) }, ok), RangeError);
  const empty = await trainer.evaluate(MLP.topology, MLP.start, { ...DATA, count: 0, x: new Float32Array(0), y: new Int32Array(0) });
  assert.equal(empty.count, 0);
  assert.ok(Number.isNaN(empty.loss));
  // A failed call does not wedge the queue behind it.
  const out = await trainer.train(MLP.topology, MLP.start, DATA, ok);
  assert.equal(out.metrics.steps, 15);
  trainer.dispose();
});

test('a small FedEraser-shaped CNN trains on cpu', async () => {
  // The paper's CNN shrunk (filters 4/8, dense 32, 12x12 input): the cpu backend's conv gradients are slow.
  const model = tf.sequential({
    layers: [
      tf.layers.conv2d({ inputShape: [12, 12, 1], filters: 4, kernelSize: 5, activation: 'relu', padding: 'same' }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.conv2d({ filters: 8, kernelSize: 5, activation: 'relu', padding: 'same' }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.flatten(),
      tf.layers.dense({ units: 32, activation: 'relu' }),
      tf.layers.dense({ units: 10, activation: 'softmax' }),
    ],
  });
  const { topology, start } = exported(model);
  // Class c is a bright 3x3 patch at one of ten positions.
  const rng = seedrandom('patches');
  const count = 60;
  const x = new Float32Array(count * 144);
  const y = new Int32Array(count);
  for (let i = 0; i < count; i++) {
    const c = i % 10;
    y[i] = c;
    const r0 = 1 + 5 * Math.floor(c / 5);
    const c0 = 1 + 2 * (c % 5);
    for (let p = 0; p < 144; p++) x[i * 144 + p] = rng() * 0.1;
    for (let dr = 0; dr < 3; dr++) for (let dc = 0; dc < 3; dc++) x[i * 144 + (r0 + dr) * 12 + c0 + dc] = 1;
  }
  const data: LocalDataset = { x, y, inputShape: [12, 12, 1], numClasses: 10, count };
  const trainer = new Trainer({ tf });
  const before = await trainer.evaluate(topology, start, data);
  const out = await trainer.train(topology, start, data, { learningRate: 0.1, batchSize: 10, epochs: 8, seed: 4 });
  const after = await trainer.evaluate(topology, start.map((v, i) => v + out.delta[i]!), data);
  assert.ok(after.loss < before.loss * 0.8, `loss ${before.loss} -> ${after.loss}`);
  assert.ok(after.accuracy > before.accuracy, `accuracy ${before.accuracy} -> ${after.accuracy}`);
  trainer.dispose();
});

test('predict yields to the event loop between batches, so sockets in the same thread keep being served', async () => {
  const trainer = new Trainer({ tf });
  const big = blobs(600, 4, 6, 'many'); // three batches of the 256 predict uses
  let timerRan = false;
  setTimeout(() => (timerRan = true), 0);
  const probs = await trainer.predict(MLP.topology, MLP.start, big.x, big.count);
  assert.equal(probs.length, 600 * 4);
  assert.ok(timerRan, 'a timer due during predict ran before predict finished');
  trainer.dispose();
});

/**
 * The fleet's case: hundreds of clients of one thread queue a short training each on their shared trainer. Each
 * call alone takes a few milliseconds, under the trainer's yield interval, so before the fix the queued calls ran as
 * one chain of promise callbacks and no socket of the thread was read until all were done (1,000-client fleet rounds
 * lost clients to `ping timeout`). A heartbeat over a real loopback socket must be answered while the queue drains.
 */
test('queued short trainings let a heartbeat over a real socket through before the queue drains', async () => {
  const { createServer, connect } = await import('node:net');
  const server = createServer((s) => s.on('data', () => s.write('pong')));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const socket = connect(port, '127.0.0.1');
  await new Promise<void>((r) => socket.once('connect', r));
  const trainer = new Trainer({ tf });
  await trainer.layoutFor(MLP.topology);
  const small = blobs(16, 4, 6, 'short');
  const calls = 40;
  let finished = 0;
  let finishedAtPong = -1;
  let finishedAtTimer = -1;
  socket.once('data', () => (finishedAtPong = finished));
  setTimeout(() => (finishedAtTimer = finished), 0);
  try {
    socket.write('ping');
    await Promise.all(
      Array.from({ length: calls }, (_, i) =>
        trainer.train(MLP.topology, MLP.start, small, { learningRate: 0.1, batchSize: 16, epochs: 1, seed: i }).then(() => finished++),
      ),
    );
    // Both must have happened while trainings were still queued, not after the last one.
    assert.ok(finishedAtTimer >= 0 && finishedAtTimer < calls, `timer ran after ${finishedAtTimer} of ${calls} trainings`);
    if (finishedAtPong < 0) await new Promise<void>((r) => socket.once('data', () => r()));
    assert.ok(finishedAtPong >= 0 && finishedAtPong < calls, `pong read after ${finishedAtPong} of ${calls} trainings`);
  } finally {
    trainer.dispose();
    socket.destroy();
    await new Promise((r) => server.close(r));
  }
});

test('one long training lets a heartbeat timer fire between its batches', async () => {
  const trainer = new Trainer({ tf });
  const data = blobs(4000, 4, 6, 'long');
  let ticks = 0;
  let stepsSeen = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    const out = await trainer.train(MLP.topology, MLP.start, data, { learningRate: 0.1, batchSize: 8, epochs: 2, seed: 1 });
    stepsSeen = out.metrics.steps;
  } finally {
    clearInterval(timer);
    trainer.dispose();
  }
  assert.equal(stepsSeen, 1000);
  assert.ok(ticks > 0, 'the interval ran during the training');
});
