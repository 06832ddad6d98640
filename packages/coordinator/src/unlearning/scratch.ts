import { readFile } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { jobStepKey, type BlobStore } from '../history/blob-store.js';

/**
 * Durable per-job scratch space for intermediate models, so that a job interrupted by a crash resumes from its last
 * completed step instead of starting over. A step's model is written once (O(model), off the event loop) as the
 * blob `jobs/<jobId>/step-<i>.f32` of a BlobStore (files under the data directory by default, so the same files as
 * before the seam); the job's step rows in the history refer to it by that key.
 */
export class JobScratch {
  constructor(private readonly blobs: BlobStore) {}

  /** Writes step `step`'s model durably (put, then makeDurable); returns its blob key. */
  async writeWeights(jobId: string, step: number, values: Float32Array): Promise<string> {
    const key = `${jobStepKey(jobId, step)}.f32`;
    await this.blobs.put(key, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    await this.blobs.makeDurable([key]);
    return key;
  }

  /** Reads a step's model back. `ref` is the key writeWeights returned; checkpoints written before the seam hold a
   *  file name within the job's folder (the same blob) or an absolute path (read as it is). */
  async readWeights(jobId: string, ref: string, size: number): Promise<Float32Array> {
    let buf: Uint8Array | null;
    if (isAbsolute(ref)) buf = await readFile(ref);
    else buf = await this.blobs.get(ref.includes('/') ? ref : `jobs/${jobId}/${ref}`);
    if (buf === null) throw new Error(`scratch ${ref} of job ${jobId} is missing`);
    if (buf.byteLength !== size * 4) throw new Error(`scratch ${ref}: ${buf.byteLength} bytes, expected ${size * 4}`);
    const out = new Float32Array(size);
    new Uint8Array(out.buffer).set(buf);
    return out;
  }

  /** Idempotent; off the event loop (a long job leaves thousands of step blobs). */
  async remove(jobId: string): Promise<void> {
    await this.blobs.delete(await this.blobs.list(`jobs/${jobId}/`));
  }

  /** Removes the scratch of every job not in `keep` (jobs that ended, also those whose end a crash interrupted
   *  before their scratch was removed). */
  async sweep(keep: ReadonlySet<string>): Promise<void> {
    const stale = (await this.blobs.list('jobs/')).filter((k) => !keep.has(k.split('/')[1]!));
    await this.blobs.delete(stale);
    // A step's write a crash interrupted left no blob, but the filesystem store may hold its temporary file.
    await this.blobs.sweepInterrupted?.('jobs/');
  }
}
