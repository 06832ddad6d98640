import seedrandom from 'seedrandom';
import type { LayersModel, Scalar, Tensor, Variable } from '@tensorflow/tfjs';
import { layerView, layoutOf, type WeightLayout } from '@fedunlearn/protocol';
import type { Tf } from './backend.js';
import { assertDataset, featureSize, type LocalDataset } from './dataset.js';

export interface TrainOptions {
  learningRate: number;
  batchSize: number;
  /**
   * Passes over the data; may be fractional: 0.5 = the first half of one shuffled epoch's batches, 1.5 = one epoch
   * then half of the next. Steps run = max(1, floor(epochs * ceil(count / batchSize))).
   */
  epochs: number;
  /** Seeds each epoch's shuffle (with the epoch index), so equal seeds, data and start give equal deltas on cpu. */
  seed: number;
}

export interface TrainMetrics {
  /** Mean cross-entropy over every example processed, measured on the batch before its update. */
  loss: number;
  /** Fraction of processed examples the model classified right, measured like `loss`. */
  accuracy: number;
  steps: number;
  /** Examples processed divided by the dataset size: 0.5 for half an epoch, 1 after a full one. */
  sampleEpochs: number;
}

export interface TrainOutcome {
  /** Trained minus start weights, flat, in the layout of `Trainer.layoutFor`. */
  delta: Float32Array;
  /** Size of the local dataset: the client's FedAvg weight. */
  numExamples: number;
  metrics: TrainMetrics;
  trainMs: number;
}

export interface EvalOutcome {
  /** Mean cross-entropy; NaN when `count` is 0. */
  loss: number;
  /** NaN when `count` is 0. */
  accuracy: number;
  count: number;
}

export type ModelFactory = (topologyJson: string) => Promise<LayersModel> | LayersModel;

/** Probabilities are clipped before the log as Keras does, so a confidently wrong softmax gives a finite loss. */
const EPSILON = 1e-7;
const DEFAULT_EVAL_BATCH = 256;
/**
 * Training yields to the event loop between batches once this long has passed since the last yield (and every call
 * starts after one), so that the SDK's sockets keep answering heartbeats and a page stays responsive.
 */
const YIELD_EVERY_MS = 50;

/**
 * Trains, evaluates and runs TensorFlow.js layers models given as topology JSON plus a flat weight buffer, the form
 * in which the coordinator ships them. Built models are cached per topology; calls are serialised because they
 * share those models' variables.
 */
export class Trainer {
  private readonly tf: Tf;
  private readonly factory: ModelFactory;
  private readonly models = new Map<string, Promise<LayersModel>>();
  private queue: Promise<unknown> = Promise.resolve();

  constructor(opts: { tf: Tf; modelFactory?: ModelFactory }) {
    this.tf = opts.tf;
    this.factory =
      opts.modelFactory ??
      ((json: string) => opts.tf.models.modelFromJSON({ modelTopology: JSON.parse(json) }));
  }

  /** The model's weight specs in tfjs order (model.weights), names as in the topology. */
  async layoutFor(topologyJson: string): Promise<WeightLayout> {
    return layoutOfModel(await this.model(topologyJson));
  }

  train(topologyJson: string, start: Float32Array, data: LocalDataset, opts: TrainOptions): Promise<TrainOutcome> {
    return this.serial(() => this.trainNow(topologyJson, start, data, opts));
  }

  evaluate(
    topologyJson: string,
    weights: Float32Array,
    data: LocalDataset,
    batchSize = DEFAULT_EVAL_BATCH,
  ): Promise<EvalOutcome> {
    return this.serial(() => this.evaluateNow(topologyJson, weights, data, batchSize));
  }

  /** Softmax outputs for `count` examples, flat `count x classes`. */
  predict(topologyJson: string, weights: Float32Array, x: Float32Array, count: number): Promise<Float32Array> {
    return this.serial(() => this.predictNow(topologyJson, weights, x, count));
  }

  /**
   * Frees every cached model's variables once the calls already made have finished; the trainer rebuilds models
   * if used again.
   */
  dispose(): void {
    void this.serial(async () => {
      const models = [...this.models.values()];
      this.models.clear();
      for (const m of models) (await m.catch(() => undefined))?.dispose();
    }, false);
  }

