import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';

// The real `serve` at log level trace through a whole life: credentials issued, clients welcomed, a forged hello
// refused, rounds trained, a forget job run, a secret rotated and a client revoked. Not one byte of what it printed
// may hold a client secret, a guessed secret or the operator token.

const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));
const TOKEN = 'secrets-e2e-operator-token-7f3a9c';
const work = mkdtempSync(join(tmpdir(), 'fedunlearn-secrets-e2e-'));
const WAIT_MS = 30_000;

after(() => rmSync(work, { recursive: true, force: true }));

function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FEDUNLEARN_')));
}

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, [CLI, ...args], { cwd: work, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  proc.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise((resolve) => proc.on('close', (code) => resolve({ code, stdout, stderr })));
}

function tinyDataset(count = 8): LocalDataset {
  return { x: new Float32Array(count * 784).fill(0.25), y: Int32Array.from({ length: count }, (_, i) => i % 10), inputShape: [784], numClasses: 10, count };
}

async function status(url: string): Promise<{ model: { round: number } }> {
  const res = await fetch(`${url}/v1/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return (await res.json()) as { model: { round: number } };
}

async function until(cond: () => Promise<boolean> | boolean, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('serve prints no secret and no operator token through credentials, rounds, a forget job, rotation and revocation', async () => {
  const proc = spawn(
    process.execPath,
    [CLI, 'serve', '--port', '0', '--data', join(work, 'data'), '--operator-token', TOKEN, '--clients-per-round', '2', '--min-clients', '1', '--round-interval-ms', '0', '--log-level', 'trace'],
    { cwd: work, env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  proc.stderr.on('data', (b: Buffer) => (output += b.toString()));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`serve printed no URL; output:\n${output}`)), 20_000);
    createInterface({ input: proc.stdout }).on('line', (line) => {
      output += line + '\n';
      const m = /^listening on (http:\/\/\S+)$/.exec(line);
      if (m) {
        clearTimeout(t);
        resolve(m[1]!);
      }
    });
  });
  const secrets: string[] = [];
  const devices: FederatedClient[] = [];
  try {
    const auth = ['--url', url, '--token', TOKEN, '--json'];
    for (const id of ['dev-1', 'dev-2']) {
      const r = await run(['clients', 'add', id, ...auth]);
      assert.equal(r.code, 0, r.stderr);
      secrets.push((JSON.parse(r.stdout) as { secret: string }).secret);
    }
    const forged = 'guessed-secret-that-must-not-be-logged';
    secrets.push(forged);
    const intruder = new FederatedClient({ url, clientId: 'dev-1', secret: forged, data: tinyDataset(), backends: ['cpu'], reconnect: { attempts: 0 } });
    await assert.rejects(intruder.connect(WAIT_MS), /UNAUTHENTICATED/);
    await intruder.close();

    for (const [i, id] of ['dev-1', 'dev-2'].entries()) {
      devices.push(new FederatedClient({ url, clientId: id, secret: secrets[i]!, data: tinyDataset(), backends: ['cpu'], reconnect: { delayMs: 100, maxDelayMs: 500 } }));
    }
    await Promise.all(devices.map((d) => d.connect(WAIT_MS)));
    await until(async () => (await status(url)).model.round >= 2, 'two rounds');

    const jobId = await devices[0]!.forget('leaving');
    const job = await devices[0]!.waitForJob(jobId);
    assert.equal(job.state, 'done', job.message);

    const rotated = await run(['clients', 'rotate', 'dev-2', ...auth]);
    assert.equal(rotated.code, 0, rotated.stderr);
    secrets.push((JSON.parse(rotated.stdout) as { secret: string }).secret);
    const revoked = await run(['clients', 'revoke', 'dev-2', ...auth]);
    assert.equal(revoked.code, 0, revoked.stderr);
  } finally {
    await Promise.all(devices.map((d) => d.close()));
    proc.kill('SIGTERM');
    assert.equal(await exited, 0);
  }

  // The capture is real: the events above are in it.
  for (const msg of ['client credential issued', 'client joined', 'client credential rotated', 'client credential revoked']) {
    assert.ok(output.includes(`"msg":"${msg}"`), `no "${msg}" line in the output`);
  }
  assert.equal(secrets.length, 4);
  for (const s of [...secrets, TOKEN]) assert.equal(output.includes(s), false, `the output contains a secret (${s.slice(0, 4)}...)`);
});
