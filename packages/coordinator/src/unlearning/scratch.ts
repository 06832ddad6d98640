import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Durable per-job scratch space for intermediate models, so that a job interrupted by a crash resumes from its last
 * completed step instead of starting over. A step's model is written once (O(model), off the event loop); the job's
 * step rows in the history refer to it by file name.
 */
export class JobScratch {
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
