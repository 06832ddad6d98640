import { dirichlet, makeRng, permutation, shuffleInPlace, type Rng } from './rng.js';
import { subset, type LocalDataset } from './types.js';

export type PartitionSpec =
  | { kind: 'iid' }
  /** Per class, client shares drawn from Dirichlet(α): small α = few classes per client (Hsu et al. 2019). */
  | { kind: 'dirichlet'; alpha: number }
  /** Sort by label, cut into numClients·S shards, S random shards per client (McMahan et al. 2017). */
  | { kind: 'shards'; shards: number };

export interface PartitionOptions {
  /**
   * Dirichlet only: the fewest examples any client may get. Default min(10, ⌊count / numClients⌋), so no client is
   * empty however small α is.
   */
  minPerClient?: number;
}

/** Parses 'iid', 'dirichlet:ALPHA' (ALPHA > 0) or 'shards:S' (integer S ≥ 1). */
export function parsePartitionSpec(spec: string): PartitionSpec {
  const s = spec.trim();
  if (s === 'iid') return { kind: 'iid' };
  const m = /^([a-z]+):(.*)$/.exec(s);
  const expected = `expected 'iid', 'dirichlet:ALPHA' (ALPHA > 0, e.g. dirichlet:0.5) or 'shards:S' (integer S >= 1, e.g. shards:2)`;
  if (!m) throw new RangeError(`bad partition spec '${spec}': ${expected}`);
  const [, kind, arg = ''] = m;
  const value = arg.trim() === '' ? NaN : Number(arg);
  if (kind === 'dirichlet') {
    if (!(value > 0) || !Number.isFinite(value)) throw new RangeError(`bad partition spec '${spec}': Dirichlet alpha must be a number > 0`);
    return { kind: 'dirichlet', alpha: value };
  }
  if (kind === 'shards') {
    if (!Number.isInteger(value) || value < 1) throw new RangeError(`bad partition spec '${spec}': shards per client must be an integer >= 1`);
    return { kind: 'shards', shards: value };
  }
  throw new RangeError(`bad partition spec '${spec}': unknown kind '${kind}'; ${expected}`);
}

/**
 * Splits `ds` into `numClients` disjoint client data sets that together hold every example exactly once.
 * Deterministic in `seed`. Each client's examples come back in random order (not grouped by class).
 */
export function partition(ds: LocalDataset, numClients: number, spec: string, seed: number, opts: PartitionOptions = {}): LocalDataset[] {
  return partitionIndices(ds.y.subarray(0, ds.count), ds.numClasses, numClients, spec, seed, opts).map((idx) => subset(ds, idx));
}

/** {@link partition} as example indices per client, for callers that want to avoid copying features. */
export function partitionIndices(
  labels: ArrayLike<number>,
  numClasses: number,
  numClients: number,
  spec: string,
  seed: number,
  opts: PartitionOptions = {},
): Int32Array[] {
  if (!Number.isInteger(numClients) || numClients < 1) throw new RangeError(`numClients ${numClients} must be an integer >= 1`);
  if (labels.length < numClients) throw new RangeError(`cannot give ${numClients} clients at least one of ${labels.length} examples`);
  const parsed = parsePartitionSpec(spec);
  const rng = makeRng(seed, 'partition', parsed.kind);
  let clients: number[][];
  switch (parsed.kind) {
    case 'iid':
      clients = iid(labels.length, numClients, rng);
      break;
    case 'dirichlet': {
      const min = opts.minPerClient ?? Math.min(10, Math.floor(labels.length / numClients));
      if (!Number.isInteger(min) || min < 0 || min * numClients > labels.length) {
        throw new RangeError(`minPerClient ${min} impossible for ${labels.length} examples over ${numClients} clients`);
      }
      clients = dirichletSplit(labels, numClasses, numClients, parsed.alpha, min, rng);
      break;
    }
    case 'shards':
      clients = shards(labels, numClients, parsed.shards, rng);
      break;
  }
  return clients.map((c) => Int32Array.from(shuffleInPlace(c, rng)));
}

function iid(count: number, numClients: number, rng: Rng): number[][] {
  const order = permutation(count, rng);
  return contiguous(count, numClients).map(([from, to]) => Array.from(order.subarray(from, to)));
}

