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

/** A fresh FsBlobStore under a temporary directory, removed after the test. */
function freshFiles(t: { after(fn: () => unknown): void }, opts: ConstructorParameters<typeof FsBlobStore>[1] = {}): { blobs: FsBlobStore; root: string; dir: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-blobs-'));
  const root = path.join(dir, 'blobs');
  const blobs = new FsBlobStore(root, opts);
  t.after(async () => {
    await blobs.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { blobs, root, dir };
}

test('files: makeDurable flushes more keys than one batch holds, each file once, then their directory once', async (t) => {
  const rec = recorder();
  const { blobs, root } = freshFiles(t, { disk: rec.disk });
  // 70 keys: two full batches of 32 and a partial one.
  const keys = Array.from({ length: 70 }, (_, i) => `updates/r1/c${String(i).padStart(2, '0')}`);
  for (const k of keys) await blobs.put(k, Uint8Array.of(1));
  rec.flushed.length = 0;
  await blobs.makeDurable(keys);
  const r1 = path.join(root, 'updates', 'r1');
  // The files of a batch are flushed side by side (in any order), the directory after all of them.
  assert.deepEqual(rec.flushed.slice(0, -1).sort(), keys.map((k) => path.join(root, ...k.split('/'))));
  assert.equal(rec.flushed.at(-1), r1);
});

test('files: an fsync that fails with EIO rejects makeDurable with that error (not as a missing blob) and leaves the key pending', async (t) => {
  const rec = recorder();
  let fail = true;
  const disk: DiskSync = {
    ...rec.disk,
    fsync: async (h, file) => {
      if (fail) throw Object.assign(new Error(`EIO: i/o error, fsync '${file}'`), { code: 'EIO' });
      return rec.disk.fsync(h, file);
    },
  };
  const { blobs, root } = freshFiles(t, { disk });
  await blobs.put('models/v1', Uint8Array.of(1));
  await assert.rejects(blobs.makeDurable(['models/v1']), (e: NodeJS.ErrnoException) => e.code === 'EIO' && e.name === 'Error');
  fail = false;
  rec.flushed.length = 0;
  await blobs.makeDurable(['models/v1']);
  assert.deepEqual(rec.flushed, [path.join(root, 'models', 'v1'), path.join(root, 'models')], 'flushed on the retry: it was never marked durable');
});

test('files: a put that cannot be renamed into place rejects and leaves no temporary file; a read error other than absence is thrown, not read as null', async (t) => {
  const { blobs, root } = freshFiles(t);
  // 'models/v1' is a directory here (it holds models/v1/x): a file cannot replace it.
  await blobs.put('models/v1/x', Uint8Array.of(1));
  await assert.rejects(blobs.put('models/v1', Uint8Array.of(2)), (e: NodeJS.ErrnoException) => e.code === 'EISDIR');
  assert.deepEqual(fs.readdirSync(path.join(root, 'models')), ['v1'], 'no temporary file is left beside it');
  assert.deepEqual(await blobs.get('models/v1/x'), Uint8Array.of(1));
  await assert.rejects(blobs.get('models/v1'), (e: NodeJS.ErrnoException) => e.code === 'EISDIR');
});

test('files: without a quarantine folder, discard deletes the blobs', async (t) => {
  const { blobs, root, dir } = freshFiles(t);
  await blobs.put('updates/r1/a', Uint8Array.of(1));
  await blobs.put('updates/r1/b', Uint8Array.of(2));
  assert.deepEqual(await blobs.discard(['updates/r1/a']), ['updates/r1/a']);
  assert.deepEqual(fs.readdirSync(path.join(root, 'updates', 'r1')), ['b']);
  assert.deepEqual(fs.readdirSync(dir), ['blobs'], 'nothing was set aside');
});

test('files: a folder that cannot be read is an error for list, not an empty folder (garbage collection and purges must not see "no blobs")', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-blobs-'));
  try {
    const root = path.join(dir, 'blobs');
    const blobs = new FsBlobStore(root);
    await blobs.put('updates/r1/a', new Uint8Array([1, 2, 3]));
    assert.deepEqual(await blobs.list('updates/'), ['updates/r1/a']);
    // A damaged data directory, reproducible without a fault seam even as root: `models` is a symlink to itself, so
    // reading it fails with ELOOP (root reads past permissions, so EACCES cannot stand in).
    fs.symlinkSync('models', path.join(root, 'models'));
    await assert.rejects(blobs.list('models/'), (e: NodeJS.ErrnoException) => e.code === 'ELOOP');
    // Absent is still empty: a prefix nobody wrote to lists nothing.
    assert.deepEqual(await blobs.list('jobs/'), []);
    await blobs.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
