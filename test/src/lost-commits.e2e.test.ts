import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, truncateSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import { tempDir } from './support.js';

/**
 * Lost commits are noticed (issue 12, section 7), the observed case: the real service is SIGKILLed after some rounds,
 * history.db-wal is cut in half (committed transactions lost), and the restart refuses with a clear message naming
 * what the high-water mark recorded and what the database holds. With --accept-history-loss it starts from what the
 * database holds, and the blobs of the lost commits are moved to quarantine/ and logged, not deleted.
 */

const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));
const tmp = tempDir('lost-commits');
const running = new Set<ChildProcess>();
const clients: FederatedClient[] = [];
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  for (const p of running) p.kill('SIGKILL');
  tmp.cleanup();
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

function dataset(seed: number, count = 20): LocalDataset {
  const x = Float32Array.from({ length: count * 16 }, (_, i) => ((i * 7919 + seed * 104729) % 1000) / 1000);
  return { x, y: Int32Array.from({ length: count }, (_, i) => i % 4), inputShape: [16], numClasses: 4, count };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Run {
  proc: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  /** Resolves with the exit code once it exits. */
  exit: Promise<number | null>;
  /** Resolves once it printed "listening on". */
  listening: Promise<void>;
}

function serve(args: string[]): Run {
  const proc = spawn(process.execPath, [CLI, 'serve', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(proc);
  let out = '';
  let err = '';
  proc.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (err += b.toString()));
  const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => (running.delete(proc), resolve(code))));
  const listening = new Promise<void>((resolve, reject) => {
    const poll = setInterval(() => {
      if (out.includes('listening on ')) {
        clearInterval(poll);
        resolve();
      }
    }, 20);
    void exit.then((code) => {
      clearInterval(poll);
      reject(new Error(`serve exited (${code}) before listening; stderr:\n${err}`));
    });
  });
  listening.catch(() => undefined);
  return { proc, stdout: () => out, stderr: () => err, exit, listening };
}

test('a database behind the high-water mark of what was committed refuses to start; --accept-history-loss starts and quarantines the orphans', { timeout: 120_000 }, async () => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const dataDir = join(tmp.dir, 'data');
  // Rounds back to back (serve's default cadence is one a minute), every model version kept: the test counts the lost
  // rounds' model files in the quarantine.
  const args = ['--port', String(port), '--data', dataDir, '--enrolment', 'open', '--model', 'mlp', '--input-shape', '16', '--classes', '4', '--round-interval-ms', '0', '--keep-last-models', '0'];
  args.push('--clients-per-round', '2', '--min-clients', '2', '--round-deadline-ms', '4000', '--history-interval', '1', '--batch-size', '10', '--log-level', 'warn');
  const first = serve(args);
  await first.listening;
  const token = readFileSync(join(dataDir, 'operator-token'), 'utf8').trim();
  const status = async () => ((await (await fetch(`${base}/v1/status`, { headers: { authorization: `Bearer ${token}` } })).json()) as { model: { round: number; version: string } }).model;

  for (let i = 0; i < 2; i++) {
    const c = new FederatedClient({ url: base, clientId: `wal-${i}`, secret: `secret-wal-${i}`, data: dataset(i), backends: ['cpu'], reconnect: { attempts: 0 } });
    c.on('error', () => undefined);
    clients.push(c);
    await c.connect(30_000);
  }
  let committed = await status();
  while (committed.round < 12) {
    await sleep(100);
    committed = await status();
  }
  first.proc.kill('SIGKILL');
  await first.exit;
  await Promise.all(clients.map((c) => c.close()));

  // What a crash that took half of the write-ahead log with it leaves behind.
  const wal = join(dataDir, 'history.db-wal');
  const walBytes = statSync(wal).size;
  assert.ok(walBytes > 0, 'the killed service left its write-ahead log');
  truncateSync(wal, Math.floor(walBytes / 2));

  const refused = serve(args);
  const code = await refused.exit;
  assert.equal(code, 3, `refused with exit code 3; stderr:\n${refused.stderr()}`);
  assert.match(refused.stderr(), /behind its high-water mark/);
  assert.match(refused.stderr(), new RegExp(`head ${committed.version}|round ${committed.round}`));
  assert.match(refused.stderr(), /--accept-history-loss/);
  assert.equal(existsSync(join(dataDir, 'quarantine')), false, 'a refused start moved nothing');

  const accepted = serve([...args, '--accept-history-loss']);
  try {
    await accepted.listening;
    const now = await status();
    assert.ok(now.round < committed.round, `the database lost rounds: ${now.round} of ${committed.round}`);
    // The lost commits' blobs are in quarantine, not deleted, and the log says so.
    const stamps = readdirSync(join(dataDir, 'quarantine'));
    assert.equal(stamps.length, 1);
    const quarantinedModels = readdirSync(join(dataDir, 'quarantine', stamps[0]!, 'models'));
    assert.ok(quarantinedModels.length >= committed.round - now.round, `${quarantinedModels.length} model blobs quarantined for ${committed.round - now.round} lost rounds`);
    assert.ok(quarantinedModels.includes(`${committed.version}.bin`), 'the lost head is among them');
    assert.match(accepted.stdout(), /accepting history loss/);
    assert.match(accepted.stdout(), /moved to quarantine/);
    // The mark now describes the database it accepted: a further restart is not refused.
    accepted.proc.kill('SIGTERM');
    assert.equal(await accepted.exit, 0);
    const again = serve(args);
    await again.listening;
    again.proc.kill('SIGTERM');
    assert.equal(await again.exit, 0);
  } finally {
    accepted.proc.kill('SIGKILL');
  }
});
