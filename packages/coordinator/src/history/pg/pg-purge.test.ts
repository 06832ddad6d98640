import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import { encodeBlob } from '../blob-files.js';
import { blobPart, blobPartition } from './pg-blob-store.js';
import { openPgHistory, type PgHistoryStore } from './pg-store.js';
import { adminClient, dropSchemas, filesWith, freshSchemaName, relationFiles, schemaUrl } from './pg.test-support.js';

/**
 * The purge leaves no byte of a forgotten client's updates in the relation files: the test writes updates made of a
 * recognisable byte marker, finds the marker in the files on disk (so the search can fail), purges, and finds it no
 * more, while another client's marker stays (so the test reads the right files). Runs as a user that may read the
 * server's data directory (root on the test machine).
 */

const schemas: string[] = [];
after(() => dropSchemas(schemas));

// Big enough (16 KB an update) that the bytes go to the TOAST relation, small enough to stay quick.
const layout = layoutOf([
  { name: 'dense/kernel', shape: [64, 64] },
  { name: 'dense/bias', shape: [64] },
]);
const topologyJson = JSON.stringify({ name: 'purge-test' });

/** Floats whose little-endian bytes repeat an 8-byte ASCII marker (upper-case letters and digits: finite floats). */
function markerUpdate(marker: string): Float32Array {
  assert.equal(marker.length, 8);
  const bytes = Buffer.alloc(layout.totalSize * 4);
  for (let i = 0; i < bytes.length; i += 8) bytes.write(marker, i, 'latin1');
  const v = new Float32Array(layout.totalSize);
  new Uint8Array(v.buffer).set(bytes);
  assert.ok(v.every(Number.isFinite));
  return v;
}

/** How many of these files contain the ASCII `marker`. */
function filesWithMarker(files: string[], marker: string): number {
  return filesWith(files, Buffer.from(marker, 'latin1'));
}

async function federation(opts: { purgeLockTimeoutMs?: number } = {}): Promise<{ store: PgHistoryStore; schema: string }> {
  const schema = freshSchemaName();
  schemas.push(schema);
  const store = await openPgHistory(schemaUrl(schema), opts);
  await store.open({ topologyJson, layout, initialWeights: new Float32Array(layout.totalSize), config: { historyInterval: 1, retention: 'fp32' } });
  return { store, schema };
}

/** Two rounds in which both clients' updates are stored, and a third round staged but not committed. */
async function trainWithMarkers(store: PgHistoryStore, forget: string, keep: string): Promise<void> {
  for (let round = 1; round <= 2; round++) {
    const head = await store.head();
    const roundId = `round-${round}`;
    await store.stageUpdate(roundId, 'forget-me', markerUpdate(forget));
    await store.stageUpdate(roundId, 'keep-me', markerUpdate(keep));
    const participants = ['forget-me', 'keep-me'].map((clientId) => ({
      clientId,
      numExamples: 10,
      norms: layerNorms(layout, markerUpdate(clientId === 'forget-me' ? forget : keep)),
    }));
    await store.commitRound({ round, roundId, modelBefore: head.version, weights: new Float32Array(layout.totalSize).fill(round), participants, metrics: {}, startedAt: round });
  }
  await store.stageUpdate('round-3', 'forget-me', markerUpdate(forget));
}

test('purgeClients leaves no byte of the forgotten client’s updates in any relation file (heap or TOAST); the other client’s stay', async () => {
  const { store, schema } = await federation();
  try {
    await trainWithMarkers(store, 'QZFORGET', 'QZKEEPME');
    const before = await relationFiles(schema);
    assert.ok(filesWithMarker(before, 'QZFORGET') > 0, 'the marker is on disk before the purge (the search works)');

    // Only the partition holding the forgotten client's blobs is rewritten (a new relfilenode), not the others.
    const forgetPart = blobPartition(blobPart('updates/r/forget-me/n'));
    const keepPart = blobPartition(blobPart('updates/r/keep-me/n'));
    assert.notEqual(forgetPart, keepPart, 'the two clients hash to different partitions (else pick other ids)');
    const filenodes = async () => {
      const c = await adminClient();
      try {
        const { rows } = await c.query<{ relname: string; n: string }>(
          `SELECT c.relname, c.relfilenode::text AS n FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = $1`,
          [schema],
        );
        return new Map(rows.map((r) => [r.relname, r.n]));
      } finally {
        await c.end();
      }
    };
    const nodesBefore = await filenodes();
    const purged = await store.purgeClients(['forget-me']);
    assert.equal(purged.complete, true);
    assert.equal(purged.updatesDeleted, 2);
    const nodesAfter = await filenodes();
    assert.notEqual(nodesAfter.get(forgetPart), nodesBefore.get(forgetPart), `${forgetPart} was rewritten`);
    assert.equal(nodesAfter.get(keepPart), nodesBefore.get(keepPart), `${keepPart} was not`);
    assert.equal(nodesAfter.get('blobs_other'), nodesBefore.get('blobs_other'), 'nor the models');
    assert.equal(await store.completePurge(), true, 'nothing left to do');
    // Two stored updates and the staged one, each an fp32 blob of the layout.
    assert.equal(purged.bytesDeleted, 3 * encodeBlob(layout, markerUpdate('QZFORGET'), 'fp32').bytes.byteLength);

    const afterFiles = await relationFiles(schema);
    assert.equal(filesWithMarker(afterFiles, 'QZFORGET'), 0, 'no file holds the forgotten client’s bytes');
    assert.ok(filesWithMarker(afterFiles, 'QZKEEPME') > 0, 'the kept client’s updates are still there (the same files were read)');
    const kept = await store.readUpdate('round-1', 'keep-me');
    assert.deepEqual(kept, markerUpdate('QZKEEPME'));
    assert.equal(await store.readUpdate('round-1', 'forget-me'), null);
    assert.equal(await store.isForgotten('forget-me'), true);
  } finally {
    await store.close();
  }
});

test('a session holding a snapshot from before the purge makes it incomplete (its rows are still on disk) until it ends; then completePurge finishes', async () => {
  const { store, schema } = await federation({ purgeLockTimeoutMs: 200 });
  const reader = await adminClient();
  try {
    await trainWithMarkers(store, 'QZREADER', 'QZOTHERS');
    // A backup or report tool: a repeatable-read transaction whose snapshot still sees the rows about to be purged,
    // touching none of the store's tables (so no lock stands in the vacuum's way: only its snapshot).
    await reader.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    await reader.query('SELECT 1 FROM pg_class LIMIT 1');

    const purged = await store.purgeClients(['forget-me']);
    assert.equal(purged.complete, false, 'reported incomplete while the old snapshot lives');
    assert.ok(filesWithMarker(await relationFiles(schema), 'QZREADER') > 0, 'and indeed VACUUM FULL kept the rows that snapshot may see');

    // Now a reader holding a lock on a purged table: the vacuum does not wait for it.
    await reader.query('COMMIT');
    await reader.query('BEGIN');
    await reader.query(`SELECT COUNT(*) FROM ${schema}.participants`);
    assert.equal(await store.completePurge(), false, 'a lock it cannot take in time: incomplete, without waiting');
    await reader.query('COMMIT');

    assert.equal(await store.completePurge(), true);
    assert.equal(filesWithMarker(await relationFiles(schema), 'QZREADER'), 0);
    assert.ok(filesWithMarker(await relationFiles(schema), 'QZOTHERS') > 0);
  } finally {
    await reader.end();
    await store.close();
  }
});

