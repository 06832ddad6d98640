#!/usr/bin/env node
// A committed launcher, so that `npm ci` links this command before the build has made dist/cli.js (npm links a bin
// only when its file exists). It runs the built command line.
import { existsSync } from 'node:fs';

const cli = new URL('../dist/cli.js', import.meta.url);
if (!existsSync(cli)) {
  console.error('fedunlearn-coordinator is not built yet: run `npm run build` at the root of the repository first');
  process.exit(1);
}
await import(cli.href);
