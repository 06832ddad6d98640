#!/usr/bin/env node
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { markdownTable, rowsOf } from './report.js';
import type { SectionRun } from './section.js';
import { run as aggregation } from './sections/aggregation.js';
import { run as cluster } from './sections/cluster.js';
import { run as codec } from './sections/codec.js';
import { run as fleet } from './sections/fleet.js';
import { run as history } from './sections/history.js';
import { run as historyPg } from './sections/history-pg.js';
import { run as ingest } from './sections/ingest.js';
import { run as jobs } from './sections/jobs.js';
import { run as training } from './sections/training.js';
import { run as unlearning } from './sections/unlearning.js';

const SECTIONS: Readonly<Record<string, SectionRun>> = { aggregation, codec, ingest, history, historyPg, training, fleet, cluster, unlearning, jobs };

/** bench/ at the repository root, from this file's place (packages/bench/dist/cli.js), whatever the cwd: where the
 *  committed results of a full run live. */
const DEFAULT_OUT = fileURLToPath(new URL('../../../bench/', import.meta.url));
/** out/bench/ at the repository root: a --quick or --only run goes there, so it never overwrites the committed run. */
const PARTIAL_OUT = fileURLToPath(new URL('../../../out/bench/', import.meta.url));

async function backendName(): Promise<string> {
  try {
    const { initBackend } = await import('@fedunlearn/client');
    return (await initBackend()).name;
  } catch (e) {
    return `unavailable (${(e as Error).message})`;
  }
}

async function main(): Promise<void> {
  const program = new Command()
    .name('fedunlearn-bench')
    .description('fedunlearn benchmarks: each hot path as a ratio to a baseline measured in the same run')
    .option('--quick', 'a run of under a minute: smaller sizes, fewer repeats', false)
    .option('--only <sections>', `comma-separated sections (${Object.keys(SECTIONS).join(', ')})`)
    .option('--out <dir>', 'where results.json and results.md go (default: bench/ for a full run, out/bench/ for --quick or --only)')
    .parse();
  const opts = program.opts<{ quick: boolean; only?: string; out?: string }>();
  const o = { ...opts, out: opts.out ?? (opts.quick || opts.only ? PARTIAL_OUT : DEFAULT_OUT) };
  const names = o.only ? o.only.split(',').map((s) => s.trim()).filter(Boolean) : Object.keys(SECTIONS);
  const unknown = names.filter((n) => !(n in SECTIONS));
  if (unknown.length > 0 || names.length === 0) {
    program.error(`unknown section(s): ${unknown.join(', ') || '(none given)'}; choose from ${Object.keys(SECTIONS).join(', ')}`);
  }
  const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
  const started = Date.now();
  const results: Record<string, unknown> = {};
  for (const name of names) {
    const t0 = Date.now();
    log(`${name}: start${o.quick ? ' (quick)' : ''}`);
    try {
      results[name] = await SECTIONS[name]!({ quick: o.quick, log });
      log(`${name}: done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    } catch (e) {
      // One failing section is reported, never allowed to hide the others' figures.
      results[name] = { error: (e as Error).message ?? String(e) };
      log(`${name}: FAILED after ${((Date.now() - t0) / 1000).toFixed(1)} s: ${(e as Error).stack ?? String(e)}`);
    }
  }
  const cpu = cpus();
  const doc = {
    machine: {
      cpus: cpu.length,
      cpuModel: cpu[0]?.model ?? 'unknown',
      memGB: Math.round(totalmem() / 2 ** 30),
      node: process.version,
      platform: `${process.platform}-${process.arch}`,
      backend: await backendName(),
    },
    date: new Date(started).toISOString(),
    quick: o.quick,
    durationS: Math.round((Date.now() - started) / 100) / 10,
    ...results,
  };
  const rows = rowsOf(results);
  const table = markdownTable(rows);
  const md = [
    `# fedunlearn benchmarks`,
    '',
    `${doc.date}, ${doc.machine.cpus} x ${doc.machine.cpuModel}, Node ${doc.machine.node}, tfjs backend ${doc.machine.backend}${o.quick ? ', --quick' : ''}.`,
    'Every ratio is baseline time / candidate time, medians of interleaved repeats in the same run (1.0 = at the baseline).',
    '',
    table,
    '',
  ].join('\n');
  const out = resolve(o.out);
  mkdirSync(out, { recursive: true });
  writeFileSync(resolve(out, 'results.json'), `${JSON.stringify(doc, null, 2)}\n`);
  writeFileSync(resolve(out, 'results.md'), md);
  process.stdout.write(`${table}\n`);
  log(`wrote ${resolve(out, 'results.json')} and results.md in ${doc.durationS} s`);
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
