import * as tfjs from '@tensorflow/tfjs';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { firstWorking, preferredOrder, setBackend, startWasm, type BackendChoice, type BackendName, type Tf } from './backend-choice.js';

export type { BackendAttempt, BackendChoice, BackendName, Tf } from './backend-choice.js';

// The browser's half of backend selection: bundlers targeting browsers use this file instead of backend.ts
// (package.json `browser`), so no Node module reaches a page.

/** The browser's order: the GPU through WebGL, then WebAssembly (SIMD when the browser has it), then plain JavaScript. */
export const BACKEND_NAMES: readonly BackendName[] = ['webgl', 'wasm', 'cpu'];
/** Node only (an environment variable); in a browser pass `backends` instead. Exported so both entries match. */
export const BACKEND_ENV = 'FEDUNLEARN_BACKEND';

export interface BackendOptions {
  /**
   * URL of the folder holding tfjs-backend-wasm's .wasm files (with a trailing slash). Default: the folder this
   * module was loaded from, which is where the prebuilt bundle (`@fedunlearn/client/bundle`) keeps them.
   */
  wasmPaths?: string;
}

/** The page's one choice: tfjs's active backend is global to the page (see backend.ts). */
let chosen: Promise<BackendChoice> | undefined;

/**
 * Picks the best TensorFlow.js backend the page can start: webgl, then wasm, then cpu (or `prefer`, in that order).
 * Idempotent like the Node version; `tried` says why the better ones failed (no GPU, .wasm files not found, ...).
 */
export function initBackend(prefer?: BackendName[], opts: BackendOptions = {}): Promise<BackendChoice> {
  chosen ??= choose(prefer, opts).catch((e: unknown) => {
    chosen = undefined;
    throw e;
  });
  return chosen;
}

/** The order to try backends in: `prefer`, else the default order; the second argument is ignored (Node's env override). */
export function backendOrder(prefer: readonly BackendName[] | undefined, _envValue?: string): BackendName[] {
  return preferredOrder(prefer, BACKEND_NAMES);
}

async function choose(prefer: BackendName[] | undefined, opts: BackendOptions): Promise<BackendChoice> {
  const tf: Tf = tfjs;
  return firstWorking(tf, backendOrder(prefer), async (name) => {
    if (name === 'wasm') {
      try {
        setWasmPaths(opts.wasmPaths ?? new URL('./', import.meta.url).href);
      } catch {
        // Only throws after an earlier init attempt; the paths from that attempt still hold.
      }
      await startWasm(tf);
      return;
    }
    await setBackend(tf, name);
    if (name === 'webgl') {
      // A context can exist and still fail at the first kernel (a blocklisted or software GPU): prove it works.
      tf.tidy(() => tf.add(tf.scalar(1), tf.scalar(1)).dataSync());
    }
  });
}
