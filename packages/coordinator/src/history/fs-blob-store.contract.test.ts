import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { blobStoreContract } from './blob-store-contract.js';
import { kernelSync, TEMP_MARK, type DiskSync } from './blob-files.js';
import { FsBlobStore } from './fs-blob-store.js';

blobStoreContract('files', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-blobs-'));
  return { blobs: new FsBlobStore(path.join(dir, 'blobs'), { quarantineDir: path.join(dir, 'quarantine') }), cleanup: async () => fs.rmSync(dir, { recursive: true, force: true }) };
});

/** Records every fsync, calling through to the kernel's. */
function recorder(): { disk: DiskSync; flushed: string[] } {
  const flushed: string[] = [];
  return {
    flushed,
    disk: {
      fsyncSync: (fd, file) => (flushed.push(file), kernelSync.fsyncSync(fd, file)),
      fsync: (h, file) => (flushed.push(file), kernelSync.fsync(h, file)),
      commit: kernelSync.commit,
    },
  };
}

test('files: makeDurable flushes each file once and then each directory once; a put makes its key pending again', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-blobs-'));
  try {
    const root = path.join(dir, 'blobs');
    const rec = recorder();
    const blobs = new FsBlobStore(root, { disk: rec.disk });
    await blobs.put('updates/r1/a', Uint8Array.of(1));
    await blobs.put('updates/r1/b', Uint8Array.of(2));
    rec.flushed.length = 0;
    await blobs.makeDurable(['updates/r1/a', 'updates/r1/b', 'updates/r1/a']);
    const r1 = path.join(root, 'updates', 'r1');
    assert.deepEqual(rec.flushed, [path.join(r1, 'a'), path.join(r1, 'b'), r1]);
    rec.flushed.length = 0;
    await blobs.makeDurable(['updates/r1/a']);
    assert.deepEqual(rec.flushed, [], 'durable keys cost nothing');
    await blobs.put('updates/r1/a', Uint8Array.of(3));
    await blobs.makeDurable(['updates/r1/a']);
    assert.deepEqual(rec.flushed, [path.join(r1, 'a'), r1]);
    await blobs.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('files: temporary files of interrupted writes are never listed and are swept; discarded blobs go to quarantine with their key as path', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-blobs-'));
  try {
    const root = path.join(dir, 'blobs');
    const blobs = new FsBlobStore(root, { quarantineDir: path.join(dir, 'quarantine'), now: () => Date.UTC(2026, 0, 2, 3, 4, 5) });
    await blobs.put('models/v1', Uint8Array.of(1, 2));
    await blobs.put('updates/r1/a', Uint8Array.of(7));
    fs.writeFileSync(path.join(root, 'models', `v2${TEMP_MARK}deadbeef`), 'half-written');
    assert.deepEqual((await blobs.list('')).sort(), ['models/v1', 'updates/r1/a']);
    assert.equal(await blobs.sweepInterrupted(), 1);
    assert.deepEqual(fs.readdirSync(path.join(root, 'models')), ['v1']);
    assert.deepEqual(await blobs.discard(['updates/r1/a']), ['updates/r1/a']);
    const kept = path.join(dir, 'quarantine', '2026-01-02T03-04-05-000Z', 'updates', 'r1', 'a');
    assert.deepEqual(fs.readFileSync(kept), Buffer.from([7]));
    await blobs.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
