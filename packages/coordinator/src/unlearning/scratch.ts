import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { jobStepKey, type BlobStore } from '../history/blob-store.js';

/**
 * Durable per-job scratch space for intermediate models, so that a job interrupted by a crash resumes from its last
 * completed step instead of starting over. A step's model is written once (O(model), off the event loop); the job's
 * step rows in the history refer to it by file name.
 */
export class JobScratch implements JobCheckpoints {
  constructor(private readonly dir: string) {}

  private jobDir(jobId: string): string {
    return join(this.dir, jobId);
  }

  /** Writes step `step`'s model durably (temp file, fsync, rename, directory fsync); returns its file name. */
  async writeWeights(jobId: string, step: number, values: Float32Array): Promise<string> {
    const dir = this.jobDir(jobId);
    await mkdir(dir, { recursive: true });
    const name = `step-${step}.f32`;
    const file = join(dir, name);
    const tmp = `${file}.tmp`;
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
    const dh = await open(dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
    return name;
  }

  /** Reads a step's model back; `file` is the name writeWeights returned (or, from older checkpoints, a full path). */
  async readWeights(jobId: string, file: string, size: number): Promise<Float32Array> {
    const path = file.includes('/') ? file : join(this.jobDir(jobId), file);
    const buf = await readFile(path);
    if (buf.byteLength !== size * 4) throw new Error(`scratch ${path}: ${buf.byteLength} bytes, expected ${size * 4}`);
    const out = new Float32Array(size);
    new Uint8Array(out.buffer).set(buf);
    return out;
  }

  /** Idempotent; off the event loop (a long job leaves thousands of step files). */
  async remove(jobId: string): Promise<void> {
    await rm(this.jobDir(jobId), { recursive: true, force: true });
  }

  /** Removes the scratch of every job not in `keep` (jobs that ended, also those whose end a crash interrupted
   *  before their scratch was removed). */
  sweep(keep: ReadonlySet<string>): void {
    mkdirSync(this.dir, { recursive: true });
    for (const name of readdirSync(this.dir)) if (!keep.has(name)) rmSync(join(this.dir, name), { recursive: true, force: true });
  }
}

/** Where a job keeps each step's model until it ends: files of one process (JobScratch) or a shared BlobStore. */
export interface JobCheckpoints {
  writeWeights(jobId: string, step: number, values: Float32Array): Promise<string>;
  readWeights(jobId: string, name: string, size: number): Promise<Float32Array>;
  remove(jobId: string): Promise<void>;
  sweep(keep: ReadonlySet<string>): void | Promise<void>;
}

/**
 * A job's step models as blobs (`jobs/<jobId>/step-<n>`) of a shared BlobStore: on a cluster the next leader resumes
 * a job from the last step the previous one checkpointed (the step rows name these keys).
 */
export class BlobJobScratch implements JobCheckpoints {
  constructor(private readonly blobs: BlobStore) {}

  async writeWeights(jobId: string, step: number, values: Float32Array): Promise<string> {
    const key = jobStepKey(jobId, step);
    await this.blobs.put(key, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    await this.blobs.makeDurable([key]);
    return key;
  }

  async readWeights(jobId: string, name: string, size: number): Promise<Float32Array> {
    if (!name.startsWith(`jobs/${jobId}/`)) throw new Error(`job ${jobId}: checkpoint ${name} is not a blob of this job (written by a coordinator with another store?)`);
    const bytes = await this.blobs.get(name);
    if (!bytes) throw new Error(`job ${jobId}: checkpoint blob ${name} is missing`);
    if (bytes.byteLength !== size * 4) throw new Error(`checkpoint ${name}: ${bytes.byteLength} bytes, expected ${size * 4}`);
    const out = new Float32Array(size);
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }

  async remove(jobId: string): Promise<void> {
    await this.blobs.delete(await this.blobs.list(`jobs/${jobId}/`));
  }

  async sweep(keep: ReadonlySet<string>): Promise<void> {
    const stale = (await this.blobs.list('jobs/')).filter((k) => !keep.has(k.split('/')[1] ?? ''));
    if (stale.length > 0) await this.blobs.delete(stale);
  }
}
