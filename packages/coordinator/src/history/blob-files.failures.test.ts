import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ensureDirSync, fsyncPath, fsyncPathSync, kernelSync, TEMP_MARK, unlinkDurable, writeFileDurableSync, writeFileUnsynced, type DiskSync } from './blob-files.js';

// The durable-file helpers when something fails: a disk that is full (of bytes or of inodes), an fsync that reports
// an I/O error, a directory created by someone else in between, a path that is not what it should be. Each test checks
// that the caller sees the failure's own error and that nothing is left behind: no temporary file, no partial file, no
// open descriptor, and the file that was there before unchanged.
//
// A full disk is real: a tmpfs of a few pages (and a few inodes) mounted for the test. Mounting needs root
// (CAP_SYS_ADMIN); where it is refused those tests are skipped and say so. An fsync error is injected through the
// DiskSync seam, which calls the kernel's fsync first.

function tempDir(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-blobfail-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const TINY_DISK = 'fedunlearn-tinydisk-';

/**
 * Unmounts the tiny disks of test processes that are gone: a process killed mid-test (a timeout, a mutant that hangs
 * under `npm run mutate`) never reaches its t.after. The owner's pid is in the mount point's name.
 */
function sweepTinyDisks(): void {
  if (!fs.existsSync('/proc/mounts')) return;
  for (const line of fs.readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const dir = line.split(' ')[1] ?? '';
    const m = new RegExp(`/${TINY_DISK}(\\d+)-[^/]*$`).exec(dir);
    if (!m) continue;
    try {
      process.kill(Number(m[1]), 0);
      continue; // its owner is alive
    } catch {
      spawnSync('umount', [dir]);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }
}

/** A tmpfs of `bytes` bytes and `inodes` inodes (its root directory is one), unmounted after the test; null if refused. */
function tinyDisk(t: TestContext, bytes: number, inodes: number): string | null {
  sweepTinyDisks();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${TINY_DISK}${process.pid}-`));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes},nr_inodes=${inodes},mode=0700`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.status !== 0) {
    fs.rmdirSync(dir);
    t.skip(`cannot mount a tmpfs here (${(r.stderr || String(r.error)).trim()}): needs root`);
    return null;
  }
  t.after(() => {
    spawnSync('umount', [dir]);
    fs.rmdirSync(dir);
  });
  return dir;
}

/** The files this process holds open under `dir` (Linux: /proc/self/fd), to show that no descriptor leaks. */
function openUnder(dir: string): string[] {
  const out: string[] = [];
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      const target = fs.readlinkSync(`/proc/self/fd/${fd}`);
      if (target === dir || target.startsWith(`${dir}/`)) out.push(target);
    } catch {
      // the descriptor readdir itself used, closed by now
    }
  }
  return out;
}

/** The kernel's sync, except that fsyncs of files whose name matches `failOn` report EIO after the real fsync. */
function failingFsync(failOn: (file: string) => boolean): { disk: DiskSync; failed: string[] } {
  const failed: string[] = [];
  const eio = (file: string) => Object.assign(new Error(`EIO: i/o error, fsync '${file}'`), { code: 'EIO', syscall: 'fsync' });
  const disk: DiskSync = {
    fsyncSync(fd, file) {
      kernelSync.fsyncSync(fd, file);
      if (!failOn(file)) return;
      failed.push(file);
      throw eio(file);
    },
    async fsync(handle, file) {
      await kernelSync.fsync(handle, file);
      if (!failOn(file)) return;
      failed.push(file);
      throw eio(file);
    },
    commit: kernelSync.commit,
  };
  return { disk, failed };
}

/** Random bytes: tmpfs stores pages as they are, so the size on disk is the size. */
function bytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

test('ensureDirSync accepts a directory another writer created between its check and its mkdir', (t) => {
  const root = tempDir(t);
  const dir = path.join(root, 'a', 'b');
  // The first fsync is of `root`, after `a` was created and before `b` is: the moment a concurrent writer (another
  // store opening the same data directory) can create `b`, so that this mkdir meets EEXIST.
  const racer: DiskSync = {
    ...kernelSync,
    fsyncSync(fd, file) {
      kernelSync.fsyncSync(fd, file);
      if (file === root && !fs.existsSync(dir)) fs.mkdirSync(dir);
    },
  };
  ensureDirSync(dir, racer);
  assert.ok(fs.statSync(dir).isDirectory());
});

test('ensureDirSync refuses a path below a regular file with ENOTDIR rather than pretending it made it', (t) => {
  const root = tempDir(t);
  fs.writeFileSync(path.join(root, 'file'), 'x');
  assert.throws(() => ensureDirSync(path.join(root, 'file', 'sub')), { code: 'ENOTDIR' });
});

