import type * as tf from '@tensorflow/tfjs';
import { layoutOf, type FlatWeights, type WeightSpec } from '@fedunlearn/protocol';
import { silenceTfjsNodeAdvice } from './quiet.js';
import { buildArchitecture, type ArchitectureName, type ArchitectureOptions } from './architectures.js';

/**
 * What the coordinator needs to run a federation: the tfjs layers topology it ships to clients and the initial
 * weights, flat, in the order the model lists them.
 */
export interface ModelDefinition {
  topologyJson: string;
  initial: FlatWeights;
}

/**
 * Weight names as the topology defines them (`<layer>/<weight>`). tfjs makes variable names unique per process by
 * appending suffixes, so the names are derived from the layer names instead.
 */
export function weightSpecsOf(model: tf.LayersModel): WeightSpec[] {
  const specs: WeightSpec[] = [];
  for (const layer of model.layers) {
    for (const w of layer.weights) {
      const base = w.originalName.split('/').pop() ?? w.originalName;
      specs.push({ name: `${layer.name}/${base}`, shape: [...w.shape] as number[] });
    }
  }
  return specs;
}

export function definitionOf(model: tf.LayersModel): ModelDefinition {
  const specs = weightSpecsOf(model);
  const layout = layoutOf(specs);
  const values = new Float32Array(layout.totalSize);
  let offset = 0;
  for (const layer of model.layers) {
    for (const w of layer.getWeights()) {
      const data = w.dataSync() as Float32Array;
      values.set(data, offset);
      offset += data.length;
    }
  }
  return { topologyJson: JSON.stringify(model.toJSON(null, false)), initial: { layout, values } };
}

export function builtInDefinition(name: ArchitectureName, opts: ArchitectureOptions): ModelDefinition {
  // Building the topology and its seeded weights is not training: tfjs's advice to install tfjs-node for speed would
  // appear in every process that makes a definition (tests, the sim, the bench) and say nothing about their training.
  silenceTfjsNodeAdvice();
  const model = buildArchitecture(name, opts);
  try {
    return definitionOf(model);
  } finally {
    model.dispose();
  }
}
