/**
 * The shape of one example and the class count of a tfjs layers topology (Keras JSON), read from the JSON itself so
 * that the coordinator needs no TensorFlow.js to tell clients what its model takes (Welcome fields 20-21).
 */
export interface ModelSignature {
  inputShape: number[];
  numClasses: number;
}

interface LayerJson {
  class_name?: string;
  name?: string;
  config?: { name?: string; batch_input_shape?: (number | null)[]; units?: number; layers?: LayerJson[] };
  inbound_nodes?: unknown[];
}

interface TopologyJson {
  class_name?: string;
  config?: {
    layers?: LayerJson[];
    input_layers?: unknown[][];
    output_layers?: unknown[][];
  };
}

/** Layers whose output has their input's shape, so the classes are those of the layer before them. */
const SHAPE_PRESERVING = new Set(['Activation', 'Softmax', 'Dropout', 'AlphaDropout', 'GaussianDropout', 'GaussianNoise', 'BatchNormalization', 'LayerNormalization', 'ReLU', 'LeakyReLU', 'ELU', 'PReLU', 'ThresholdedReLU']);

/**
 * The model's signature, or null when the topology has no single input of fixed shape or no Dense output whose
 * units are the classes (a Sequential model, or a functional one with one input and one output). Never throws.
 */
export function modelSignature(topologyJson: string): ModelSignature | null {
  let t: TopologyJson;
  try {
    t = JSON.parse(topologyJson) as TopologyJson;
  } catch {
    return null;
  }
  const layers = t.config?.layers;
  if (!Array.isArray(layers) || layers.length === 0) return null;
  if (t.class_name === 'Sequential') {
    const inputShape = fixedShape(layers[0]!.config?.batch_input_shape);
    const numClasses = classesOf([...layers].reverse());
    return inputShape && numClasses ? { inputShape, numClasses } : null;
  }
  // A functional model: one input layer and one output, followed back through single-input layers to its Dense.
  const ins = t.config?.input_layers;
  const outs = t.config?.output_layers;
  if (ins?.length !== 1 || outs?.length !== 1) return null;
  const byName = new Map(layers.map((l) => [l.config?.name ?? l.name ?? '', l]));
  const inputShape = fixedShape(byName.get(String(ins[0]![0]))?.config?.batch_input_shape);
  const chain: LayerJson[] = [];
  let layer = byName.get(String(outs[0]![0]));
  while (layer && chain.length < layers.length) {
    chain.push(layer);
    const inbound = layer.inbound_nodes?.[0];
    const from = Array.isArray(inbound) && inbound.length === 1 && Array.isArray(inbound[0]) ? String(inbound[0][0]) : undefined;
    layer = from === undefined ? undefined : byName.get(from);
  }
  const numClasses = classesOf(chain);
  return inputShape && numClasses ? { inputShape, numClasses } : null;
}

/** `[null, ...dims]` with every dim a positive integer, without the batch axis. */
function fixedShape(batchShape: (number | null)[] | undefined): number[] | null {
  if (!Array.isArray(batchShape) || batchShape.length < 2) return null;
  const dims = batchShape.slice(1);
  return dims.every((d) => Number.isInteger(d) && (d as number) > 0) ? (dims as number[]) : null;
}

/** The units of the first Dense in `fromOutput` (output first), past shape-preserving layers only. */
function classesOf(fromOutput: LayerJson[]): number | null {
  for (const l of fromOutput) {
    if (l.class_name === 'Dense') {
      const u = l.config?.units;
      return Number.isInteger(u) && (u as number) > 0 ? (u as number) : null;
    }
    if (!SHAPE_PRESERVING.has(l.class_name ?? '')) return null;
  }
  return null;
}
