// Generates the static protobuf module and its TypeScript declarations from proto/ (never edited by hand).
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const protoDir = resolve(here, '../../../proto/fedunlearn/v1');
const outDir = resolve(here, '../src/gen');
mkdirSync(outDir, { recursive: true });
const require = createRequire(import.meta.url);
const cliDir = dirname(require.resolve('protobufjs-cli/package.json'));
const protos = readdirSync(protoDir).filter((f) => f.endsWith('.proto')).map((f) => join(protoDir, f));
const js = join(outDir, 'proto.js');
execFileSync(process.execPath, [join(cliDir, 'bin/pbjs'), '-t', 'static-module', '-w', 'es6', '--force-number', '--no-verify', '--no-delimited', '--no-beautify', '-o', js, ...protos], { stdio: 'inherit' });
// protobufjs 7 ships CommonJS without an exports map: Node's ESM loader needs the file extension and a default import.
const src = readFileSync(js, 'utf8').replace('import * as $protobuf from "protobufjs/minimal";', 'import $protobuf from "protobufjs/minimal.js";');
writeFileSync(js, src);
execFileSync(process.execPath, [join(cliDir, 'bin/pbts'), '-o', join(outDir, 'proto.d.ts'), js], { stdio: 'inherit' });
console.log(`codegen: ${protos.length} proto file(s) -> ${outDir}`);
