import { createRequire } from 'node:module';
import path from 'node:path';
import { registerWasmTrainingKernels } from './wasm-kernels.js';

export type Tf = typeof import('@tensorflow/tfjs');
export type BackendName = 'tensorflow' | 'wasm' | 'cpu';

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

export const BACKEND_NAMES: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu'];
export const BACKEND_ENV = 'FEDUNLEARN_BACKEND';

/**
 * tfjs's active backend is process-wide state owned by tfjs itself, so the choice is made once per process and
 * every caller shares it: a second call must not switch the backend under a model another caller is training.
 */
let chosen: Promise<BackendChoice> | undefined;

/**
 * Picks the fastest TensorFlow.js backend that works here: native TensorFlow (tfjs-node), then WebAssembly, then
 * plain JavaScript. `FEDUNLEARN_BACKEND=cpu|wasm|tensorflow` forces one (and fails if it cannot start). Idempotent:
 * later calls return the first call's result whatever they prefer. Logs nothing; `tried` says why others failed.
 */
export function initBackend(prefer?: BackendName[]): Promise<BackendChoice> {
  chosen ??= choose(prefer).catch((e: unknown) => {
    // A failed forced choice may be retried after the environment is fixed.
    chosen = undefined;
    throw e;
  });
  return chosen;
}

/** The order to try backends in: the env override alone, else `prefer`, else the default order. */
export function backendOrder(prefer: readonly BackendName[] | undefined, envValue: string | undefined): BackendName[] {
  const forced = envValue?.trim();
  if (forced !== undefined && forced !== '') {
    if (!isBackendName(forced)) {
      throw new RangeError(`${BACKEND_ENV}=${forced}: expected one of ${BACKEND_NAMES.join(', ')}`);
    }
    return [forced];
  }
  const order = prefer === undefined || prefer.length === 0 ? [...BACKEND_NAMES] : [...new Set(prefer)];
  for (const n of order) if (!isBackendName(n)) throw new RangeError(`unknown backend ${String(n)}`);
  return order;
}

function isBackendName(s: string): s is BackendName {
  return (BACKEND_NAMES as readonly string[]).includes(s);
}

async function choose(prefer: BackendName[] | undefined): Promise<BackendChoice> {
  const order = backendOrder(prefer, process.env[BACKEND_ENV]);
  const tf: Tf = await import('@tensorflow/tfjs');
  const tried: BackendAttempt[] = [];
  for (const name of order) {
    try {
      await activate(tf, name);
      tried.push({ name });
      return { name, tf, tried };
    } catch (e) {
      tried.push({ name, error: e instanceof Error ? e.message : String(e) });
    }
  }
  const why = tried.map((t) => `${t.name}: ${t.error ?? '?'}`).join('; ');
  throw new Error(`no TensorFlow.js backend could start (${why})`);
}

async function activate(tf: Tf, name: BackendName): Promise<void> {
  switch (name) {
    case 'tensorflow':
      // An optional dependency whose install downloads libtensorflow; absent or broken is an expected outcome.
      // The specifier is a variable so that TypeScript does not require the package to build.
      await import(tfjsNodeSpecifier);
      await setBackend(tf, 'tensorflow');
      return;
    case 'wasm':
      await activateWasm(tf);
      return;
    case 'cpu':
      await setBackend(tf, 'cpu');
      return;
  }
}

const tfjsNodeSpecifier: string = '@tensorflow/tfjs-node';

async function activateWasm(tf: Tf): Promise<void> {
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  // The package's Node entry sits in dist/ beside the .wasm binaries; resolving it from this file rather than the
  // cwd finds them wherever the process was started.
  const entry = createRequire(import.meta.url).resolve('@tensorflow/tfjs-backend-wasm');
  try {
    wasm.setWasmPaths(path.dirname(entry) + path.sep);
  } catch {
    // Only throws after an earlier init attempt; the paths from that attempt still hold.
  }
  // tfjs never enables wasm threads in Node; SIMD is detected, and if that binary fails to load the plain one may.
  const start = async (): Promise<boolean> =>
    (await tf.setBackend('wasm').catch(() => false)) && tf.getBackend() === 'wasm';
  let ok = await start();
  if (!ok && (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true) {
    tf.env().set('WASM_HAS_SIMD_SUPPORT', false);
    ok = await start();
  }
  if (!ok) throw new Error('the wasm backend failed to initialise');
  registerWasmTrainingKernels(tf);
}

async function setBackend(tf: Tf, name: BackendName): Promise<void> {
  if (tf.findBackendFactory(name) === null) throw new Error(`backend ${name} is not registered`);
  const ok = await tf.setBackend(name);
  if (!ok || tf.getBackend() !== name) throw new Error(`backend ${name} failed to initialise`);
}
