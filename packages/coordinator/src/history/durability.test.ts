import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { kernelSync, TEMP_MARK, type DiskSync } from './blob-files.js';
import { BLOBS_DIR, DB_FILE, openSqliteHistory } from './sqlite-store.js';
import type { HistoryStore, ParticipantInput } from './store.js';

// The store's commit protocol, watched through its DiskSync seam: every fsync of a blob or a directory and every
// metadata commit, in the order they happen, recorded by a DiskSync that calls through to the kernel's. A SIGKILL
// keeps the page cache, so the crash tests (sqlite-store.crash.test.ts, test/src/crash-loop.e2e.test.ts) cannot see
// a missing fsync; these tests fail when one goes missing or moves after the commit that refers to its blob, and
// when the commit runs with SQLite's synchronous below FULL.

const layout = layoutOf([
  { name: 'dense/kernel', shape: [6, 4] },
  { name: 'dense/bias', shape: [4] },
]);
const topologyJson = JSON.stringify({ name: 'tiny', layers: ['dense'] });
/** PRAGMA synchronous = FULL: in WAL mode the WAL is fsynced before a commit returns. */
const SYNCHRONOUS_FULL = 2;

type DiskEvent = { kind: 'fsync'; file: string; dir: boolean } | { kind: 'commit'; synchronous: number; referenced: Set<string> };

/** Records the fsyncs and commits of a store, calling the real ones; after each commit, which blobs rows refer to. */
function recorder(dataDir: string): { disk: DiskSync; events: DiskEvent[]; close(): void } {
  const events: DiskEvent[] = [];
  let reader: Database.Database | null = null;
  const referenced = (): Set<string> => {
    // A second connection sees exactly what is committed (WAL readers see the last commit, never a transaction in
    // flight), so a blob it lists is one a crash from here on must find.
    reader ??= new Database(path.join(dataDir, DB_FILE), { readonly: true, fileMustExist: true });
    const rows = reader.prepare('SELECT blob FROM models WHERE erased_at IS NULL UNION ALL SELECT blob FROM updates').all() as { blob: string }[];
    return new Set(rows.map((r) => path.join(dataDir, BLOBS_DIR, r.blob)));
  };
  const isDir = (file: string) => fs.statSync(file).isDirectory();
  const disk: DiskSync = {
    fsyncSync(fd, file) {
      kernelSync.fsyncSync(fd, file);
      events.push({ kind: 'fsync', file, dir: isDir(file) });
    },
    async fsync(handle, file) {
      await kernelSync.fsync(handle, file);
      events.push({ kind: 'fsync', file, dir: isDir(file) });
    },
    commit(run, synchronous) {
      kernelSync.commit(run, synchronous);
      events.push({ kind: 'commit', synchronous, referenced: referenced() });
    },
  };
  return { disk, events, close: () => reader?.close() };
}

/** The final name of a file fsynced under a temporary one (written, fsynced, then renamed). */
function finalName(file: string): string {
  const i = file.indexOf(TEMP_MARK);
  return i < 0 ? file : file.slice(0, i);
}

/**
 * The invariant: every blob that a commit makes referenced had its bytes fsynced, and then its directory entry,
 * before that commit; and every commit ran under synchronous=FULL. Returns how many blobs it checked.
 */
function assertDurableBeforeCommit(events: DiskEvent[]): number {
  let before = new Set<string>();
  let checked = 0;
  events.forEach((e, c) => {
    if (e.kind !== 'commit') return;
    assert.equal(e.synchronous, SYNCHRONOUS_FULL, `commit #${c} ran with PRAGMA synchronous=${e.synchronous}, not FULL`);
    for (const blob of e.referenced) {
      if (before.has(blob)) continue;
      const fileAt = events.findIndex((x, i) => i < c && x.kind === 'fsync' && !x.dir && finalName(x.file) === blob);
      assert.ok(fileAt >= 0, `${path.relative(os.tmpdir(), blob)} is referenced by commit #${c} but its bytes were never fsynced before it`);
      const dirAt = events.findIndex((x, i) => i > fileAt && i < c && x.kind === 'fsync' && x.dir && x.file === path.dirname(blob));
      assert.ok(dirAt >= 0, `${path.relative(os.tmpdir(), blob)} is referenced by commit #${c} but its directory entry was not fsynced between its bytes and the commit`);
      checked++;
    }
    before = e.referenced;
  });
  return checked;
}

