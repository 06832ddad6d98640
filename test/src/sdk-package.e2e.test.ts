import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createInterface } from 'node:readline';
import type { Coordinator } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, startCoordinator, tempDir, waitUntil } from './support.js';

/**
 * An edge developer outside this repository: the packages are packed as they would be published, the SDK's
 * tarballs are installed into a new project that holds nothing else of this repository, and a client started from
 * there trains a round with a real coordinator and asks to be forgotten.
 */

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The packages meant for users, and what each tarball must carry besides its README and dist/index.js. */
const USER_PACKAGES: Record<string, RegExp[]> = {
  protocol: [/^dist\/gen\/proto\.js$/],
  models: [],
  client: [/^dist\/browser\.js$/, /^dist\/bundle\/fedunlearn-client\.js$/, /^dist\/bundle\/tfjs-backend-wasm\.wasm$/, /^dist\/bundle\/tfjs-backend-wasm-simd\.wasm$/],
  coordinator: [/^bin\/fedunlearn-coordinator\.js$/, /^dashboard\/app\.js$/, /^examples\/client\/app\.js$/, /^dist\/examples\/client\/digits\.bin$/, /^dist\/cli\.js$/],
};

const work = tempDir('sdk-package');
const tarballs = join(work.dir, 'tarballs');
const unpacked = join(work.dir, 'unpacked');
const app = join(work.dir, 'edge-app');
let coordinator: Coordinator | undefined;
const stops: (() => unknown)[] = [];
after(async () => {
  for (const s of stops.reverse()) await s();
  work.cleanup();
});

/** The environment without what an enclosing `npm test` sets for its scripts (workspace, prefix, ...). */
function npmEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) && !k.startsWith('FEDUNLEARN_')));
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d)) {
      const p = join(d, e);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

/** Package names a built module imports at run time (type-only imports are gone from the .js). */
function runtimeImports(source: string): Set<string> {
  const names = new Set<string>();
  // Statements only (`import … from '…'`, `export … from '…'`, `import '…'` at the start of a line) and dynamic
  // `import('…')`: a string that merely contains the word "from" is not an import.
  const statements = /^\s*(?:import|export)\b[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]|^\s*import\s*['"]([^'"]+)['"]|\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/gm;
  for (const m of source.matchAll(statements)) {
    const spec = (m[1] ?? m[2] ?? m[3])!;
    if (spec.startsWith('.') || spec.startsWith('node:') || spec.startsWith('/')) continue;
    names.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!);
  }
  return names;
}

before(async () => {
  mkdirSync(tarballs, { recursive: true });
  mkdirSync(unpacked, { recursive: true });
  const workspaces = Object.keys(USER_PACKAGES).flatMap((p) => ['-w', `packages/${p}`]);
  await run('npm', ['pack', '--pack-destination', tarballs, ...workspaces], { cwd: ROOT, env: npmEnv() });
});

test('each user package packs what runs, its README and declared dependencies, and nothing else', async () => {
  const builtins = new Set((await import('node:module')).builtinModules);
  for (const [name, required] of Object.entries(USER_PACKAGES)) {
    const tgz = join(tarballs, `fedunlearn-${name}-0.1.0.tgz`);
    const dir = join(unpacked, name);
    mkdirSync(dir, { recursive: true });
    await run('tar', ['xzf', tgz, '-C', dir]);
    const root = join(dir, 'package');
    const files = filesUnder(root);
    for (const must of [/^README\.md$/, /^package\.json$/, /^dist\/index\.js$/, /^dist\/index\.d\.ts$/, ...required]) {
      assert.ok(files.some((f) => must.test(f)), `${name}: ${must} missing from the tarball`);
    }
    const stray = files.filter((f) => /^src\/|\.test\.|\.test-support\.|\.map$|tsconfig|\.tsbuildinfo$|exp-c|\.ts$/.test(f) && !f.endsWith('.d.ts'));
    assert.deepEqual(stray, [], `${name}: files that do not run`);
    const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as Record<string, Record<string, string> | undefined>;
    const declared = new Set([...Object.keys(manifest.dependencies ?? {}), ...Object.keys(manifest.optionalDependencies ?? {}), ...Object.keys(manifest.peerDependencies ?? {})]);
    // Every package its modules import is one an install brings (the browser bundle is self-contained).
    for (const f of files.filter((f) => /\.(m?js)$/.test(f) && !f.startsWith('dist/bundle/'))) {
      for (const dep of runtimeImports(readFileSync(join(root, f), 'utf8'))) {
        if (builtins.has(dep)) continue;
        assert.ok(declared.has(dep), `${name}: ${f} imports ${dep}, which package.json does not declare`);
      }
    }
  }
});

