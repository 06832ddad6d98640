// The generated module is plain JS with its own .d.ts; tsc does not emit it, so it is copied beside the build.
import { cpSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
cpSync(resolve(here, '../src/gen'), resolve(here, '../dist/gen'), { recursive: true });
