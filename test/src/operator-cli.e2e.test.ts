import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';

/**
 * The operator's commands where they used to mislead: a busy port, an unusable data directory, a wrong token, an
 * unknown lineage, clients that never connected. The real binary each time.
 */

const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));
const TOKEN = 'operator-cli-e2e-token';
const work = mkdtempSync(join(tmpdir(), 'fedunlearn-operator-cli-'));
const running = new Set<ChildProcess>();
after(() => {
  for (const p of running) p.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
});

function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FEDUNLEARN_')));
}

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, [CLI, ...args], { cwd: work, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  proc.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise((resolve) =>
    proc.on('close', (code) => {
      running.delete(proc);
      resolve({ code, stdout, stderr });
    }),
  );
}

test('serve on a busy port fails before it creates the data directory', async () => {
  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
  const port = (busy.address() as AddressInfo).port;
  try {
    const data = join(work, 'busy-port-data');
    const r = await run(['serve', '--port', String(port), '--data', data, '--log-level', 'silent']);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: the port is in use`));
    assert.equal(existsSync(data), false, 'no data directory, no history.db');
  } finally {
    busy.close();
  }
});

test('a data directory that cannot be used is named as the data directory, with the reason in words', async () => {
  const file = join(work, 'a-file');
  writeFileSync(file, 'not a directory');
  const under = await run(['serve', '--port', '0', '--data', join(file, 'data'), '--log-level', 'silent']);
  assert.equal(under.code, 1);
  assert.match(under.stderr, /cannot use data directory .*a-file\/data: a component of the path is a file, not a directory .*\[ENOTDIR\]/);
  const itself = await run(['serve', '--port', '0', '--data', file, '--log-level', 'silent']);
  assert.equal(itself.code, 1);
  assert.match(itself.stderr, /cannot use data directory .*a-file: it is a file, not a directory \[(ENOTDIR|EEXIST)\]/);
});

test('operator commands: a refused token, an unknown lineage, clients that never connected', async () => {
  const proc = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--data', join(work, 'data'), '--operator-token', TOKEN, '--log-level', 'silent',
    // The cadence, stopping and retention flags are accepted (config.test.ts checks what they set).
    '--round-interval-ms', '5000', '--max-rounds', '3', '--patience-rounds', '4', '--min-delta', '0.01', '--keep-last-models', '5', '--keep-models-every', '10'], {
    cwd: work,
    env: cleanEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(proc);
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const m = /^listening on (\S+)$/.exec(line);
      if (m) resolve(m[1]!);
    });
    proc.on('exit', (code) => reject(new Error(`serve exited with ${code}`)));
  });
  const as = ['--url', url, '--token', TOKEN];

  const wrong = await run(['status', '--url', url, '--token', 'not-the-token']);
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /HTTP 401 UNAUTHENTICATED: operator token refused/);
  assert.match(wrong.stderr, /check --token/);
  const none = await run(['status', '--url', url]);
  assert.match(none.stderr, /operator token required .*--token/);

  const status = await run(['status', ...as]);
  assert.match(status.stdout, /^training\s+running$/m, 'no client, no round: not stopped');

  const lineage = await run(['rounds', '--lineage', 'zzz', ...as]);
  assert.equal(lineage.code, 1, lineage.stdout);
  assert.match(lineage.stderr, /no lineage zzz \(lineages: \S+; see `fedunlearn-coordinator models`\)/);
  const head = await run(['rounds', ...as]);
  assert.equal(head.code, 0, 'the current lineage without rounds is not an error');
  assert.equal(head.stdout, 'no rounds\n');

  assert.equal((await run(['clients', 'add', 'quiet-device', ...as])).code, 0);
  const listed = await run(['clients', ...as]);
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, /^quiet-device\s+offline\s+-\s+0\s+never\s+never$/m);
  const json = JSON.parse((await run(['clients', '--json', ...as])).stdout) as { clients: { clientId: string; firstSeen: number; lastSeen: number }[] };
  assert.deepEqual(json.clients.map((c) => [c.clientId, c.firstSeen, c.lastSeen]), [['quiet-device', 0, 0]]);

  // The dashboard says it is loading until its data arrives (not "No forget jobs."), and has an icon.
  const page = await (await fetch(`${url}/dashboard/`)).text();
  assert.match(page, /<p class="empty muted" id="jobs-empty" data-loading>loading…<\/p>/);
  for (const panel of ['clients', 'history', 'rounds', 'models']) assert.match(page, new RegExp(`id="${panel}-loading" data-loading>loading…`));
  const icon = /<link rel="icon" href="([^"]+)"/.exec(page)?.[1];
  assert.ok(icon, 'the page names its icon');
  const res = await fetch(new URL(icon, `${url}/dashboard/`));
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'image/svg+xml');
  proc.kill('SIGTERM');
});
