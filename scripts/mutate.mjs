// Mutation testing of the modules the README's guarantees rest on (`npm run mutate`; not part of `npm test`).
//
// StrykerJS mutates the COMPILED module (dist/*.js: what the tests import; tsc keeps its statements one for one) in
// place, and its command runner runs a focused `node --test` over the tests that guard that module once per mutant.
// A mutant the tests do not notice survives. Each module's report goes to mutation/reports/<module>.{json,html}
// (not committed); the scores and every survivor go to mutation/results.md, where a survivor explained in
// mutation/equivalent.json (why no test can tell it from the original) is listed as equivalent.
//
//   npm run mutate                       every module, one after another
//   npm run mutate -- calibration store  only these modules
//   npm run mutate -- --summary          rewrite results.md from the reports already there
//   npm run mutate -- --recheck store    run again only the lines where a mutant of the last report survived (after
//                                        adding tests: a mutant killed before stays killed, tests are only added),
//                                        and merge the new verdicts into mutation/reports/<module>.json
//
// The machine is shared: one mutant at a time (FEDUNLEARN_MUTATE_CONCURRENCY to change it).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const outDir = join(root, 'mutation');
const reportsDir = join(outDir, 'reports');

/**
 * The guarded modules. `only` limits a large file to the functions a guarantee rests on (found by name in the
 * compiled file, so the line ranges follow the code); `tests` are the compiled test files run for every mutant.
 */
const MODULES = [
  {
    name: 'calibration',
    guarantee: 'FedEraser: calibrated replay',
    file: 'packages/coordinator/dist/unlearning/calibration.js',
    tests: ['packages/coordinator/dist/unlearning/calibration.test.js', 'test/dist/unlearning-arithmetic.e2e.test.js'],
  },
  {
    name: 'federaser',
    guarantee: 'FedEraser: calibrated replay',
    file: 'packages/coordinator/dist/unlearning/federaser.js',
    tests: ['test/dist/unlearning-arithmetic.e2e.test.js'],
  },
  {
    name: 'replay',
    guarantee: 'server-side replay (FedAccum)',
    file: 'packages/coordinator/dist/unlearning/replay.js',
    tests: ['test/dist/unlearning-arithmetic.e2e.test.js'],
  },
  {
    name: 'update-validation',
    guarantee: 'bad input is refused with its code',
    file: 'packages/coordinator/dist/rounds/update-validation.js',
    tests: ['packages/coordinator/dist/rounds/update-validation.test.js', 'packages/coordinator/dist/rounds/update-validation.fuzz.test.js'],
  },
  {
    name: 'tensor-codec',
    guarantee: 'bad input is refused with its code (NaN/Inf, shapes, dtypes)',
    file: 'packages/protocol/dist/tensor-codec.js',
    only: ['decodeTensorInto', 'firstNonFinite', 'firstNonFiniteIn', 'decodeWeights'],
    tests: ['packages/protocol/dist/tensor-codec.test.js', 'packages/protocol/dist/tensor-codec.fuzz.test.js'],
  },
  {
    name: 'store',
    guarantee: 'history commits are atomic and durable; a purge leaves nothing',
    file: 'packages/coordinator/dist/history/sqlite-store.js',
    only: ['syncStaged', 'makeDurableSync', 'commitRound', 'commitUnlearning', 'commitWithBlobs', 'purgeClients'],
    tests: [
      'packages/coordinator/dist/history/durability.test.js',
      'packages/coordinator/dist/history/sqlite-store.contract.test.js',
      'packages/coordinator/dist/history/sqlite-store.test.js',
    ],
  },
  {
    name: 'store-rules',
    guarantee: 'bad input is refused with its code (the rules every history store enforces)',
    file: 'packages/coordinator/dist/history/store-rules.js',
    only: ['checkConfig', 'checkResume', 'checkRoundOrder', 'checkNewRoundId', 'checkParticipants', 'checkMissing', 'checkUnlearning', 'resolveLineage'],
    tests: ['packages/coordinator/dist/history/sqlite-store.contract.test.js'],
  },
  {
    name: 'fs-blob-store',
    guarantee: 'history commits are atomic and durable; a purge leaves nothing',
    file: 'packages/coordinator/dist/history/fs-blob-store.js',
    only: ['put', 'makeDurable', 'get', 'delete', 'list', 'discard'],
    tests: ['packages/coordinator/dist/history/fs-blob-store.contract.test.js', 'packages/coordinator/dist/history/durability.test.js'],
  },
  {
    name: 'blob-files',
    guarantee: 'history commits are atomic and durable; a purge leaves nothing',
    file: 'packages/coordinator/dist/history/blob-files.js',
    only: ['ensureDirSync', 'fsyncPathSync', 'fsyncPath', 'writeFileDurableSync', 'writeFileUnsynced', 'unlinkDurable'],
    tests: ['packages/coordinator/dist/history/durability.test.js', 'packages/coordinator/dist/history/blob-files.test.js'],
  },
  {
    name: 'upload-window',
    guarantee: 'bounded memory under 1,000 uploads',
    file: 'packages/coordinator/dist/rounds/upload-window.js',
    tests: ['packages/coordinator/dist/rounds/upload-window.test.js'],
  },
];