const rng = (seed: number): (() => number) => seedrandom(String(seed));
function randomWeights(r: () => number): Float32Array {
  return Float32Array.from({ length: layout.totalSize }, () => r() * 2 - 1);
}

async function trainRound(store: HistoryStore, r: () => number, clients: string[], syncFirst: boolean): Promise<void> {
  const head = await store.head();
  const round = head.round + 1;
  const roundId = `round-${round}-${head.lineage.slice(0, 6)}`;
  const participants: ParticipantInput[] = [];
  for (const clientId of clients) {
    const update = randomWeights(r);
    await store.stageUpdate(roundId, clientId, update);
    participants.push({ clientId, numExamples: 10, norms: layerNorms(layout, update) });
  }
  // The round engine syncs its staged updates together before committing; a caller that does not is covered by the
  // commit itself. Both paths must leave the same order.
  if (syncFirst) await store.syncStaged(roundId);
  await store.commitRound({ round, roundId, modelBefore: head.version, weights: randomWeights(r), participants, metrics: {}, startedAt: round });
}

function withStore(fn: (store: HistoryStore, events: DiskEvent[], dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-durability-'));
    const rec = recorder(dir);
    const store = openSqliteHistory(dir, { disk: rec.disk });
    try {
      await store.open({ topologyJson, layout, initialWeights: randomWeights(rng(1)), config: { historyInterval: 1, retention: 'fp32' } });
      await fn(store, rec.events, dir);
    } finally {
      await rec.close();
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
}

test(
  'every blob a round commit refers to (model and staged updates) is fsynced, then its directory, before the commit, under synchronous=FULL',
  withStore(async (store, events) => {
    const r = rng(2);
    await trainRound(store, r, ['a', 'b', 'c'], true);
    await trainRound(store, r, ['a', 'b'], false);
    const commits = events.filter((e) => e.kind === 'commit');
    assert.equal(commits.length, 3, 'open, then two rounds');
    // 1 initial model, then 2 models and 5 updates: every one of them checked.
    assert.equal(assertDurableBeforeCommit(events), 8);
  }),
);

test(
  'an unlearning commit makes its models, intermediate ones included, and its replayed updates durable before it refers to them',
  withStore(async (store, events) => {
    const r = rng(3);
    await trainRound(store, r, ['a', 'b'], true);
    const initVersion = (await store.listRounds())[0]!.modelBefore;
    const replay = [1, 2].map((round) => ({ round, roundId: `replay-${round}`, updates: new Map([['b', randomWeights(r)]]) }));
    for (const rp of replay) for (const [c, u] of rp.updates) await store.stageUpdate(rp.roundId, c, u);
    await store.commitUnlearning({
      jobId: 'job-1',
      weights: randomWeights(r),
      rounds: replay.map((rp, i) => ({
        round: rp.round,
        roundId: rp.roundId,
        modelBefore: i === 0 ? initVersion : '',
        participants: [...rp.updates].map(([clientId, u]) => ({ clientId, numExamples: 5, norms: layerNorms(layout, u) })),
        metrics: {},
        startedAt: i,
        closedAt: i + 1,
      })),
      intermediateModels: [{ round: 1, weights: randomWeights(r) }],
    });
    // 1 initial model; round 1's model and 2 updates; the unlearning's 2 models and 2 replayed updates.
    assert.equal(assertDurableBeforeCommit(events), 8);
  }),
);

test(
  'a purge commits the deletion of its rows under synchronous=FULL before it unlinks their files, and fsyncs their directories after',
  withStore(async (store, events, dir) => {
    const r = rng(4);
    await trainRound(store, r, ['a', 'b'], true);
    await trainRound(store, r, ['a', 'b'], true);
    const files = [...([...events].reverse().find((e) => e.kind === 'commit') as { referenced: Set<string> }).referenced].filter((f) => path.basename(f).startsWith('a.'));
    assert.equal(files.length, 2, "a's two stored updates");
    const from = events.length;
    const summary = await store.purgeClients(['a']);
    assert.equal(summary.updatesDeleted, 2);
    const after = events.slice(from);
    const commitAt = after.findIndex((e) => e.kind === 'commit');
    assert.ok(commitAt >= 0, 'the purge committed through the seam');
    const commit = after[commitAt] as { synchronous: number; referenced: Set<string> };
    assert.equal(commit.synchronous, SYNCHRONOUS_FULL);
    for (const f of files) {
      assert.ok(!commit.referenced.has(f), 'no row refers to a purged update once the purge commits');
      assert.ok(!fs.existsSync(f), `${path.relative(dir, f)} is unlinked`);
      assert.ok(
        after.some((e, i) => i > commitAt && e.kind === 'fsync' && e.dir && e.file === path.dirname(f)),
        `the directory of ${path.relative(dir, f)} is fsynced after the unlink`,
      );
    }
  }),
);

test(
  "syncStaged makes a round's staged updates durable by itself, once: files, then their directory; the commit does not fsync them again",
  withStore(async (store, events) => {
    const r = rng(5);
    const head = await store.head();
    const roundId = 'round-1-sync';
    const participants: ParticipantInput[] = [];
    for (const clientId of ['a', 'b', 'c']) {
      const update = randomWeights(r);
      await store.stageUpdate(roundId, clientId, update);
      participants.push({ clientId, numExamples: 10, norms: layerNorms(layout, update) });
    }
    const staged = events.length;
    await store.syncStaged(roundId);
    const synced = events.slice(staged);
    const files = synced.filter((e) => e.kind === 'fsync' && !e.dir).map((e) => (e as { file: string }).file);
    assert.equal(files.length, 3, 'each staged update fsynced once');
    assert.deepEqual(files.map((f) => path.basename(f).split('.')[0]).sort(), ['a', 'b', 'c']);
    const dirAt = synced.findIndex((e) => e.kind === 'fsync' && e.dir && e.file === path.dirname(files[0]!));
    assert.equal(dirAt, synced.length - 1, 'then their directory, last');
    assert.ok(synced.every((e) => e.kind === 'fsync'), 'nothing is committed by syncStaged');
    // A second call has nothing left to do.
    const again = events.length;
    await store.syncStaged(roundId);
    assert.equal(events.length, again);
    await store.commitRound({ round: 1, roundId, modelBefore: head.version, weights: randomWeights(r), participants, metrics: {}, startedAt: 1 });
    const afterSync = events.slice(again);
    assert.ok(!afterSync.some((e) => e.kind === 'fsync' && files.includes(e.file)), 'the commit does not fsync the synced updates again');
    const commit = afterSync.find((e) => e.kind === 'commit') as { referenced: Set<string> };
    for (const f of files) assert.ok(commit.referenced.has(f), `the commit refers to ${path.basename(f)}`);
    assert.equal(assertDurableBeforeCommit(events), 1 + 1 + 3);
  }),
);

test(
  "a purge leaves no copy of the purged rows in the WAL",
  withStore(async (store, _events, dir) => {
    const r = rng(6);
    await trainRound(store, r, ['a', 'b'], true);
    await store.purgeClients(['a']);
    // Deleted pages are overwritten (secure_delete) and the WAL, which held their pre-purge copies, is emptied.
    const wal = path.join(dir, `${DB_FILE}-wal`);
    assert.ok(!fs.existsSync(wal) || fs.statSync(wal).size === 0, `the WAL holds ${fs.existsSync(wal) ? fs.statSync(wal).size : 0} bytes after the purge`);
  }),
);

test('the recorder sees a real difference: a commit whose blob was not fsynced first is reported', () => {
  // The invariant checker itself, on a hand-made sequence: without this a checker that accepts anything would pass.
  const blob = path.join(os.tmpdir(), 'x', 'blobs', 'models', 'm.bin');
  const dir = path.dirname(blob);
  const good: DiskEvent[] = [
    { kind: 'fsync', file: `${blob}${TEMP_MARK}abc`, dir: false },
    { kind: 'fsync', file: dir, dir: true },
    { kind: 'commit', synchronous: SYNCHRONOUS_FULL, referenced: new Set([blob]) },
  ];
  assert.equal(assertDurableBeforeCommit(good), 1);
  assert.throws(() => assertDurableBeforeCommit([good[1]!, good[2]!]), /never fsynced/);
  assert.throws(() => assertDurableBeforeCommit([good[1]!, good[0]!, good[2]!]), /directory entry was not fsynced/);
  assert.throws(() => assertDurableBeforeCommit([good[0]!, good[2]!, good[1]!]), /directory entry was not fsynced/);
  assert.throws(() => assertDurableBeforeCommit([good[0]!, good[1]!, { ...(good[2] as { referenced: Set<string> }), kind: 'commit', synchronous: 0 }]), /synchronous=0/);
});
