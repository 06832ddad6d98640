import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance } from 'fastify';
import { routeSchema } from './schemas.js';

/**
 * The example client page at /examples/client/: a person joins the federation from a browser with the SDK's
 * browser bundle and 300 MNIST digits, watches rounds and calibration tasks go by, and asks to be forgotten.
 * It needs no operator token (it holds no federation data): the device's own id and secret are typed into it.
 */
const BASE = '/examples/client/';

/**
 * Its own Content-Security-Policy: scripts from this origin only (the page has no inline script or style), plus
 * 'wasm-unsafe-eval', without which a browser refuses to compile tfjs's WebAssembly backend.
 */
export const EXAMPLE_CSP = [
  "default-src 'self'",
  "script-src 'self' 'wasm-unsafe-eval'",
  "style-src 'self'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "worker-src 'self' blob:",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

interface Asset {
  path: string;
  type: string;
}

/** Files the page serves, by URL name: nothing else on disk is reachable (no path is built from the URL). */
function assetTable(): Map<string, Asset> {
  // Shipped beside dist/ in the package: dist/http/examples.js -> ../../examples/client/ (page) and
  // ../examples/client/ (the digits the build wrote); the SDK bundle from @fedunlearn/client's package.
  const page = fileURLToPath(new URL('../../examples/client/', import.meta.url));
  const built = fileURLToPath(new URL('../examples/client/', import.meta.url));
  const sdk = join(sdkPackageDir(), 'dist', 'bundle');
  const js = 'text/javascript; charset=utf-8';
  const wasm = 'application/wasm';
  return new Map<string, Asset>([
    ['', { path: join(page, 'index.html'), type: 'text/html; charset=utf-8' }],
    ['index.html', { path: join(page, 'index.html'), type: 'text/html; charset=utf-8' }],
    ['app.js', { path: join(page, 'app.js'), type: js }],
    ['digits.js', { path: join(page, 'digits.js'), type: js }],
    ['style.css', { path: join(page, 'style.css'), type: 'text/css; charset=utf-8' }],
    ['digits.bin', { path: join(built, 'digits.bin'), type: 'application/octet-stream' }],
    ['sdk/fedunlearn-client.js', { path: join(sdk, 'fedunlearn-client.js'), type: js }],
    ['sdk/tfjs-backend-wasm.wasm', { path: join(sdk, 'tfjs-backend-wasm.wasm'), type: wasm }],
    ['sdk/tfjs-backend-wasm-simd.wasm', { path: join(sdk, 'tfjs-backend-wasm-simd.wasm'), type: wasm }],
    ['sdk/tfjs-backend-wasm-threaded-simd.wasm', { path: join(sdk, 'tfjs-backend-wasm-threaded-simd.wasm'), type: wasm }],
  ]);
}

/** Where @fedunlearn/client is installed; a coordinator without it still starts, and its page's SDK files are 404. */
function sdkPackageDir(): string {
  try {
    return dirname(createRequire(import.meta.url).resolve('@fedunlearn/client/package.json'));
  } catch {
    return fileURLToPath(new URL('./missing-@fedunlearn-client/', import.meta.url));
  }
}

export async function examplesPlugin(app: FastifyInstance): Promise<void> {
  const assets = assetTable();
  const schema = (summary: string) =>
    routeSchema({ summary, tags: ['examples'], operator: false, ok: { 200: { description: 'a file of the example page' }, 302: { description: `to ${BASE}` } }, errors: { 404: 'no such file' } });
  app.get('/examples/client', { schema: schema('Redirects to the example client page') }, async (_req, reply) => reply.redirect(BASE));
  app.get(`${BASE}*`, { schema: schema('The example client page: the SDK in a browser, joining with 300 MNIST digits (see the README)') }, async (req, reply) => {
    const name = (req.params as { '*': string })['*'];
    const asset = assets.get(name);
    if (!asset) return reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no example file ${name}` } });
    let body: Buffer;
    try {
      body = await readFile(asset.path);
    } catch {
      // A package installed without its build output (digits.bin, the SDK bundle): say what is missing.
      return reply.code(404).send({ error: { code: 'NOT_FOUND', message: `${name} is not built: run \`npm run build\`` } });
    }
    return reply
      .header('content-type', asset.type)
      .header('cache-control', 'no-cache')
      .header('x-content-type-options', 'nosniff')
      .header('content-security-policy', EXAMPLE_CSP)
      .send(body);
  });
}

export default examplesPlugin;