/** Line ranges ("file:start-end") of the named functions or methods, found in the compiled file. */
function ranges(file, names) {
  const lines = readFileSync(join(root, file), 'utf8').split('\n');
  return names.map((name) => {
    const re = new RegExp(`^(\\s*)(?:export\\s+)?(?:async\\s+)?(?:function\\s+)?${name}\\(`);
    const start = lines.findIndex((l) => re.test(l));
    if (start < 0) throw new Error(`mutate: no function ${name} in ${file}`);
    const indent = re.exec(lines[start])[1];
    const end = lines.findIndex((l, i) => i > start && l === `${indent}}`);
    if (end < 0) throw new Error(`mutate: cannot find the end of ${name} in ${file}`);
    return `${file}:${start + 1}-${end + 1}`;
  });
}

function strykerConfig(m, recheck = null) {
  const name = recheck ? `${m.name}.recheck` : m.name;
  return {
    $schema: '../../node_modules/@stryker-mutator/core/schema/stryker-schema.json',
    packageManager: 'npm',
    testRunner: 'command',
    commandRunner: { command: `node --test ${m.tests.join(' ')}` },
    mutate: recheck ?? (m.only ? ranges(m.file, m.only) : [m.file]),
    // In place: the workspace packages import each other through node_modules links to these very files, which a
    // sandbox copy would not be. Stryker restores the file when it ends (rebuild if it was killed).
    inPlace: true,
    coverageAnalysis: 'off',
    concurrency: Number(process.env.FEDUNLEARN_MUTATE_CONCURRENCY ?? 1),
    timeoutMS: 8_000,
    reporters: ['json', 'html', 'clear-text', 'progress'],
    jsonReporter: { fileName: relative(root, join(reportsDir, `${name}.json`)) },
    htmlReporter: { fileName: relative(root, join(reportsDir, `${name}.html`)) },
    tempDirName: '.stryker-tmp',
    cleanTempDir: true,
    disableTypeChecks: false,
    thresholds: { high: 90, low: 75, break: null },
  };
}

function scoreOf(report) {
  const mutants = Object.values(report.files).flatMap((f) => f.mutants.map((x) => ({ ...x, source: f.source })));
  const count = (s) => mutants.filter((x) => x.status === s).length;
  const killed = count('Killed') + count('Timeout');
  const survived = mutants.filter((x) => x.status === 'Survived' || x.status === 'NoCoverage');
  const valid = killed + survived.length;
  return { mutants, killed, survived, valid, errors: count('RuntimeError') + count('CompileError'), ignored: count('Ignored') };
}

function snippet(source, loc) {
  const line = source.split('\n')[loc.start.line - 1] ?? '';
  return line.trim().slice(0, 110);
}

function summarise() {
  const explained = existsSync(join(outDir, 'equivalent.json')) ? JSON.parse(readFileSync(join(outDir, 'equivalent.json'), 'utf8')) : [];
  const key = (module, line, replacement) => `${module}|${line}|${replacement}`;
  const why = new Map(explained.map((e) => [key(e.module, e.line, e.replacement), e.why]));
  const rows = [];
  const details = [];
  for (const m of MODULES) {
    const path = join(reportsDir, `${m.name}.json`);
    if (!existsSync(path)) {
      rows.push(`| ${m.name} | ${m.guarantee} | not run | | | |`);
      continue;
    }
    const s = scoreOf(JSON.parse(readFileSync(path, 'utf8')));
    const equivalent = s.survived.filter((x) => why.has(key(m.name, x.location.start.line, x.replacement)));
    const open = s.survived.filter((x) => !why.has(key(m.name, x.location.start.line, x.replacement)));
    const score = s.valid > 0 ? (100 * s.killed) / s.valid : NaN;
    const scoreEq = s.valid - equivalent.length > 0 ? (100 * s.killed) / (s.valid - equivalent.length) : NaN;
    rows.push(`| ${m.name} | ${m.guarantee} | ${s.valid} | ${s.killed} | ${score.toFixed(1)} % | ${scoreEq.toFixed(1)} % (${equivalent.length} explained, ${open.length} unexplained) |`);
    if (s.survived.length > 0) {
      details.push(`\n### ${m.name} (\`${m.file}\`)\n`);
      for (const x of s.survived) {
        const w = why.get(key(m.name, x.location.start.line, x.replacement));
        details.push(
          `- line ${x.location.start.line}, ${x.mutatorName}: \`${snippet(x.source, x.location)}\` -> \`${String(x.replacement).replace(/\s+/g, ' ').slice(0, 80)}\`` +
            (w ? `\n  explained: ${w}` : `\n  **unexplained survivor**`),
        );
      }
    }
  }
  const md = [
    '# Mutation testing',
    '',
    'Written by `npm run mutate` (scripts/mutate.mjs): StrykerJS 9 mutates each guarded module as compiled (dist/*.js) and',
    "runs the module's focused tests once per mutant (command runner, `node --test`). Score = killed (a test failed or",
    'timed out) / (killed + survived). A survivor is either explained in mutation/equivalent.json (equivalent: no input',
    'can tell it from the original; or unreachable through the product; or killed by a slower test named there that the',
    'per-mutant command does not run, checked by hand) or listed as unexplained. Line numbers are those of the compiled file.',
    '',
    '| module | guarantee | mutants | killed | score | score without explained survivors |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows,
    '',
    '## Survivors',
    ...(details.length ? details : ['', 'none']),
    '',
  ].join('\n');
  // Notes on the last run (what was rechecked, what the machine was like), kept by hand beside the script's output.
  const notes = existsSync(join(outDir, 'notes.md')) ? `\n${readFileSync(join(outDir, 'notes.md'), 'utf8')}` : '';
  writeFileSync(join(outDir, 'results.md'), md + notes);
  console.log(md);
}

