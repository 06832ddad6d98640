import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';

/**
 * The operator's story with the real binary: start the service, look at it with the CLI, stop it with SIGTERM, start
 * it again on the same data directory and find the federation where it was left.
 */

const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));
const TOKEN = 'e2e-operator-token';
const work = mkdtempSync(join(tmpdir(), 'fedunlearn-cli-e2e-'));
const running = new Set<ChildProcess>();

after(() => {
  for (const p of running) p.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
});

/** The environment without the caller's FEDUNLEARN_* settings, so that only what a test passes is in effect. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FEDUNLEARN_')));
  return { ...env, ...extra };
}

interface Served {
  url: string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  proc: ChildProcess;
  /** What it wrote to stderr so far. */
  stderr: () => string;
  /** What it wrote to stdout so far. */
  stdout: () => string;
}

/** Starts `serve --port 0` and resolves with the URL it prints once it listens. */
function serve(args: string[], cwd = work): Promise<Served> {
  const proc = spawn(process.execPath, [CLI, 'serve', '--port', '0', ...args], { cwd, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.on('exit', (code, signal) => {
      running.delete(proc);
      resolve({ code, signal });
    }),
  );
  let stderr = '';
  proc.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  let stdout = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve printed no URL within 20 s; stderr:\n${stderr}`)), 20_000);
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      stdout += `${line}\n`;
      const m = /^listening on (http:\/\/\S+)$/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve({ url: m[1]!, exit, proc, stderr: () => stderr, stdout: () => stdout });
      }
    });
    void exit.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`serve exited with ${code} before listening; stderr:\n${stderr}`));
    });
  });
}

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, [CLI, ...args], { cwd: work, env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  proc.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise((resolve) => proc.on('close', (code) => resolve({ code, stdout, stderr })));
}

async function getJson(url: string, token?: string): Promise<{ status: number; body: any }> {
  const res = await fetch(url, token ? { headers: { authorization: `Bearer ${token}` } } : {});
  return { status: res.status, body: await res.json() };
}

async function stop(s: Served): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  s.proc.kill('SIGTERM');
  const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no exit within 10 s of SIGTERM')), 10_000).unref());
  return Promise.race([s.exit, timeout]);
}

async function eventually(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function tinyDataset(count: number): LocalDataset {
  return { x: new Float32Array(count * 784), y: Int32Array.from({ length: count }, (_, i) => i % 10), inputShape: [784], numClasses: 10, count };
}

test('serve refuses a bad flag, naming the field and the allowed values, before touching the data directory', async () => {
  const data = join(work, 'never-created');
  const r = await run(['serve', '--data', data, '--retention', 'fp64']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /retention: expected one of fp32\|fp16\|int8\|norms/);
  assert.equal(existsSync(data), false);
});

test('serve, look with the operator commands, SIGTERM, and resume from the same data directory', async () => {
  const data = join(work, 'state');
  // Two clients are needed for a round and only one connects: the model stays where it is, so a restart must show it.
  const first = await serve(['--data', data, '--operator-token', TOKEN, '--clients-per-round', '2', '--min-clients', '2', '--log-level', 'warn']);
  const url = first.url;
  // A quiet start at level warn: nothing else on stderr (tfjs's advice to install tfjs-node is for trainers, not here).
  assert.equal(first.stderr(), '');

  assert.deepEqual((await getJson(`${url}/healthz`)).body, { ok: true, status: 'ok' });
  const denied = await getJson(`${url}/v1/status`);
  assert.equal(denied.status, 401);
  const status = await getJson(`${url}/v1/status`, TOKEN);
  assert.equal(status.status, 200);
  const version: string = status.body.model.version;
  assert.equal(typeof version, 'string');
  assert.equal(status.body.model.round, 0);

  // Enrolment is closed by default: the client needs a credential the operator issues, shown once.
  const issued = await run(['clients', 'add', 'e2e-client-1', '--url', url, '--token', TOKEN, '--json']);
  assert.equal(issued.code, 0, issued.stderr);
  const credential = JSON.parse(issued.stdout) as { clientId: string; secret: string };
  assert.equal(credential.clientId, 'e2e-client-1');
  assert.match(credential.secret, /^[A-Za-z0-9_-]{43}$/);
  const client = new FederatedClient({
    url,
    clientId: 'e2e-client-1',
    secret: credential.secret,
    data: tinyDataset(6),
    backends: ['cpu'],
    reconnect: { attempts: 1, delayMs: 100 },
  });
  try {
    await client.connect(10_000);

    // A refused request creates nothing: `jobs` below must still be empty.
    const forgetUnknown = await run(['forget', 'nobody', '--url', url, '--token', TOKEN]);
    assert.equal(forgetUnknown.code, 1);
    assert.match(forgetUnknown.stderr, /HTTP 404 UNKNOWN_CLIENT: unknown client\(s\): nobody/);

    const auth = ['--url', url, '--token', TOKEN];
    // Read-only commands, run side by side to keep the test short. `status` takes the token from the environment,
    // as a service account would.
    const [st, noToken, clients, clientsJson, apiClients, jobs, jobsJson, models] = await Promise.all([
      run(['status', '--url', url], { FEDUNLEARN_OPERATOR_TOKEN: TOKEN }),
      run(['status', '--url', url]),
      run(['clients', ...auth]),
      run(['clients', ...auth, '--json']),
      getJson(`${url}/v1/clients`, TOKEN),
      run(['jobs', ...auth]),
      run(['jobs', ...auth, '--json']),
      run(['models', ...auth]),
    ]);

    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, new RegExp(`^model\\s+${version} \\(round 0, init\\)$`, 'm'));
    assert.match(st.stdout, /^clients\s+1 connected$/m);
    assert.match(st.stdout, /^jobs\s+none$/m);

    assert.equal(noToken.code, 1);
    assert.match(noToken.stderr, /HTTP 401 UNAUTHENTICATED: operator token required/);

    assert.equal(clients.code, 0, clients.stderr);
    const [header, ...rows] = clients.stdout.trimEnd().split('\n');
    assert.match(header!, /^CLIENT\s+STATE\s+BACKEND\s+EXAMPLES/);
    assert.equal(rows.length, 1);
    assert.deepEqual(rows[0]!.split(/\s{2,}/).slice(0, 4), ['e2e-client-1', 'connected', 'cpu', '6']);
    // Columns line up: every field of the row starts where its header does.
    assert.equal(rows[0]!.indexOf('connected'), header!.indexOf('STATE'));
    assert.deepEqual(JSON.parse(clientsJson.stdout), apiClients.body);

    assert.equal(jobs.code, 0, jobs.stderr);
    assert.equal(jobs.stdout, 'no jobs\n');
    assert.deepEqual(JSON.parse(jobsJson.stdout), { jobs: [] });

    assert.equal(models.code, 0, models.stderr);
    assert.match(models.stdout, new RegExp(`^\\*\\s+${version}\\s+init\\s+0\\s.*\\skept$`, 'm'));

    // Stopped with a client still connected: the session is closed, not waited for.
    assert.deepEqual(await stop(first), { code: 0, signal: null });
  } finally {
    await client.close();
  }

  // The second start reads a config file from another working directory; its relative `data` is the file's neighbour.
  const config = join(work, 'coordinator.yaml');
  writeFileSync(config, [`data: state`, `operatorToken: ${TOKEN}`, 'clientsPerRound: 2', 'minClients: 2', 'logLevel: warn', ''].join('\n'));
  const second = await serve(['--config', config], tmpdir());
  try {
    const again = await run(['status', '--url', second.url, '--token', TOKEN, '--json']);
    assert.equal(again.code, 0, again.stderr);
    const s = JSON.parse(again.stdout);
    assert.equal(s.model.version, version);
    assert.equal(s.model.round, 0);
    const clients = await run(['clients', '--url', second.url, '--token', TOKEN]);
    assert.match(clients.stdout, /^e2e-client-1\s+offline\s+-\s+6\s/m);
  } finally {
    assert.deepEqual(await stop(second), { code: 0, signal: null });
  }
});

test('serve without a token keeps one in the data directory (0600) and says how to read it; the operator commands find it with --data', async () => {
  const data = join(work, 'token-state');
  const first = await serve(['--data', data, '--log-level', 'warn']);
  const file = join(data, 'operator-token');
  try {
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const token = readFileSync(file, 'utf8').trim();
    assert.match(token, /^[A-Za-z0-9_-]{43}$/);
    assert.match(first.stdout(), new RegExp(`operator token created in ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(mode 0600\\).*--data`));
    assert.ok(!first.stdout().includes(token) && !first.stderr().includes(token), 'the token itself is never printed');
    assert.equal((await getJson(`${first.url}/v1/status`)).status, 401, 'anonymous callers are refused');
    const withData = await run(['status', '--url', first.url, '--data', data, '--json']);
    assert.equal(withData.code, 0, withData.stderr);
    assert.equal(JSON.parse(withData.stdout).model.round, 0);
    const withEnv = await run(['clients', '--url', first.url, '--json'], { FEDUNLEARN_DATA: data });
    assert.equal(withEnv.code, 0, withEnv.stderr);
    const without = await run(['status', '--url', first.url]);
    assert.equal(without.code, 1);
    assert.match(without.stderr, /HTTP 401 .*--data/);
  } finally {
    assert.deepEqual(await stop(first), { code: 0, signal: null });
  }
  // The next start reads the same token.
  const second = await serve(['--data', data, '--log-level', 'warn']);
  try {
    assert.match(second.stdout(), /operator token read from /);
    assert.equal((await run(['status', '--url', second.url, '--data', data])).code, 0);
  } finally {
    await stop(second);
  }
});

test('--insecure-no-auth warns at every start; serving another address without TLS warns; a token and --insecure-no-auth together are refused', async () => {
  const data = join(work, 'open-state');
  for (let i = 0; i < 2; i++) {
    const s = await serve(['--data', data, '--insecure-no-auth', '--log-level', 'warn']);
    try {
      assert.match(s.stderr(), /WARNING: --insecure-no-auth: the operator API is open/);
      assert.equal((await getJson(`${s.url}/v1/status`)).status, 200);
      assert.equal(existsSync(join(data, 'operator-token')), false, 'no token file is made for an open API');
    } finally {
      await stop(s);
    }
  }
  const wide = await serve(['--data', join(work, 'wide-state'), '--host', '0.0.0.0', '--log-level', 'warn']);
  try {
    // stderr is another pipe than the "listening" line's: wait for it rather than race it.
    await eventually(() => /WARNING: serving 0\.0\.0\.0 without TLS/.test(wide.stderr()), 'the plaintext warning');
  } finally {
    await stop(wide);
  }
  const both = await run(['serve', '--data', data, '--insecure-no-auth', '--operator-token', 'a-long-enough-token']);
  assert.equal(both.code, 2);
  assert.match(both.stderr, /insecureNoAuth: cannot be combined with operatorToken/);
});
