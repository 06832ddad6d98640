// Runs every compiled test file with node's test runner: unit tests beside the code (packages/*/dist/**/*.test.js)
// and the end-to-end scenarios (test/dist/**/*.test.js). `--unit` skips the scenarios.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const unitOnly = process.argv.includes('--unit');

function find(dir, out = []) {
  let entries;
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = join(dir, e);
    if (statSync(p).isDirectory()) find(p, out);
    else if (e.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const files = [];
for (const pkg of readdirSync(join(root, 'packages'))) files.push(...find(join(root, 'packages', pkg, 'dist')));
if (!unitOnly) files.push(...find(join(root, 'test', 'dist')));
files.sort();
if (files.length === 0) {
  console.error('run-tests: no compiled test files found; run `npm run build` first');
  process.exit(1);
}
console.log(`run-tests: ${files.length} test files`);
// --test-force-exit: a file whose test failed while a coordinator or a socket was still open (the failure skipped its
// clean-up) ends when its tests have, instead of keeping the whole run waiting on the open handles.
const res = spawnSync(process.execPath, ['--test', '--test-force-exit', '--test-reporter=spec', ...files.map((f) => relative(root, f))], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, FEDUNLEARN_LOG_LEVEL: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' },
});
process.exit(res.status ?? 1);