function runStryker(m, config, label) {
  const configPath = join(reportsDir, `${label}.stryker.json`);
  writeFileSync(configPath, JSON.stringify(config, null, 2));
  const res = spawnSync(process.execPath, [join(root, 'node_modules/@stryker-mutator/core/bin/stryker.js'), 'run', relative(root, configPath)], {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, FEDUNLEARN_LOG_LEVEL: 'silent' },
  });
  if (res.status !== 0) console.error(`mutate: ${label}: stryker exited with ${res.status}`);
}

/** Runs the survivors' lines of `m` again and merges the verdicts into its report. */
function recheck(m) {
  const path = join(reportsDir, `${m.name}.json`);
  if (!existsSync(path)) throw new Error(`mutate: no report for ${m.name} to recheck`);
  const report = JSON.parse(readFileSync(path, 'utf8'));
  const file = Object.keys(report.files)[0];
  const survivors = report.files[file].mutants.filter((x) => x.status === 'Survived' || x.status === 'NoCoverage');
  if (survivors.length === 0) return console.log(`mutate: ${m.name}: no survivor to recheck`);
  // A mutant is rechecked when its whole span is inside a range: one range per distinct span.
  const spans = [...new Set(survivors.map((x) => `${x.location.start.line}-${x.location.end.line}`))];
  console.log(`mutate: ${m.name}: rechecking ${survivors.length} survivors on lines ${spans.join(', ')}`);
  runStryker(m, strykerConfig(m, spans.map((span) => `${m.file}:${span}`)), `${m.name}.recheck`);
  const again = JSON.parse(readFileSync(join(reportsDir, `${m.name}.recheck.json`), 'utf8'));
  const fresh = Object.values(again.files)[0].mutants;
  const same = (a, b) =>
    a.mutatorName === b.mutatorName &&
    a.replacement === b.replacement &&
    a.location.start.line === b.location.start.line &&
    a.location.start.column === b.location.start.column &&
    a.location.end.line === b.location.end.line &&
    a.location.end.column === b.location.end.column;
  let killed = 0;
  for (const x of survivors) {
    const y = fresh.find((f) => same(f, x));
    if (y && y.status !== x.status) {
      x.status = y.status;
      killed += y.status === 'Killed' || y.status === 'Timeout' ? 1 : 0;
    }
  }
  writeFileSync(path, JSON.stringify(report));
  console.log(`mutate: ${m.name}: ${killed} of ${survivors.length} survivors now killed`);
}

const args = process.argv.slice(2);
mkdirSync(reportsDir, { recursive: true });
const wanted = args.filter((a) => !a.startsWith('--'));
const unknown = wanted.filter((w) => !MODULES.some((m) => m.name === w));
if (unknown.length) {
  console.error(`mutate: unknown module(s) ${unknown.join(', ')} (modules: ${MODULES.map((m) => m.name).join(', ')})`);
  process.exit(2);
}
const chosen = MODULES.filter((x) => wanted.length === 0 || wanted.includes(x.name));
if (args.includes('--recheck')) {
  for (const m of chosen) recheck(m);
} else if (!args.includes('--summary')) {
  for (const m of chosen) {
    console.log(`mutate: ${m.name} (${m.file}${m.only ? `: ${m.only.join(', ')}` : ''}) against ${m.tests.join(', ')}`);
    runStryker(m, strykerConfig(m), m.name);
  }
}
summarise();
