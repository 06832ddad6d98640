import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { FederatedClient } from '@fedunlearn/client';
import { mnistScenario, tempDir } from './support.js';

/**
 * The README's commands, read from README.md itself so that they cannot drift, run the way it shows them: through
 * npx from the repository's root, after its set-up (`npm ci` and a build). npx answered 404 from the registry on a
 * fresh clone when `npm ci` had found no dist/cli.js to link.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const BINS = ['fedunlearn-coordinator', 'fedunlearn-sim', 'fedunlearn-bench'];
const work = tempDir('readme-commands');
/** Process groups started here: npx runs the command in a child of its own, so a signal goes to the whole group. */
const running = new Set<ChildProcess>();
const killGroup = (p: ChildProcess, signal: NodeJS.Signals) => {
  try {
    process.kill(-p.pid!, signal);
  } catch {
    // Already gone.
  }
};
const clients: FederatedClient[] = [];
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  for (const p of running) killGroup(p, 'SIGKILL');
  work.cleanup();
});

/** Every `npx fedunlearn-…` line of the README's shell blocks, without its comment. */
function readmeCommands(): string[][] {
  const out: string[][] = [];
  for (const block of README.matchAll(/```sh\n([\s\S]*?)```/g)) {
    for (const raw of block[1]!.split('\n')) {
      const line = raw.replace(/\s#.*$/, '').trim();
      if (line.startsWith('npx fedunlearn-')) out.push(line.split(/\s+/));
    }
  }
  return out;
}

/** The environment without an enclosing npm script's settings and the caller's FEDUNLEARN_* ones. */
function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) && !k.startsWith('FEDUNLEARN_')));
  return { ...base, FEDUNLEARN_LOG_LEVEL: 'warn', ...extra };
}

function npx(args: string[], extraEnv: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const [cmd, ...rest] = args;
  assert.equal(cmd, 'npx');
  const proc = spawn('npx', ['--no-install', ...rest], { cwd: ROOT, env: env(extraEnv), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  proc.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise((resolve) => proc.on('close', (code) => resolve({ code, stdout, stderr })));
}

/** `line` with the README's fixed port, data directory and URL replaced by this test's. */
function adapt(line: string[], url?: string): string[] {
  const out = [...line];
  const set = (flag: string, value: string) => {
    const i = out.indexOf(flag);
    if (i >= 0) out[i + 1] = value;
  };
  set('--port', '0');
  set('--data', join(work.dir, 'data'));
  if (url) set('--url', url);
  return out;
}

test('README: every fedunlearn command it shows answers --help through npx', async () => {
  const shown = new Set(readmeCommands().map((c) => c[1]!));
  for (const bin of BINS) assert.ok(shown.has(bin), `the README shows no \`npx ${bin}\` command`);
  for (const bin of shown) {
    const r = await npx(['npx', bin, '--help']);
    assert.equal(r.code, 0, `npx ${bin} --help: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^Usage: ${bin} `), `npx ${bin} --help printed:\n${r.stdout}${r.stderr}`);
  }
});

test("README: the operators' commands, in order, through npx against the coordinator its serve command starts", { timeout: 120_000 }, async () => {
  const commands = readmeCommands().filter((c) => c[1] === 'fedunlearn-coordinator');
  const serveLine = commands.find((c) => c[2] === 'serve');
  assert.ok(serveLine, 'the README shows how to serve');
  const [, ...serveArgs] = adapt(serveLine);
  const serve = spawn('npx', ['--no-install', ...serveArgs], { cwd: ROOT, env: env(), stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  running.add(serve);
  let serveErr = '';
  serve.stderr!.on('data', (b: Buffer) => (serveErr += b.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve printed no URL within 30 s:\n${serveErr}`)), 30_000);
    createInterface({ input: serve.stdout! }).on('line', (line) => {
      const m = /^listening on (http:\/\/\S+)$/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    serve.on('exit', (code) => reject(new Error(`serve exited with ${code}:\n${serveErr}`)));
  });
  // Commands without --url reach it the documented way too; commands without --data find its token file the way they
  // would from the directory the README's serve ran in (./data there): the test's data directory stands in for it.
  const withUrl = { FEDUNLEARN_URL: url, FEDUNLEARN_DATA: join(work.dir, 'data') };
  const scenario = mnistScenario(3, 10);
  let jobId = '';
  for (const line of commands.filter((c) => c !== serveLine)) {
    const args = adapt(line, url).map((a) => (a === '<job id>' || a === '<job' ? jobId : a)).filter((a) => a !== 'id>');
    const r = await npx(args, withUrl);
    assert.equal(r.code, 0, `${line.join(' ')}: ${r.stderr}`);
    const sub = args[2];
    if (sub === 'clients' && args[3] === 'add') {
      // The device the README names joins with the secret just printed, with two more issued the same way, so that
      // rounds run and the forget job has clients to calibrate with.
      const issued = [r.stdout];
      for (const extra of ['device-43', 'device-44']) {
        const more = await npx([...args.slice(0, 4), extra], withUrl);
        assert.equal(more.code, 0, more.stderr);
        issued.push(more.stdout);
      }
      for (const [i, out] of issued.entries()) {
        const clientId = /client\s+(\S+)/.exec(out)![1]!;
        const secret = /secret\s+(\S+)/.exec(out)![1]!;
        const c = new FederatedClient({ url, clientId, secret, data: scenario.parts[i]!, reconnect: { delayMs: 100, maxDelayMs: 500 } });
        clients.push(c);
        await c.connect();
      }
      assert.equal(/client\s+(\S+)/.exec(r.stdout)![1], args[4]);
    }
    if (sub === 'status') assert.match(r.stdout, /clients/i, r.stdout);
    if (sub === 'forget') {
      jobId = /^job (\S+) /.exec(r.stdout)![1]!;
      assert.match(r.stdout, new RegExp(`forgotten\\s+${args[3]}`), r.stdout);
    }
    if (sub === 'report') assert.match(r.stdout, new RegExp(`job\\s+${jobId}`), r.stdout);
  }
  assert.ok(jobId, 'the README forgets a client');
  // Stopped as a terminal would (Ctrl-C reaches the whole group); done once no process holds its output open.
  await Promise.all(clients.splice(0).map((c) => c.close()));
  const closed = new Promise<void>((resolve) => serve.stdout!.on('close', resolve));
  killGroup(serve, 'SIGINT');
  await closed;
  running.delete(serve);
});
