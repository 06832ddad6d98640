import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { builtInDefinition, definitionOf, quietTfjsWarnings } from '@fedunlearn/models';
import { modelSignature } from './model-signature.js';

quietTfjsWarnings();

/** What tfjs itself says the model takes and scores, built from the same JSON. */
async function tfjsSignature(topologyJson: string): Promise<{ inputShape: number[]; numClasses: number }> {
  const m = await tf.models.modelFromJSON({ modelTopology: JSON.parse(topologyJson) });
  try {
    return { inputShape: m.inputs[0]!.shape.slice(1) as number[], numClasses: m.outputs[0]!.shape.at(-1) as number };
  } finally {
    m.dispose();
  }
}

test('modelSignature reads the built-in models as tfjs builds them', async () => {
  for (const [name, inputShape, numClasses] of [['mlp', [784], 10], ['mlp', [10], 3], ['cnn', [28, 28, 1], 10], ['cnn', [16, 16, 3], 5]] as const) {
    const json = builtInDefinition(name, { inputShape: [...inputShape], numClasses, seed: 1 }).topologyJson;
    assert.deepEqual(modelSignature(json), { inputShape: [...inputShape], numClasses }, `${name} [${inputShape}]`);
    assert.deepEqual(modelSignature(json), await tfjsSignature(json));
  }
});

test('modelSignature follows a functional model from its output back past shape-preserving layers', async () => {
  const input = tf.input({ shape: [6, 2], name: 'in' });
  const flat = tf.layers.flatten({ name: 'flat' }).apply(input) as tf.SymbolicTensor;
  const dense = tf.layers.dense({ units: 4, name: 'logits' }).apply(flat) as tf.SymbolicTensor;
  const out = tf.layers.activation({ activation: 'softmax', name: 'probs' }).apply(dense) as tf.SymbolicTensor;
  const model = tf.model({ inputs: input, outputs: out });
  const json = definitionOf(model).topologyJson;
  model.dispose();
  assert.deepEqual(modelSignature(json), { inputShape: [6, 2], numClasses: 4 });
  assert.deepEqual(modelSignature(json), await tfjsSignature(json));
});

test('modelSignature says nothing rather than something wrong', () => {
  assert.equal(modelSignature('not json'), null);
  assert.equal(modelSignature('{}'), null);
  // A variable-length input, and an output that is not a Dense's units.
  const seq = (layers: unknown[]) => JSON.stringify({ class_name: 'Sequential', config: { layers } });
  assert.equal(modelSignature(seq([{ class_name: 'Dense', config: { batch_input_shape: [null, null], units: 3 } }])), null);
  assert.equal(modelSignature(seq([{ class_name: 'Dense', config: { batch_input_shape: [null, 4], units: 3 } }, { class_name: 'Reshape', config: {} }])), null);
  assert.deepEqual(modelSignature(seq([{ class_name: 'Dense', config: { batch_input_shape: [null, 4], units: 3 } }, { class_name: 'Dropout', config: {} }])), { inputShape: [4], numClasses: 3 });
});
