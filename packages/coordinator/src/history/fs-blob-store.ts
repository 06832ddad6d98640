import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { BlobStoreClosedError, checkBlobKey, checkBlobPrefix, HistoryBlobMissingError, type BlobStore } from './blob-store.js';
import { ensureDirSync, fsyncPath, kernelSync, TEMP_MARK, unlinkDurable, type DiskSync } from './blob-files.js';

/** Files fsynced at once by makeDurable. */
const FSYNC_BATCH = 32;

export interface FsBlobStoreOptions {
  /** Where garbage collection sets aside the blobs it discards (one folder per call, named by its time). Without
   *  it, discarded blobs are deleted. */
  quarantineDir?: string;
  /** The fsync seam (history/blob-files.ts): a test records the flushes through it. */
  disk?: DiskSync;
  now?: () => number;
}

/**
 * The filesystem BlobStore: one file per key under `root` (the key's segments are its path). A `put` writes a
 * temporary file and renames it over the key without fsync (a crash leaves the old bytes, the new ones or a temporary
 * file, never a torn blob); `makeDurable` fsyncs the files and then their directories, once each, off the event loop,
 * so a whole round's updates cost one flush per file plus one per directory. Temporary files (TEMP_MARK) are never
 * listed; `discard` deletes them and moves every other blob to the quarantine folder, keeping its key as its path.
 *
 * One process per root: the durability bookkeeping (which keys are flushed) is this instance's.
 */
export class FsBlobStore implements BlobStore {
  private readonly disk: DiskSync;
  private readonly now: () => number;
  /** Keys whose current bytes are known to be durable (flushed by makeDurable); a put makes its key pending again. */
  private readonly durable = new Set<string>();
  private closed = false;

  constructor(
    private readonly root: string,
    private readonly opts: FsBlobStoreOptions = {},
  ) {
    this.disk = opts.disk ?? kernelSync;
    this.now = opts.now ?? Date.now;
  }

  /** The file holding `key` (for the store's own diagnostics; callers use the methods). */
  fileOf(key: string): string {
    checkBlobKey(key);
    return path.join(this.root, ...key.split('/'));
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    this.requireOpen();
    const file = this.fileOf(key);
    ensureDirSync(path.dirname(file), this.disk);
    const tmp = `${file}${TEMP_MARK}${randomBytes(6).toString('hex')}`;
    try {
      await fsp.writeFile(tmp, bytes, { flag: 'wx' });
      await fsp.rename(tmp, file);
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw e;
    }
    this.durable.delete(key);
  }

  async makeDurable(keys: readonly string[]): Promise<void> {
    this.requireOpen();
    const pending = [...new Set(keys)].filter((k) => !this.durable.has(k));
    const dirs = new Set<string>();
    const files = pending.map((key) => this.fileOf(key));
    // A bounded number at a time, all in flight together: the kernel writes them back at once instead of one flush
    // after another (a long replay makes thousands durable before its commit).
    for (let i = 0; i < pending.length; i += FSYNC_BATCH) {
      await Promise.all(
        pending.slice(i, i + FSYNC_BATCH).map(async (key, j) => {
          try {
            await fsyncPath(files[i + j]!, this.disk);
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new HistoryBlobMissingError(key);
            throw e;
          }
        }),
      );
    }
    for (const f of files) dirs.add(path.dirname(f));
    // The renames are durable once their directories are: only then may a commit refer to the keys.
    for (const d of dirs) await fsyncPath(d, this.disk);
    for (const key of pending) this.durable.add(key);
  }

  async get(key: string): Promise<Uint8Array | null> {
    this.requireOpen();
    try {
      const b = await fsp.readFile(this.fileOf(key));
      return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async delete(keys: readonly string[]): Promise<number> {
    this.requireOpen();
    const files = keys.map((k) => this.fileOf(k));
    const freed = await unlinkDurable(files, this.disk);
    for (const k of keys) this.durable.delete(k);
    return freed;
  }

  async list(prefix: string): Promise<string[]> {
    this.requireOpen();
    checkBlobPrefix(prefix);
    const out: string[] = [];
    const walk = async (dir: string, rel: string): Promise<void> => {
      let entries: fs.Dirent[];
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      for (const ent of entries) {
        const key = rel === '' ? ent.name : `${rel}/${ent.name}`;
        if (ent.isDirectory()) await walk(path.join(dir, ent.name), key);
        else if (!ent.name.includes(TEMP_MARK)) out.push(key);
      }
    };
    await walk(prefix === '' ? this.root : path.join(this.root, ...prefix.slice(0, -1).split('/')), prefix.slice(0, -1));
    return out;
  }

  /** Temporary files of interrupted writes under `prefix` (never complete by construction): what `discard` of
   *  garbage after a crash also removes. Returns how many were deleted. */
  async sweepInterrupted(prefix = ''): Promise<number> {
    this.requireOpen();
    checkBlobPrefix(prefix);
    let n = 0;
    const walk = async (dir: string): Promise<void> => {
      let entries: fs.Dirent[];
      try {
        entries = await fsp.readdir(dir, { withFileTypes: true });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw e;
      }
      let changed = false;
      for (const ent of entries) {
        if (ent.isDirectory()) await walk(path.join(dir, ent.name));
        else if (ent.name.includes(TEMP_MARK)) {
          await fsp.rm(path.join(dir, ent.name), { force: true });
          n++;
          changed = true;
        }
      }
      if (changed) await fsyncPath(dir, this.disk);
    };
    await walk(prefix === '' ? this.root : path.join(this.root, ...prefix.slice(0, -1).split('/')));
    return n;
  }

  async discard(keys: readonly string[]): Promise<string[]> {
    this.requireOpen();
    if (keys.length === 0) return [];
    const quarantine = this.opts.quarantineDir
      ? path.join(this.opts.quarantineDir, new Date(this.now()).toISOString().replace(/[:.]/g, '-'))
      : null;
    const removed: string[] = [];
    const dirs = new Set<string>();
    for (const key of keys) {
      const file = this.fileOf(key);
      if (!fs.existsSync(file)) continue;
      if (quarantine) {
        // Set aside, never deleted: an orphan may be the only copy of a commit the metadata lost.
        const to = path.join(quarantine, ...key.split('/'));
        ensureDirSync(path.dirname(to), this.disk);
        await fsp.rename(file, to);
        dirs.add(path.dirname(to));
      } else await fsp.rm(file, { force: true });
      dirs.add(path.dirname(file));
      this.durable.delete(key);
      removed.push(key);
    }
    for (const d of dirs) await fsyncPath(d, this.disk);
    return removed;
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private requireOpen(): void {
    if (this.closed) throw new BlobStoreClosedError('the blob store is closed');
  }
}
