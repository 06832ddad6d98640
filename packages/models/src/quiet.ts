import * as tf from '@tensorflow/tfjs';

/**
 * For processes that build models with tfjs but never train (the coordinator): tfjs's advice to install tfjs-node,
 * printed on the first tensor of its cpu backend in Node, would only mislead an operator. Production mode silences
 * tfjs's own warnings and nothing else. Process-wide, like every tfjs setting, so only an entry point calls it.
 */
export function quietTfjsWarnings(): void {
  tf.env().set('PROD', true);
}

/**
 * Silences that one banner only ("Hi, looks like you are running TensorFlow.js in Node.js ... install our node
 * backend"), leaving every other tfjs warning on. The cpu backend prints it on the first tensor an instance of it
 * makes, and tfjs makes a fresh instance whenever it (re)initialises the backend, so the instance registered now and
 * every later one start as already used. For places where the backend choice is reported anyway (the SDK reports the
 * backend it chose and why the others failed; the sim prints it on its first line) or where tfjs only builds a model
 * and never trains (a built-in definition's seeded initial weights). Idempotent; a no-op if tfjs changes these
 * internals or drops the banner.
 */
export function silenceTfjsNodeAdvice(): void {
  const engine = tf.engine() as unknown as {
    registry?: Record<string, { firstUse?: unknown } | undefined>;
    registryFactory?: Record<string, { factory: () => unknown; [QUIET]?: true } | undefined>;
  };
  markUsed(engine.registry?.cpu);
  const entry = engine.registryFactory?.cpu;
  if (!entry || entry[QUIET]) return;
  const make = entry.factory;
  entry.factory = () => markUsed(make());
  entry[QUIET] = true;
}

const QUIET = Symbol('fedunlearn.quietCpuBackend');

function markUsed<T>(backend: T): T {
  const b = backend as { firstUse?: unknown } | null | undefined;
  if (b && typeof b === 'object' && typeof b.firstUse === 'boolean') b.firstUse = false;
  return backend;
}
