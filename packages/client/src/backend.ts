import { createRequire } from 'node:module';
import path from 'node:path';
import { firstWorking, preferredOrder, setBackend, startWasm, type BackendChoice, type BackendName, type Tf } from './backend-choice.js';

export type { BackendAttempt, BackendChoice, BackendName, Tf } from './backend-choice.js';

// Node's half of backend selection; bundlers targeting browsers swap in backend.browser.ts (package.json `browser`).

export const BACKEND_NAMES: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu'];
export const BACKEND_ENV = 'FEDUNLEARN_BACKEND';

export interface BackendOptions {
  /** Folder holding tfjs-backend-wasm's .wasm files; default: the installed package's own (found from this file). */
  wasmPaths?: string;
}

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
export function initBackend(prefer?: BackendName[], opts: BackendOptions = {}): Promise<BackendChoice> {
  chosen ??= choose(prefer, opts).catch((e: unknown) => {
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
  return preferredOrder(prefer, BACKEND_NAMES);
}

function isBackendName(s: string): s is BackendName {
  return (BACKEND_NAMES as readonly string[]).includes(s);
}

async function choose(prefer: BackendName[] | undefined, opts: BackendOptions): Promise<BackendChoice> {
  const order = backendOrder(prefer, process.env[BACKEND_ENV]);
  const tf: Tf = await import('@tensorflow/tfjs');
  const choice = await firstWorking(tf, order, (name) => activate(tf, name, opts));
  // The choice is reported (backendName, the hello, `tried` says why tfjs-node failed): tfjs's own banner telling
  // the user to install tfjs-node would only repeat it, once per process.
  silenceTfjsNodeAdvice(tf);
  return choice;
}

async function activate(tf: Tf, name: BackendName, opts: BackendOptions): Promise<void> {
  switch (name) {
    case 'tensorflow':
      // An optional dependency whose install downloads libtensorflow; absent or broken is an expected outcome.
      // The specifier is a variable so that TypeScript does not require the package to build.
      await import(tfjsNodeSpecifier);
      await setBackend(tf, 'tensorflow');
      return;
    case 'wasm':
      await activateWasm(tf, opts);
      return;
    case 'cpu':
      await setBackend(tf, 'cpu');
      return;
    default:
      throw new Error(`backend ${name} is not available in Node`);
  }
}

const tfjsNodeSpecifier: string = '@tensorflow/tfjs-node';

async function activateWasm(tf: Tf, opts: BackendOptions): Promise<void> {
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  // The package's Node entry sits in dist/ beside the .wasm binaries; resolving it from this file rather than the
  // cwd finds them wherever the process was started.
  const entry = createRequire(import.meta.url).resolve('@tensorflow/tfjs-backend-wasm');
  try {
    wasm.setWasmPaths(opts.wasmPaths ?? path.dirname(entry) + path.sep);
  } catch {
    // Only throws after an earlier init attempt; the paths from that attempt still hold.
  }
  // tfjs never enables wasm threads in Node.
  await startWasm(tf);
}

/**
 * Marks tfjs's cpu backend (the instance registered now and any it makes later) as already used, so that its
 * first-tensor banner advising tfjs-node in Node is not printed; every other tfjs warning still is. The SDK cannot
 * depend on @fedunlearn/models, whose silenceTfjsNodeAdvice does the same for processes that only build models.
 * A no-op in browsers (no banner there) and if a tfjs release changes these internals.
 */
function silenceTfjsNodeAdvice(tf: Tf): void {
  const engine = tf.engine() as unknown as {
    registry?: Record<string, unknown>;
    registryFactory?: Record<string, { factory: () => unknown; quietAdvice?: true } | undefined>;
  };
  const markUsed = <T>(backend: T): T => {
    const b = backend as { firstUse?: unknown } | null | undefined;
    if (b && typeof b === 'object' && typeof b.firstUse === 'boolean') b.firstUse = false;
    return backend;
  };
  markUsed(engine.registry?.cpu);
  const entry = engine.registryFactory?.cpu;
  if (!entry || entry.quietAdvice) return;
  const make = entry.factory;
  entry.factory = () => markUsed(make());
  entry.quietAdvice = true;
}