test('fsyncPathSync and fsyncPath close their descriptor, also when the fsync fails', async (t) => {
  const root = tempDir(t);
  const file = path.join(root, 'f.bin');
  fs.writeFileSync(file, 'data');
  fsyncPathSync(file);
  await fsyncPath(file);
  assert.deepEqual(openUnder(root), []);
  const { disk, failed } = failingFsync(() => true);
  assert.throws(() => fsyncPathSync(file, disk), { code: 'EIO' });
  await assert.rejects(fsyncPath(root, disk), { code: 'EIO' });
  assert.deepEqual(failed, [file, root]);
  assert.deepEqual(openUnder(root), []);
});

test('writeFileDurableSync whose fsync fails throws EIO, leaves no temporary file or descriptor and the old file as it was', (t) => {
  const root = tempDir(t);
  const file = path.join(root, 'blob.bin');
  writeFileDurableSync(file, new Uint8Array([1, 2, 3]));
  assert.deepEqual(openUnder(root), []);
  const { disk, failed } = failingFsync((f) => f.includes(TEMP_MARK));
  assert.throws(() => writeFileDurableSync(file, new Uint8Array([9, 9, 9, 9]), disk), { code: 'EIO' });
  assert.equal(failed.length, 1, 'the temporary file was fsynced once, and that failed');
  assert.deepEqual(fs.readdirSync(root), ['blob.bin']);
  assert.deepEqual([...fs.readFileSync(file)], [1, 2, 3]);
  assert.deepEqual(openUnder(root), []);
});

test('writeFileDurableSync on a full disk throws ENOSPC and leaves only the old file, unchanged', (t) => {
  const disk = tinyDisk(t, 64 * 1024, 16);
  if (!disk) return;
  const file = path.join(disk, 'blob.bin');
  const old = bytes(8 * 1024, 1);
  writeFileDurableSync(file, old);
  // 100 KB do not fit in the 56 KB left: the first write(2) is partial, the next one fails.
  assert.throws(() => writeFileDurableSync(file, bytes(100 * 1024, 2)), { code: 'ENOSPC' });
  assert.deepEqual(fs.readdirSync(disk), ['blob.bin']);
  assert.deepEqual(new Uint8Array(fs.readFileSync(file)), old);
  assert.deepEqual(openUnder(disk), []);
});

test('writeFileDurableSync with no inode left throws ENOSPC, not the error of cleaning up a file it never made', (t) => {
  // Two inodes: the root directory and the old blob; the temporary file cannot be created at all.
  const disk = tinyDisk(t, 64 * 1024, 2);
  if (!disk) return;
  const file = path.join(disk, 'blob.bin');
  writeFileDurableSync(file, new Uint8Array([1, 2, 3]));
  assert.throws(() => writeFileDurableSync(file, new Uint8Array([4, 5, 6])), { code: 'ENOSPC', syscall: 'open' });
  assert.deepEqual(fs.readdirSync(disk), ['blob.bin']);
  assert.deepEqual([...fs.readFileSync(file)], [1, 2, 3]);
});

test('writeFileUnsynced on a full disk throws ENOSPC and leaves no partial file', async (t) => {
  const disk = tinyDisk(t, 64 * 1024, 16);
  if (!disk) return;
  fs.writeFileSync(path.join(disk, 'other.bin'), bytes(8 * 1024, 3));
  await assert.rejects(writeFileUnsynced(path.join(disk, 'staged.bin'), bytes(100 * 1024, 4)), { code: 'ENOSPC' });
  assert.deepEqual(fs.readdirSync(disk), ['other.bin']);
  assert.deepEqual(openUnder(disk), []);
});

test('writeFileUnsynced with no inode left throws ENOSPC, not the error of cleaning up a file it never made', async (t) => {
  const disk = tinyDisk(t, 64 * 1024, 2);
  if (!disk) return;
  fs.writeFileSync(path.join(disk, 'other.bin'), 'x');
  await assert.rejects(writeFileUnsynced(path.join(disk, 'staged.bin'), new Uint8Array([1])), { code: 'ENOSPC', syscall: 'open' });
  assert.deepEqual(fs.readdirSync(disk), ['other.bin']);
});

test('writeFileUnsynced refuses to write over an existing file with EEXIST and leaves that file as it was', async (t) => {
  const root = tempDir(t);
  const file = path.join(root, 'staged.bin');
  fs.writeFileSync(file, Buffer.from([7, 7]));
  await assert.rejects(writeFileUnsynced(file, new Uint8Array([1, 2, 3])), { code: 'EEXIST' });
  assert.deepEqual([...fs.readFileSync(file)], [7, 7]);
});

test('unlinkDurable skips missing files but fails on one it cannot unlink (a directory), keeping it', async (t) => {
  const root = tempDir(t);
  const a = path.join(root, 'a.bin');
  const sub = path.join(root, 'sub');
  fs.writeFileSync(a, 'abc');
  fs.mkdirSync(sub);
  await assert.rejects(unlinkDurable([path.join(root, 'missing.bin'), a, sub]), { code: 'EISDIR' });
  assert.deepEqual(fs.readdirSync(root), ['sub']);
});
