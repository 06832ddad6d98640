import * as tf from '@tensorflow/tfjs';

/**
 * For processes that build models with tfjs but never train (the coordinator): tfjs's advice to install tfjs-node,
 * printed on the first tensor of its cpu backend in Node, would only mislead an operator. Production mode silences
 * tfjs's own warnings and nothing else. Process-wide, like every tfjs setting, so only an entry point calls it.
 */
export function quietTfjsWarnings(): void {
  tf.env().set('PROD', true);
}