test('the SDK installed from its tarballs into a new project trains a round against a real coordinator and is forgotten', { timeout: 180_000 }, async () => {
  mkdirSync(app, { recursive: true });
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({
      name: 'edge-app',
      private: true,
      type: 'module',
      dependencies: {
        '@fedunlearn/client': `file:${join(tarballs, 'fedunlearn-client-0.1.0.tgz')}`,
        '@fedunlearn/protocol': `file:${join(tarballs, 'fedunlearn-protocol-0.1.0.tgz')}`,
      },
    }),
  );
  // Third-party packages come from npm's cache where it has them (the repository's own install filled it), else the registry.
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: app, env: npmEnv() });
  // Nothing of this repository but the two tarballs: the project sits outside it, so Node cannot find the workspace.
  assert.ok(relative(ROOT, app).startsWith('..'), 'the project is outside the repository');
  writeFileSync(
    join(app, 'edge.mjs'),
    `import { FederatedClient } from '@fedunlearn/client';
const [url, clientId, secret] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
say({ event: 'resolved', sdk: import.meta.resolve('@fedunlearn/client') });
// 64 examples of 784 features in 10 classes: what this device happens to hold.
const count = 64;
const x = new Float32Array(count * 784).map((_, i) => ((i * 7919) % 255) / 255);
const y = Int32Array.from({ length: count }, (_, i) => i % 10);
const client = new FederatedClient({ url, clientId, secret, data: { x, y, inputShape: [784], numClasses: 10, count } });
client.on('task', async (t) => {
  say({ event: 'task', kind: t.kind, round: t.round, loss: t.metrics.loss });
  if (t.kind !== 'train') return;
  const jobId = await client.forget('uninstalled the app');
  say({ event: 'receipt', jobId });
  const done = await client.waitForJob(jobId);
  say({ event: 'job', state: done.state, forgotten: done.report && done.report.clientsForgotten });
  await client.close();
});
await client.connect();
say({ event: 'connected', backend: client.backendName, model: client.federationModel });
`,
  );

  const scenario = mnistScenario(1, 10);
  const tmp = tempDir('sdk-package-coordinator');
  stops.push(() => tmp.cleanup());
  // Both clients are asked each round; a quorum of one lets the job start with the client that stays.
  const started = await startCoordinator(tmp.dir, scenario.def, federation({ clientsPerRound: 2, minClients: 1 }));
  coordinator = started.coordinator;
  stops.push(() => coordinator!.stop());
  // A device of the repository's own SDK stays, so that the forget job has someone to calibrate with.
  const stay = await connectClients(started.url, scenario.parts, 'stays');
  stops.push(() => Promise.all(stay.map((c) => c.close())));

  const child = spawn(process.execPath, ['edge.mjs', started.url, 'edge-device', 'secret-of-the-edge-device'], { cwd: app, env: npmEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  stops.push(() => child.kill('SIGKILL'));
  const lines: Record<string, unknown>[] = [];
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  createInterface({ input: child.stdout }).on('line', (l) => lines.push(JSON.parse(l) as Record<string, unknown>));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const seen = (event: string) => lines.find((l) => l.event === event);

  await waitUntil(() => seen('connected') !== undefined || child.exitCode !== null, 60_000, 'the edge client to connect');
  assert.ok(seen('connected'), `the edge client did not connect:\n${stderr}`);
  assert.ok(String(seen('resolved')!.sdk).startsWith(`file://${app}/node_modules/@fedunlearn/client/`), String(seen('resolved')!.sdk));
  assert.deepEqual(seen('connected')!.model, { inputShape: [784], numClasses: 10 });

  const [round] = await coordinator.runRounds(1);
  assert.deepEqual([...round!.participants].sort(), ['edge-device', 'stays-0']);
  await waitUntil(async () => (await coordinator!.store.listJobs()).length === 1, 30_000, 'the forget request');
  const [job] = await coordinator.runPendingJobs();
  assert.equal(job!.state, 'done', job!.error ?? '');
  assert.deepEqual(job!.clientIds, ['edge-device']);
  assert.equal(await exited, 0, stderr);
  assert.deepEqual(seen('job'), { event: 'job', state: 'done', forgotten: ['edge-device'] });
  assert.ok(await coordinator.isForgotten('edge-device'));
});