/** [from, to) bounds cutting `count` items into `parts` runs whose sizes differ by at most one. */
function contiguous(count: number, parts: number): [number, number][] {
  const base = Math.floor(count / parts);
  const extra = count % parts;
  const out: [number, number][] = [];
  let at = 0;
  for (let i = 0; i < parts; i++) {
    const size = base + (i < extra ? 1 : 0);
    out.push([at, at + size]);
    at += size;
  }
  return out;
}

function groupByClass(labels: ArrayLike<number>, numClasses: number): number[][] {
  const byClass: number[][] = Array.from({ length: numClasses }, () => []);
  for (let i = 0; i < labels.length; i++) {
    const bucket = byClass[labels[i]!];
    if (!bucket) throw new RangeError(`label ${labels[i]} at ${i} outside [0, ${numClasses})`);
    bucket.push(i);
  }
  return byClass;
}

/** Integer counts summing to `total` in proportion to `p` (largest-remainder rounding). */
function apportion(p: Float64Array, total: number): number[] {
  const exact = Array.from(p, (v) => v * total);
  const counts = exact.map(Math.floor);
  let left = total - counts.reduce((a, b) => a + b, 0);
  const byRemainder = exact.map((v, i) => [v - Math.floor(v), i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (const [, i] of byRemainder) {
    if (left-- <= 0) break;
    counts[i]!++;
  }
  return counts;
}

/** `to.push(...from.slice(start, end))` without spreading, which overflows the stack for large runs. */
function appendRange(to: number[], from: ArrayLike<number>, start: number, end: number): void {
  for (let i = start; i < end; i++) to.push(from[i]!);
}

const DIRICHLET_ATTEMPTS = 100;

/**
 * Per class, client shares ~ Dir(α). Like the reference implementations (Hsu et al.; NIID-Bench) it redraws the
 * whole assignment while some client falls under `min`; when α is so small that redrawing rarely succeeds, it keeps
 * the last draw and tops the short clients up with random examples taken from the largest ones, so the loop ends.
 */
function dirichletSplit(labels: ArrayLike<number>, numClasses: number, numClients: number, alpha: number, min: number, rng: Rng): number[][] {
  const byClass = groupByClass(labels, numClasses);
  let clients: number[][] = [];
  for (let attempt = 0; attempt < DIRICHLET_ATTEMPTS; attempt++) {
    clients = Array.from({ length: numClients }, () => []);
    for (const members of byClass) {
      if (members.length === 0) continue;
      const order = shuffleInPlace([...members], rng);
      const counts = apportion(dirichlet(alpha, numClients, rng), order.length);
      let at = 0;
      counts.forEach((n, k) => {
        appendRange(clients[k]!, order, at, at + n);
        at += n;
      });
    }
    if (clients.every((c) => c.length >= min)) return clients;
  }
  for (;;) {
    let small = 0;
    let large = 0;
    clients.forEach((c, k) => {
      if (c.length < clients[small]!.length) small = k;
      if (c.length > clients[large]!.length) large = k;
    });
    if (clients[small]!.length >= min) return clients;
    const donor = clients[large]!;
    const pick = rng.int(donor.length);
    clients[small]!.push(donor[pick]!);
    donor[pick] = donor[donor.length - 1]!;
    donor.pop();
  }
}

function shards(labels: ArrayLike<number>, numClients: number, perClient: number, rng: Rng): number[][] {
  const numShards = numClients * perClient;
  if (numShards > labels.length) throw new RangeError(`${numShards} shards need at least that many examples, have ${labels.length}`);
  // Shuffle before the (stable) sort so that the order inside one class, and so each shard's members, is random.
  const sorted = Array.from(permutation(labels.length, rng)).sort((a, b) => labels[a]! - labels[b]!);
  const bounds = contiguous(sorted.length, numShards);
  const shardOrder = permutation(numShards, rng);
  return Array.from({ length: numClients }, (_, k) => {
    const mine: number[] = [];
    for (let s = 0; s < perClient; s++) {
      const [from, to] = bounds[shardOrder[k * perClient + s]!]!;
      appendRange(mine, sorted, from, to);
    }
    return mine;
  });
}
