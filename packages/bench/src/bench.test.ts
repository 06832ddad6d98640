import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GOALS, numericLeaves } from './report.js';

const CLI = fileURLToPath(new URL('./cli.js', import.meta.url));
const MINE = ['aggregation', 'codec', 'ingest', 'history', 'historyPg', 'training', 'cluster'];

/** Runs the real CLI in --quick mode; asserts on what it produces, never on how long it took. */
test('bench --quick produces a finite figure for every key of its sections, in results.json and results.md', { timeout: 300_000 }, async () => {
  const out = mkdtempSync(join(tmpdir(), 'fedunlearn-bench-smoke-'));
  try {
    const child = spawn(process.execPath, [CLI, '--quick', '--out', out, '--only', MINE.join(',')], {
      env: { ...process.env, FEDUNLEARN_LOG_LEVEL: 'silent' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((r) => child.on('close', r));
    assert.equal(code, 0, stderr);
    const doc = JSON.parse(readFileSync(join(out, 'results.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(doc.quick, true);
    assert.equal(typeof (doc.machine as { cpus: unknown }).cpus, 'number');
    for (const name of MINE) {
      const section = doc[name] as Record<string, unknown> | undefined;
      assert.ok(section, `section ${name} is in results.json`);
      assert.ok(!('error' in section), `section ${name} failed: ${String(section.error)}`);
      const leaves = numericLeaves(name, section);
      assert.ok(leaves.length > 0, `section ${name} has figures`);
      for (const l of leaves) assert.ok(Number.isFinite(l.value), `${l.key} = ${l.value}`);
    }
    for (const key of Object.keys(GOALS)) {
      if (!MINE.includes(key.split('.')[0]!)) continue;
      const v = key.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], doc);
      assert.equal(typeof v, 'number', `${key} is present`);
      assert.ok((v as number) > 0, `${key} = ${String(v)} is positive`);
      assert.match(stdout, new RegExp(`\\| ${key.replaceAll('.', '\\.')} \\| `), `${key} is in the printed table`);
    }
    const hist = doc.history as { bytesPerClientRound: Record<string, number>; writeMBps: number };
    for (const r of ['fp32', 'fp16', 'int8', 'norms']) assert.ok(hist.bytesPerClientRound[r]! > 0, `history.bytesPerClientRound.${r}`);
    // Quantised retention must actually be smaller: a store that ignored the setting would show equal sizes.
    assert.ok(hist.bytesPerClientRound.fp16! < hist.bytesPerClientRound.fp32!);
    assert.ok(hist.bytesPerClientRound.int8! < hist.bytesPerClientRound.fp16!);
    assert.ok(hist.bytesPerClientRound.norms! < hist.bytesPerClientRound.int8!);
    const training = doc.training as Record<string, Record<string, number> & { kernels?: { speedup: number } }>;
    for (const arch of ['mlp', 'cnn']) {
      const t = training[arch]!;
      assert.ok(t.examplesPerSecond! > 0 && t.flopsPerExample! > 0, `training.${arch}`);
      // The ratio is the median of per-repeat ratios (the training FLOP rate over the matmul floor's, measured side by
      // side), so it lies between the ratios the slowest and fastest repeats of each allow, however noisy the machine
      // (a ratio of medians can stray from a median of ratios when the load changes between repeats).
      const d = (t as unknown as { detail: { trainMs: { min: number; max: number }; floorMs: { min: number; max: number }; ratios: { median: number } } }).detail;
      const examples = (t as unknown as { examplesPerCall: number }).examplesPerCall;
      const ratioOf = (trainMs: number, floorMs: number) => (examples * t.flopsPerExample!) / trainMs / ((2 * 1024 ** 3) / floorMs);
      const [lo, hi] = [ratioOf(d.trainMs.max, d.floorMs.min), ratioOf(d.trainMs.min, d.floorMs.max)];
      assert.ok(t.ratioToMatmulFloor! >= lo * 0.999 && t.ratioToMatmulFloor! <= hi * 1.001, `training.${arch}.ratioToMatmulFloor ${t.ratioToMatmulFloor} outside [${lo}, ${hi}]`);
      assert.ok(Math.abs(t.ratioToMatmulFloor! - d.ratios.median) <= 1e-4, `training.${arch}.ratioToMatmulFloor is the median of the per-repeat ratios`);
      if ((training.backend as unknown as string) === 'wasm') assert.ok(t.kernels && Number.isFinite(t.kernels.speedup), `training.${arch}.kernels.speedup`);
    }
    // FLOPs per example from the architectures: MLP 784-128-64-10 and the FedEraser CNN (72.4 MFLOP).
    assert.equal(training.mlp!.flopsPerExample, 2 * (2 * (784 * 128) + 3 * (128 * 64 + 64 * 10)));
    assert.equal(training.cnn!.flopsPerExample, 2 * (2 * 28 * 28 * 25 * 32 + 3 * (14 * 14 * 25 * 32 * 64 + 3136 * 512 + 512 * 10)));
    // Cluster: the arms really moved the clients (all on one replica, then spread over three), and the Redis traffic
    // per round is O(replicas x model): 2 remote partials, counted sent and received, are ~8x the model; the updates of
    // the ~67 clients on the two followers, had they crossed Redis, would be over 100x.
    const cluster = doc.cluster as { clients: number; arms: { replicas: number; spread: number[] }[]; busBytesPerModel: number; roundTimeRatio3to1: number };
    for (const a of cluster.arms) {
      assert.equal(a.spread.reduce((x, y) => x + y, 0), cluster.clients, `every client is connected in the ${a.replicas}-replica arm`);
      assert.equal(a.spread.filter((x) => x > 0).length, a.replicas, `the ${a.replicas}-replica arm: ${JSON.stringify(a.spread)}`);
    }
    assert.deepEqual(cluster.arms.map((a) => a.replicas), [1, 3], 'arms alternate 1, 3');
    assert.ok(cluster.busBytesPerModel > 0 && cluster.busBytesPerModel < 20, `cluster.busBytesPerModel ${cluster.busBytesPerModel}`);
    assert.ok(cluster.roundTimeRatio3to1 > 0);
    const md = readFileSync(join(out, 'results.md'), 'utf8');
    assert.match(md, /\| aggregation\.ratioToFloor \| [0-9.]+ \| >= 0\.8 \| (yes|no) \|/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('an unknown section name is refused with a clear message', async () => {
  const child = spawn(process.execPath, [CLI, '--only', 'nonsense'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise<number | null>((r) => child.on('close', r));
  assert.notEqual(code, 0);
  assert.match(stderr, /unknown section\(s\): nonsense/);
});
