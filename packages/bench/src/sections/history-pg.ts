import { mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { openPgHistory, openSqliteHistory, type HistoryStore, type ModelVersion } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { layerNorms, type WeightLayout } from '@fedunlearn/protocol';
import { filled, round } from '../fixtures.js';
import { compare, summarise } from '../measure.js';
import type { SectionOptions, SectionResult } from '../section.js';

/** The PostgreSQL server the section uses (the machine's by default). */
const PG_URL = process.env.FEDUNLEARN_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/**
 * The PostgreSQL history store against the embedded one, side by side on the same machine:
 * - `round`: a round of K staged MNIST-CNN updates and its commit, PostgreSQL (candidate) against SQLite (baseline),
 *   interleaved; ratio = SQLite median / PostgreSQL median (below 1: PostgreSQL is slower).
 * - `purge`: purgeClients of one client (DELETE, then VACUUM FULL of the blob partition and the tables that held its
 *   rows) on a history of 2R rounds (candidate) against R rounds (baseline), interleaved: the ratio shows how its cost
 *   grows with the history (0.5 would be linear).
 */
export async function run(opts: SectionOptions): Promise<SectionResult> {
  // --quick: the MLP (109k values) instead of the CNN (1.66M), so that the smoke test stays short.
  const def = opts.quick
    ? builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 1 })
    : builtInDefinition('cnn', { inputShape: [28, 28, 1], numClasses: 10, seed: 1 });
  const layout = def.initial.layout;
  const k = opts.quick ? 4 : 10;
  const repeats = opts.quick ? 3 : 9;
  const purgeRounds = opts.quick ? 2 : 8;
  opts.log(`history-pg: MNIST ${opts.quick ? 'MLP' : 'CNN'} (${layout.totalSize} values), rounds of ${k} clients, PostgreSQL against SQLite; purge on ${purgeRounds} vs ${2 * purgeRounds} rounds`);
  const updates = Array.from({ length: k }, (_, i) => filled(layout.totalSize, 200 + i, 0.01));
  const norms = updates.map((u) => layerNorms(layout, u));
  const open = async (store: HistoryStore) =>
    (await store.open({ topologyJson: def.topologyJson, layout, initialWeights: def.initial.values, config: { historyInterval: 1, retention: 'fp32' } })).head;

  const schemas: string[] = [];
  const dirs: string[] = [];
  const stores: HistoryStore[] = [];
  const newPg = async () => {
    const schema = `fedunlearn_bench_${randomBytes(5).toString('hex')}`;
    schemas.push(schema);
    const u = new URL(PG_URL);
    u.searchParams.set('schema', schema);
    const s = await openPgHistory(u.toString());
    stores.push(s);
    return s;
  };
  try {
    const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-bench-history-pg-'));
    dirs.push(dir);
    const sqlite = openSqliteHistory(dir);
    stores.push(sqlite);
    const postgres = await newPg();
    const heads = new Map<HistoryStore, ModelVersion>([
      [sqlite, await open(sqlite)],
      [postgres, await open(postgres)],
    ]);
    const roundOn = (store: HistoryStore) => ({
      run: async () => {
        heads.set(store, await commitOneRound(store, heads.get(store)!, layout, updates, norms, 'c'));
      },
    });
    const roundCmp = await compare(roundOn(postgres), roundOn(sqlite), { warmup: 1, repeats });

    // Two histories, R and 2R rounds of K clients each with stored updates; each measured pair forgets one more client
    // in both (the purge's DELETE and its VACUUM FULL of the partitions and tables that held the client's rows).
    const small = await newPg();
    const large = await newPg();
    let historyBytesLarge = 0;
    for (const [store, n] of [
      [small, purgeRounds],
      [large, 2 * purgeRounds],
    ] as const) {
      let head = await open(store);
      for (let r = 0; r < n; r++) head = await commitOneRound(store, head, layout, updates, norms, 'p');
      const stats = await store.stats();
      if (store === large) historyBytesLarge = stats.updateBytes + stats.modelBytes;
    }
    const purgeRepeats = Math.min(repeats, k - 1);
    let nextSmall = 0;
    let nextLarge = 0;
    const purge = (store: HistoryStore, next: () => number) => ({
      run: async () => {
        const p = await store.purgeClients([`p-${next()}`]);
        if (!p.complete || p.updatesDeleted === 0) throw new Error(`purge did not complete (${JSON.stringify(p)})`);
      },
    });
    const purgeCmp = await compare(purge(large, () => nextLarge++), purge(small, () => nextSmall++), { warmup: 1, repeats: purgeRepeats });
    return {
      round: { ...summarise(roundCmp), clients: k },
      purge: { ...summarise(purgeCmp), rounds: [purgeRounds, 2 * purgeRounds], largeHistoryMB: round(historyBytesLarge / 1e6, 1) },
      params: layout.totalSize,
    };
  } finally {
    for (const s of stores) await s.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    const c = new pg.Client({ connectionString: PG_URL });
    await c.connect();
    try {
      for (const s of schemas) await c.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
    } finally {
      await c.end();
    }
  }
}

let seq = 0;
async function commitOneRound(
  store: HistoryStore,
  head: ModelVersion,
  layout: WeightLayout,
  updates: Float32Array[],
  norms: Float64Array[],
  prefix: string,
): Promise<ModelVersion> {
  const roundId = `bench-${prefix}-${++seq}`;
  await Promise.all(updates.map((u, i) => store.stageUpdate(roundId, `${prefix}-${i}`, u)));
  await store.syncStaged(roundId);
  return store.commitRound({
    round: head.round + 1,
    roundId,
    modelBefore: head.version,
    weights: filled(layout.totalSize, 1000 + seq, 0.1),
    participants: updates.map((_, i) => ({ clientId: `${prefix}-${i}`, numExamples: 600, norms: norms[i]! })),
    metrics: {},
    startedAt: Date.now(),
  });
}
