import { registerWasmTrainingKernels } from './wasm-kernels.js';

/** The platform-neutral half of backend selection, shared by the Node (backend.ts) and browser (backend.browser.ts) entries. */
export type Tf = typeof import('@tensorflow/tfjs');
/** tfjs backend names: `tensorflow` is tfjs-node (Node only), `webgl` the GPU backend of browsers. */
export type BackendName = 'tensorflow' | 'webgl' | 'wasm' | 'cpu';

export interface BackendAttempt {
  name: BackendName;
  /** Why this backend could not be used; absent for the one chosen. */
  error?: string;
}

export interface BackendChoice {
  name: BackendName;
  tf: Tf;
  /** Every backend tried, in order, ending with the chosen one. */
  tried: BackendAttempt[];
}

/** Tries `order` in turn with `activate` and returns the first that starts; throws with every failure otherwise. */
export async function firstWorking(tf: Tf, order: readonly BackendName[], activate: (name: BackendName) => Promise<void>): Promise<BackendChoice> {
  const tried: BackendAttempt[] = [];
  for (const name of order) {
    try {
      await activate(name);
      tried.push({ name });
      return { name, tf, tried };
    } catch (e) {
      tried.push({ name, error: e instanceof Error ? e.message : String(e) });
    }
  }
  const why = tried.map((t) => `${t.name}: ${t.error ?? '?'}`).join('; ');
  throw new Error(`no TensorFlow.js backend could start (${why})`);
}

/** `prefer` deduplicated and checked against `known`, or `known` itself when none is given. */
export function preferredOrder(prefer: readonly BackendName[] | undefined, known: readonly BackendName[]): BackendName[] {
  const order = prefer === undefined || prefer.length === 0 ? [...known] : [...new Set(prefer)];
  for (const n of order) if (!known.includes(n)) throw new RangeError(`unknown backend ${String(n)} (here: ${known.join(', ')})`);
  return order;
}

/**
 * Starts the wasm backend once its .wasm files' location is set (setWasmPaths), and adds the training kernels it
 * lacks. tfjs detects SIMD; if that binary fails to load the plain one may.
 */
export async function startWasm(tf: Tf): Promise<void> {
  const start = async (): Promise<boolean> => (await tf.setBackend('wasm').catch(() => false)) && tf.getBackend() === 'wasm';
  let ok = await start();
  if (!ok && (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true) {
    tf.env().set('WASM_HAS_SIMD_SUPPORT', false);
    ok = await start();
  }
  if (!ok) throw new Error('the wasm backend failed to initialise');
  registerWasmTrainingKernels(tf);
}

/** Makes `name` (already registered with tfjs) the active backend, or throws. */
export async function setBackend(tf: Tf, name: BackendName): Promise<void> {
  if (tf.findBackendFactory(name) === null) throw new Error(`backend ${name} is not registered`);
  const ok = await tf.setBackend(name);
  if (!ok || tf.getBackend() !== name) throw new Error(`backend ${name} failed to initialise`);
}
