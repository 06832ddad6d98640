import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { BlobKeyError, BlobStoreClosedError, HistoryBlobMissingError, type BlobStore } from './blob-store.js';

/**
 * The BlobStore contract: what every implementation (files, PostgreSQL, ...) must do, as node:test tests registered
 * for a factory over fresh, empty storage. An implementation's own test file calls `blobStoreContract`.
 */
export type BlobStoreFactory = () => Promise<{ blobs: BlobStore; cleanup(): Promise<void> }>;

const bytes = (...v: number[]) => Uint8Array.from(v);

export function blobStoreContract(name: string, factory: BlobStoreFactory): void {
  describe(`BlobStore contract: ${name}`, () => {
    const withStore = (fn: (blobs: BlobStore) => Promise<void>) => async () => {
      const { blobs, cleanup } = await factory();
      try {
        await fn(blobs);
      } finally {
        await blobs.close();
        await cleanup();
      }
    };

    test('put then get returns the bytes; a second put replaces them; an absent key reads null', withStore(async (blobs) => {
      const first = bytes(1, 2, 3);
      await blobs.put('updates/r1/a', first);
      first[0] = 9; // the store kept its own copy
      assert.deepEqual(await blobs.get('updates/r1/a'), bytes(1, 2, 3));
      await blobs.put('updates/r1/a', bytes(4, 5));
      assert.deepEqual(await blobs.get('updates/r1/a'), bytes(4, 5));
      await blobs.put('models/v1', new Uint8Array(0));
      assert.deepEqual(await blobs.get('models/v1'), new Uint8Array(0));
      assert.equal(await blobs.get('updates/r1/b'), null);
    }));

    test('makeDurable accepts present keys (again and together) and refuses one that holds nothing', withStore(async (blobs) => {
      await blobs.put('updates/r1/a', bytes(1));
      await blobs.put('updates/r1/b', bytes(2));
      await blobs.makeDurable(['updates/r1/a', 'updates/r1/b']);
      await blobs.makeDurable(['updates/r1/a']);
      await blobs.makeDurable([]);
      await assert.rejects(blobs.makeDurable(['updates/r1/a', 'updates/r1/none']), HistoryBlobMissingError);
      assert.deepEqual(await blobs.get('updates/r1/b'), bytes(2));
    }));

    test('list returns exactly the keys under a prefix; delete frees their bytes and skips absent keys', withStore(async (blobs) => {
      await blobs.put('updates/r1/a', bytes(1, 1));
      await blobs.put('updates/r1/b', bytes(2, 2, 2));
      await blobs.put('updates/r10/a', bytes(3));
      await blobs.put('models/v1', bytes(4, 4, 4, 4));
      await blobs.put('jobs/j1/step-0', bytes(5));
      assert.deepEqual((await blobs.list('updates/r1/')).sort(), ['updates/r1/a', 'updates/r1/b']);
      assert.deepEqual((await blobs.list('updates/')).sort(), ['updates/r1/a', 'updates/r1/b', 'updates/r10/a']);
      assert.deepEqual((await blobs.list('')).sort(), ['jobs/j1/step-0', 'models/v1', 'updates/r1/a', 'updates/r1/b', 'updates/r10/a']);
      assert.deepEqual(await blobs.list('nothing/'), []);
      assert.equal(await blobs.delete(['updates/r1/b', 'models/v1', 'models/absent']), 7);
      assert.equal(await blobs.delete(['updates/r1/b']), 0);
      assert.equal(await blobs.get('models/v1'), null);
      assert.deepEqual((await blobs.list('')).sort(), ['jobs/j1/step-0', 'updates/r1/a', 'updates/r10/a']);
    }));

    test('discard removes garbage from the store (listed no more, read as null) and says which keys it removed', withStore(async (blobs) => {
      await blobs.put('updates/r1/a', bytes(1));
      await blobs.put('updates/r1/b', bytes(2));
      assert.deepEqual(await blobs.discard(['updates/r1/b', 'updates/r1/absent']), ['updates/r1/b']);
      assert.equal(await blobs.get('updates/r1/b'), null);
      assert.deepEqual(await blobs.list('updates/'), ['updates/r1/a']);
      assert.deepEqual(await blobs.discard([]), []);
    }));

    test('every method refuses a malformed key or prefix with BlobKeyError and changes nothing', withStore(async (blobs) => {
      for (const bad of ['', '/a', 'a/', 'a//b', '../x', 'a/../b', 'a/./b', 'sp ace', 'a\\b', 'x'.repeat(513)]) {
        await assert.rejects(blobs.put(bad, bytes(1)), BlobKeyError, `put ${JSON.stringify(bad)}`);
        await assert.rejects(blobs.get(bad), BlobKeyError, `get ${JSON.stringify(bad)}`);
        await assert.rejects(blobs.delete([bad]), BlobKeyError, `delete ${JSON.stringify(bad)}`);
        await assert.rejects(blobs.makeDurable([bad]), BlobKeyError, `makeDurable ${JSON.stringify(bad)}`);
      }
      await assert.rejects(blobs.list('updates'), BlobKeyError);
      await assert.rejects(blobs.list('../'), BlobKeyError);
      assert.deepEqual(await blobs.list(''), []);
    }));

    test('after close every call rejects with BlobStoreClosedError; close is idempotent', async () => {
      const { blobs, cleanup } = await factory();
      try {
        await blobs.put('models/v1', bytes(1));
        await blobs.close();
        await blobs.close();
        await assert.rejects(blobs.get('models/v1'), BlobStoreClosedError);
        await assert.rejects(blobs.put('models/v2', bytes(1)), BlobStoreClosedError);
        await assert.rejects(blobs.makeDurable(['models/v1']), BlobStoreClosedError);
        await assert.rejects(blobs.delete(['models/v1']), BlobStoreClosedError);
        await assert.rejects(blobs.list(''), BlobStoreClosedError);
        await assert.rejects(blobs.discard(['models/v1']), BlobStoreClosedError);
      } finally {
        await cleanup();
      }
    });
  });
}