  /**
   * Runs `fn` after every call made before it, and only after a turn of the event loop. Without that turn, calls
   * queued together (hundreds of virtual clients sharing this trainer in one simulation thread, each training a few
   * batches) ran back to back as one chain of promise callbacks: no socket of that thread read a ping until the whole
   * queue was done, and the coordinator dropped its clients with `ping timeout`.
   */
  private serial<T>(fn: () => Promise<T>, yieldFirst = true): Promise<T> {
    const run = (yieldFirst ? this.queue.then(yieldToEventLoop) : this.queue).then(fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private model(topologyJson: string): Promise<LayersModel> {
    let m = this.models.get(topologyJson);
    if (m === undefined) {
      m = Promise.resolve().then(() => this.factory(topologyJson));
      this.models.set(topologyJson, m);
      m.catch(() => this.models.delete(topologyJson));
    }
    return m;
  }

  /** The cached model for `topologyJson` with `weights` loaded, checked against `data`'s shape if given. */
  private async loaded(topologyJson: string, weights: Float32Array): Promise<{ model: LayersModel; layout: WeightLayout }> {
    const model = await this.model(topologyJson);
    const layout = layoutOfModel(model);
    if (weights.length !== layout.totalSize) {
      throw new RangeError(`weights hold ${weights.length} values, the model has ${layout.totalSize}`);
    }
    const tf = this.tf;
    tf.tidy(() => {
      model.setWeights(layout.specs.map((s, i) => tf.tensor(layerView(layout, weights, i), s.shape, 'float32')));
    });
    return { model, layout };
  }

  private async trainNow(
    topologyJson: string,
    start: Float32Array,
    data: LocalDataset,
    opts: TrainOptions,
  ): Promise<TrainOutcome> {
    checkTrainOptions(opts);
    assertDataset(data);
    if (data.count === 0) throw new RangeError('cannot train on an empty dataset');
    const tf = this.tf;
    const { model, layout } = await this.loaded(topologyJson, start);
    const classes = checkModelFits(model, data);

    const batchesPerEpoch = Math.ceil(data.count / opts.batchSize);
    const steps = stepCount(opts.epochs, data.count, opts.batchSize);
    const vars = model.trainableWeights.map((w) => w.read() as Variable);
    const optimizer = tf.train.sgd(opts.learningRate);
    let lossSum: Tensor = tf.scalar(0);
    let correctSum: Tensor = tf.scalar(0);
    let processed = 0;
    let order: Int32Array = new Int32Array(0);
    const t0 = performance.now();
    let lastYield = t0;
    try {
      for (let step = 0; step < steps; step++) {
        const epoch = Math.floor(step / batchesPerEpoch);
        const b = step % batchesPerEpoch;
        if (b === 0) order = shuffledOrder(data.count, opts.seed, epoch);
        const idx = order.subarray(b * opts.batchSize, Math.min(data.count, (b + 1) * opts.batchSize));
        const { x, y } = batchTensors(tf, data, idx);
        let batchCorrect: Tensor | undefined;
        try {
          const cost = optimizer.minimize(
            () => {
              const probs = model.apply(x, { training: true }) as Tensor;
              // Accuracy comes from the same forward pass as the loss; kept past minimize's tidy, freed below.
              batchCorrect = tf.keep(tf.sum(tf.cast(tf.equal(tf.argMax(probs, -1), y), 'float32')));
              return crossEntropy(tf, probs, y, classes);
            },
            true,
            vars,
          );
          if (cost === null) throw new Error('optimizer returned no cost');
          const nextLoss = tf.tidy(() => tf.add(lossSum, tf.mul(cost, idx.length)));
          const nextCorrect = tf.add(correctSum, batchCorrect!);
          cost.dispose();
          lossSum.dispose();
          correctSum.dispose();
          lossSum = nextLoss;
          correctSum = nextCorrect;
        } finally {
          x.dispose();
          y.dispose();
          batchCorrect?.dispose();
        }
        processed += idx.length;
        if (performance.now() - lastYield > YIELD_EVERY_MS) {
          await yieldToEventLoop();
          lastYield = performance.now();
        }
      }
      const loss = (await lossSum.data())[0]! / processed;
      const accuracy = (await correctSum.data())[0]! / processed;
      const trained = await readWeights(tf, model);
      const trainMs = performance.now() - t0;
      const delta = new Float32Array(layout.totalSize);
      for (let i = 0; i < delta.length; i++) delta[i] = trained[i]! - start[i]!;
      return {
        delta,
        numExamples: data.count,
        metrics: { loss, accuracy, steps, sampleEpochs: processed / data.count },
        trainMs,
      };
    } finally {
      lossSum.dispose();
      correctSum.dispose();
      optimizer.dispose();
    }
  }

  private async evaluateNow(
    topologyJson: string,
    weights: Float32Array,
    data: LocalDataset,
    batchSize: number,
  ): Promise<EvalOutcome> {
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batch size ${batchSize}`);
    assertDataset(data);
    const tf = this.tf;
    const { model } = await this.loaded(topologyJson, weights);
    const classes = checkModelFits(model, data);
    if (data.count === 0) return { loss: NaN, accuracy: NaN, count: 0 };
    let loss = 0;
    let correct = 0;
    for (let from = 0; from < data.count; from += batchSize) {
      const idx = range(from, Math.min(data.count, from + batchSize));
      const { x, y } = batchTensors(tf, data, idx);
      const { l, c } = tf.tidy(() => {
        const probs = model.apply(x, { training: false }) as Tensor;
        return {
          l: tf.mul(crossEntropy(tf, probs, y, classes), idx.length),
          c: tf.sum(tf.cast(tf.equal(tf.argMax(probs, -1), y), 'float32')),
        };
      });
      x.dispose();
      y.dispose();
      loss += (await l.data())[0]!;
      correct += (await c.data())[0]!;
      l.dispose();
      c.dispose();
      await yieldToEventLoop();
    }
    return { loss: loss / data.count, accuracy: correct / data.count, count: data.count };
  }

  private async predictNow(
    topologyJson: string,
    weights: Float32Array,
    x: Float32Array,
    count: number,
  ): Promise<Float32Array> {
    const tf = this.tf;
    const { model } = await this.loaded(topologyJson, weights);
    const inputShape = modelInputShape(model);
    const f = featureSize({ inputShape });
    if (!Number.isInteger(count) || count < 0 || x.length !== count * f) {
      throw new RangeError(`x holds ${x.length} values, expected ${count} x ${f}`);
    }
    const classes = modelClasses(model);
    const out = new Float32Array(count * classes);
    for (let from = 0; from < count; from += DEFAULT_EVAL_BATCH) {
      const n = Math.min(count - from, DEFAULT_EVAL_BATCH);
      const probs = tf.tidy(() => {
        const xb = tf.tensor(x.subarray(from * f, (from + n) * f), [n, ...inputShape], 'float32');
        return model.apply(xb, { training: false }) as Tensor;
      });
      out.set(await probs.data<'float32'>(), from * classes);
      probs.dispose();
      // A large evaluation set must not starve sockets sharing this thread (a coordinator in a simulation).
      await yieldToEventLoop();
    }
    return out;
  }
}

/** Steps a call with these options runs. */
export function stepCount(epochs: number, count: number, batchSize: number): number {
  return Math.max(1, Math.floor(epochs * Math.ceil(count / batchSize)));
}

/** A permutation of [0, count) drawn from a generator seeded by (seed, epoch): Fisher-Yates. */
export function shuffledOrder(count: number, seed: number, epoch: number): Int32Array {
  const rng = seedrandom(`fedunlearn:${seed}:${epoch}`);
  const order = new Int32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  return order;
}

function layoutOfModel(model: LayersModel): WeightLayout {
  return layoutOf(model.weights.map((w) => ({ name: w.originalName, shape: [...w.shape] as number[] })));
}

function checkTrainOptions(o: TrainOptions): void {
  if (!(Number.isFinite(o.learningRate) && o.learningRate > 0)) throw new RangeError(`learning rate ${o.learningRate}`);
  if (!Number.isInteger(o.batchSize) || o.batchSize < 1) throw new RangeError(`batch size ${o.batchSize}`);
  if (!(Number.isFinite(o.epochs) && o.epochs > 0)) throw new RangeError(`epochs ${o.epochs}`);
  if (!Number.isFinite(o.seed)) throw new RangeError(`seed ${o.seed}`);
}

function modelInputShape(model: LayersModel): number[] {
  const shape = model.inputs[0]?.shape.slice(1);
  if (shape === undefined || model.inputs.length !== 1 || shape.some((d) => d === null)) {
    throw new Error('the model must have one input of fixed shape');
  }
  return shape as number[];
}

function modelClasses(model: LayersModel): number {
  const shape = model.outputs[0]?.shape;
  const classes = shape?.[shape.length - 1];
  if (model.outputs.length !== 1 || shape?.length !== 2 || typeof classes !== 'number') {
    throw new Error('the model must have one output of shape [batch, classes]');
  }
  return classes;
}

/** The model's class count, after checking the dataset's examples and labels fit the model. */
function checkModelFits(model: LayersModel, data: LocalDataset): number {
  const inputShape = modelInputShape(model);
  if (inputShape.length !== data.inputShape.length || inputShape.some((d, i) => d !== data.inputShape[i])) {
    throw new RangeError(`dataset examples are [${data.inputShape}], the model takes [${inputShape}]`);
  }
  const classes = modelClasses(model);
  if (data.numClasses > classes) throw new RangeError(`dataset has ${data.numClasses} classes, the model ${classes}`);
  return classes;
}

function range(from: number, to: number): Int32Array {
  const r = new Int32Array(to - from);
  for (let i = 0; i < r.length; i++) r[i] = from + i;
  return r;
}

/** Copies the examples at `idx` into fresh tensors; fresh buffers because the cpu backend keeps the array it is given. */
function batchTensors(tf: Tf, data: LocalDataset, idx: Int32Array): { x: Tensor; y: Tensor } {
  const f = featureSize(data);
  const xs = new Float32Array(idx.length * f);
  const ys = new Int32Array(idx.length);
  for (let i = 0; i < idx.length; i++) {
    const j = idx[i]!;
    xs.set(data.x.subarray(j * f, (j + 1) * f), i * f);
    ys[i] = data.y[j]!;
  }
  return { x: tf.tensor(xs, [idx.length, ...data.inputShape], 'float32'), y: tf.tensor1d(ys, 'int32') };
}

/** Sparse categorical cross-entropy of softmax outputs `probs` against integer labels, mean over the batch. */
function crossEntropy(tf: Tf, probs: Tensor, labels: Tensor, classes: number): Scalar {
  return tf.tidy(() => {
    const logp = tf.log(tf.clipByValue(probs, EPSILON, 1 - EPSILON));
    const picked = tf.sum(tf.mul(tf.oneHot(labels as Tensor & { rank: 1 }, classes), logp), -1);
    return tf.neg(tf.mean(picked)) as Scalar;
  });
}

async function readWeights(tf: Tf, model: LayersModel): Promise<Float32Array> {
  const flat = tf.tidy(() => tf.concat(model.weights.map((w) => tf.reshape(w.read(), [-1]))));
  try {
    return (await flat.data<'float32'>()).slice();
  } finally {
    flat.dispose();
  }
}

/**
 * Resolves after pending I/O and timers have had their turn: `setImmediate` in Node (after the poll phase, without
 * setTimeout's 1 ms floor); a MessageChannel message in a browser (a macrotask, without the 4 ms clamp of nested
 * timeouts); setTimeout elsewhere.
 */
function yieldToEventLoop(): Promise<void> {
  const g = globalThis as unknown as { setImmediate?: (cb: () => void) => unknown; MessageChannel?: new () => BrowserChannel };
  if (typeof g.setImmediate === 'function') {
    const immediate = g.setImmediate;
    return new Promise((resolve) => void immediate(resolve));
  }
  if (typeof g.MessageChannel === 'function') {
    const { port1, port2 } = new g.MessageChannel();
    return new Promise((resolve) => {
      port1.onmessage = () => {
        port1.close();
        resolve();
      };
      port2.postMessage(null);
    });
  }
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** The part of a browser's MessageChannel used above (Node's typings describe its own). */
interface BrowserChannel {
  port1: { onmessage: (() => void) | null; close(): void };
  port2: { postMessage(m: unknown): void };
}
