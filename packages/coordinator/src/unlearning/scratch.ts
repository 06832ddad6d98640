import { mkdirSync, openSync, writeSync, fsyncSync, closeSync, renameSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Durable per-job scratch space for intermediate models, so that a job interrupted by a crash resumes from its last
 * completed step instead of starting over.
 */
export class JobScratch {
  constructor(private readonly dir: string) {}

  private jobDir(jobId: string): string {
    return join(this.dir, jobId);
  }

  writeWeights(jobId: string, step: number, values: Float32Array): string {
    const dir = this.jobDir(jobId);
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `step-${step}.f32`);
    const tmp = `${file}.tmp`;
    const fd = openSync(tmp, 'w');
    try {
      writeSync(fd, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
    return file;
  }

  readWeights(file: string, size: number): Float32Array {
    const buf = readFileSync(file);
    if (buf.byteLength !== size * 4) throw new Error(`scratch ${file}: ${buf.byteLength} bytes, expected ${size * 4}`);
    const out = new Float32Array(size);
    new Uint8Array(out.buffer).set(buf);
    return out;
  }

  remove(jobId: string): void {
    rmSync(this.jobDir(jobId), { recursive: true, force: true });
  }
}
