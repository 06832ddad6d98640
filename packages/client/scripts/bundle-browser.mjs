// Builds the SDK's browser bundle: one ES module (dist/bundle/fedunlearn-client.js) holding the SDK, TensorFlow.js
// with its webgl, wasm and cpu backends, socket.io-client and the protobuf codec, with tfjs-backend-wasm's .wasm
// binaries beside it (the browser backend loads them from the bundle's folder by default). Pages without a bundler
// import this file; apps with their own bundler import '@fedunlearn/client' and get dist/browser.js.
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const pkg = fileURLToPath(new URL('..', import.meta.url));
const out = join(pkg, 'dist', 'bundle');
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

/**
 * protobufjs probes for Node's Buffer and long.js with `eval('require')(name)` (@protobufjs/inquire), which finds
 * nothing in a browser and, under a Content-Security-Policy without 'unsafe-eval', is reported as a violation on
 * every page load. The bundle answers those probes with "absent" directly.
 */
function noInquire() {
  return {
    name: 'no-inquire',
    setup(b) {
      b.onResolve({ filter: /^@protobufjs\/inquire$/ }, () => ({ path: 'inquire', namespace: 'no-inquire' }));
      b.onLoad({ filter: /.*/, namespace: 'no-inquire' }, () => ({ contents: 'module.exports = function inquire() { return null; };', loader: 'js' }));
    },
  };
}

const result = await build({
  entryPoints: [join(pkg, 'dist', 'browser.js')],
  outfile: join(out, 'fedunlearn-client.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  legalComments: 'eof',
  metafile: true,
  logLevel: 'warning',
  plugins: [noInquire()],
});

// The bundle must hold nothing Node-only: the backend selection for Node and tfjs-node stay out.
const inputs = Object.keys(result.metafile.inputs);
const nodeOnly = inputs.filter((p) => !p.startsWith('(disabled):') && /tfjs-node|(^|\/)dist\/backend\.js$|worker_threads|better-sqlite3/.test(p));
if (nodeOnly.length > 0) throw new Error(`the browser bundle pulled in Node-only modules: ${nodeOnly.join(', ')}`);

const wasmDir = dirname(createRequire(import.meta.url).resolve('@tensorflow/tfjs-backend-wasm'));
const binaries = readdirSync(wasmDir).filter((f) => f.endsWith('.wasm'));
for (const f of binaries) copyFileSync(join(wasmDir, f), join(out, f));
const bytes = result.metafile.outputs[Object.keys(result.metafile.outputs)[0]].bytes;
console.log(`browser bundle: dist/bundle/fedunlearn-client.js (${(bytes / 1e6).toFixed(2)} MB, ${inputs.length} modules) + ${binaries.join(', ')}`);
