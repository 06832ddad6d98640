import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { blobStoreContract } from '../blob-store-contract.js';
import { blobPart, openPgBlobStore, UPDATE_PARTS } from './pg-blob-store.js';
import { adminClient, dropSchemas, freshSchemaName, schemaUrl } from './pg.test-support.js';

/** The BlobStore contract on PostgreSQL: a fresh schema per test on the test server, dropped at its end. */

const schemas: string[] = [];
after(() => dropSchemas(schemas));

blobStoreContract('PostgreSQL', async () => {
  const schema = freshSchemaName();
  schemas.push(schema);
  const blobs = await openPgBlobStore(schemaUrl(schema));
  return { blobs, cleanup: () => dropSchemas([schema]) };
});

test('PostgreSQL blobs: a client’s updates share one partition, which the key alone determines; other blobs go to part 0', async () => {
  const schema = freshSchemaName();
  schemas.push(schema);
  const blobs = await openPgBlobStore(schemaUrl(schema));
  try {
    const keys = ['updates/r1/alice/n1', 'updates/r2/alice/n2', 'updates/r1/bob/n3', 'models/v1', 'jobs/j1/step-0.f32'];
    for (const k of keys) await blobs.put(k, Buffer.from(k));
    const c = await adminClient();
    try {
      const { rows } = await c.query<{ key: string; rel: string }>(`SELECT key, tableoid::regclass::text AS rel FROM ${schema}.blobs`);
      const rel = new Map(rows.map((r) => [r.key, r.rel.replace(`${schema}.`, '')]));
      assert.equal(rel.get('updates/r1/alice/n1'), rel.get('updates/r2/alice/n2'));
      assert.equal(rel.get('models/v1'), 'blobs_other');
      assert.equal(rel.get('jobs/j1/step-0.f32'), 'blobs_other');
      assert.match(rel.get('updates/r1/bob/n3')!, /^blobs_u\d\d$/);
    } finally {
      await c.end();
    }
    // Spread: 200 client names fill every update partition.
    const parts = new Set(Array.from({ length: 200 }, (_, i) => blobPart(`updates/r/c${i}/n`)));
    assert.equal(parts.size, UPDATE_PARTS);
    for (const k of keys) assert.deepEqual(Buffer.from((await blobs.get(k))!), Buffer.from(k));
  } finally {
    await blobs.close();
  }
});
