import * as tf from '@tensorflow/tfjs';

/** Built-in architectures. Layer names are fixed, so weight names are stable across processes and releases. */
export type ArchitectureName = 'mlp' | 'cnn';

export interface ArchitectureOptions {
  inputShape: number[];
  numClasses: number;
  /** Seeds the weight initialisers, so that the initial model is reproducible. */
  seed: number;
}

/** 784-128-64-10 MLP, the reference implementation's model in UNLEARNING.md. */
export function buildMlp(opts: ArchitectureOptions): tf.LayersModel {
  const size = opts.inputShape.reduce((a, b) => a * b, 1);
  const init = (k: number) => tf.initializers.glorotUniform({ seed: opts.seed * 101 + k });
  const model = tf.sequential({ name: 'mlp' });
  model.add(tf.layers.reshape({ name: 'flatten', inputShape: opts.inputShape, targetShape: [size] }));
  model.add(tf.layers.dense({ name: 'dense1', units: 128, activation: 'relu', kernelInitializer: init(1) }));
  model.add(tf.layers.dense({ name: 'dense2', units: 64, activation: 'relu', kernelInitializer: init(2) }));
  model.add(tf.layers.dense({ name: 'out', units: opts.numClasses, activation: 'softmax', kernelInitializer: init(3) }));
  return model;
}

/** The FedEraser paper's MNIST network: 2 conv + 2 fully connected layers. */
export function buildCnn(opts: ArchitectureOptions): tf.LayersModel {
  if (opts.inputShape.length !== 3) throw new RangeError(`cnn needs an image input [h, w, c], got [${opts.inputShape.join(',')}]`);
  const init = (k: number) => tf.initializers.glorotUniform({ seed: opts.seed * 101 + k });
  const model = tf.sequential({ name: 'cnn' });
  model.add(tf.layers.conv2d({ name: 'conv1', inputShape: opts.inputShape, filters: 32, kernelSize: 5, padding: 'same', activation: 'relu', kernelInitializer: init(1) }));
  model.add(tf.layers.maxPooling2d({ name: 'pool1', poolSize: 2 }));
  model.add(tf.layers.conv2d({ name: 'conv2', filters: 64, kernelSize: 5, padding: 'same', activation: 'relu', kernelInitializer: init(2) }));
  model.add(tf.layers.maxPooling2d({ name: 'pool2', poolSize: 2 }));
  model.add(tf.layers.flatten({ name: 'flatten' }));
  model.add(tf.layers.dense({ name: 'fc1', units: 512, activation: 'relu', kernelInitializer: init(3) }));
  model.add(tf.layers.dense({ name: 'out', units: opts.numClasses, activation: 'softmax', kernelInitializer: init(4) }));
  return model;
}

export function buildArchitecture(name: ArchitectureName, opts: ArchitectureOptions): tf.LayersModel {
  switch (name) {
    case 'mlp':
      return buildMlp(opts);
    case 'cnn':
      return buildCnn(opts);
    default:
      throw new RangeError(`unknown architecture '${String(name)}' (allowed: mlp, cnn)`);
  }
}
