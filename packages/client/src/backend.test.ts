import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import os from 'node:os';
import { BACKEND_ENV, backendOrder, initBackend } from './backend.js';

const run = promisify(execFile);
const backendModule = fileURLToPath(new URL('./backend.js', import.meta.url));

/** Runs initBackend in a fresh process (the choice is once per process) started from an unrelated directory. */
async function initInChild(env: Record<string, string | undefined>, prefer?: string[]): Promise<unknown> {
  const script = `
    const { initBackend } = await import(${JSON.stringify(backendModule)});
    try {
      const r = await initBackend(${JSON.stringify(prefer)});
      const k = r.tf.getKernel('Conv2DBackpropFilter', 'wasm') !== undefined;
      process.stdout.write(JSON.stringify({ name: r.name, active: r.tf.getBackend(), tried: r.tried, filterGrad: k }));
    } catch (e) {
      process.stdout.write(JSON.stringify({ error: e.message }));
    }`;
  const childEnv = { ...process.env };
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete childEnv[k];
    else childEnv[k] = v;
  }
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
    cwd: os.tmpdir(),
    env: childEnv,
  });
  return JSON.parse(stdout) as unknown;
}

test('backendOrder: default order, preferences deduplicated, env forces a single backend', () => {
  assert.deepEqual(backendOrder(undefined, undefined), ['tensorflow', 'wasm', 'cpu']);
  assert.deepEqual(backendOrder([], ''), ['tensorflow', 'wasm', 'cpu']);
  assert.deepEqual(backendOrder(['cpu', 'wasm', 'cpu'], undefined), ['cpu', 'wasm']);
  assert.deepEqual(backendOrder(['cpu', 'wasm'], 'tensorflow'), ['tensorflow']);
  assert.deepEqual(backendOrder(undefined, ' wasm '), ['wasm']);
  assert.throws(() => backendOrder(undefined, 'webgl'), RangeError);
  assert.throws(() => backendOrder(['gpu' as never], undefined), RangeError);
});

test('initBackend picks a working backend, reports failures, and is idempotent', async () => {
  const first = await initBackend();
  assert.equal(first.tf.getBackend(), first.name);
  const last = first.tried[first.tried.length - 1]!;
  assert.equal(last.name, first.name);
  assert.equal(last.error, undefined);
  for (const t of first.tried.slice(0, -1)) assert.ok(t.error && t.error.length > 0, `${t.name} failed without a reason`);
  if (process.env[BACKEND_ENV] === undefined) {
    // Default order: tensorflow is always tried first; whatever was chosen, nothing before it worked.
    assert.equal(first.tried[0]!.name, 'tensorflow');
  }

  const again = await initBackend(['cpu']);
  assert.equal(again.name, first.name);
  assert.equal(again.tf, first.tf);
  assert.equal(first.tf.getBackend(), first.name);
  // A real computation runs on it.
  const s = first.tf.tidy(() => first.tf.sum(first.tf.tensor1d([1, 2, 3.5])).dataSync()[0]);
  assert.equal(s, 6.5);
});

test('wasm starts from any working directory and gets the conv filter-gradient kernel', async () => {
  const r = (await initInChild({ [BACKEND_ENV]: undefined }, ['wasm', 'cpu'])) as Record<string, unknown>;
  assert.equal(r['name'], 'wasm', JSON.stringify(r));
  assert.equal(r['active'], 'wasm');
  assert.equal(r['filterGrad'], true);
});

test('default order falls through a missing or broken tfjs-node', async () => {
  const r = (await initInChild({ [BACKEND_ENV]: undefined })) as { name: string; tried: { name: string; error?: string }[] };
  assert.equal(r.tried[0]!.name, 'tensorflow');
  if (r.name !== 'tensorflow') {
    assert.ok(r.tried[0]!.error, 'tfjs-node failure has a reason');
    assert.equal(r.name, 'wasm');
    // Forcing the backend that cannot start is an error, not a silent fallback.
    const forced = (await initInChild({ [BACKEND_ENV]: 'tensorflow' })) as Record<string, unknown>;
    assert.match(String(forced['error']), /tensorflow: /);
  }
});

test('FEDUNLEARN_BACKEND forces a backend and rejects unknown names', async () => {
  const cpu = (await initInChild({ [BACKEND_ENV]: 'cpu' }, ['wasm'])) as Record<string, unknown>;
  assert.equal(cpu['name'], 'cpu');
  assert.equal(cpu['active'], 'cpu');
  assert.deepEqual(cpu['tried'], [{ name: 'cpu' }]);
  // The filter-gradient kernel is only added when wasm is the backend in use.
  assert.equal(cpu['filterGrad'], false);

  const bad = (await initInChild({ [BACKEND_ENV]: 'gpu' })) as Record<string, unknown>;
  assert.match(String(bad['error']), /FEDUNLEARN_BACKEND=gpu/);
});
