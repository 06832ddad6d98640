import { fork, type ChildProcess } from 'node:child_process';
import type { FromCoordinator, ToCoordinator } from './messages.js';

type Reply<T extends FromCoordinator['type']> = Extract<FromCoordinator, { type: T }>;

/** The bench side of a coordinator child process: one request at a time, each answered by one typed reply. */
export class CoordinatorChild {
  private readonly child: ChildProcess;
  private exited: Promise<void>;

  constructor() {
    // 'advanced' serialisation carries the initial weights as a Float32Array instead of JSON.
    this.child = fork(new URL('./coordinator-process.js', import.meta.url), [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  request<T extends FromCoordinator['type']>(msg: ToCoordinator, expect: T | T[], timeoutMs: number): Promise<Reply<T>> {
    const expected: string[] = Array.isArray(expect) ? expect : [expect];
    return new Promise((resolve, reject) => {
      const done = (err: Error | null, m?: Reply<T>) => {
        clearTimeout(timer);
        this.child.off('message', on);
        this.child.off('exit', onExit);
        if (err) reject(err);
        else resolve(m!);
      };
      const on = (m: FromCoordinator) => {
        if (m.type === 'failed') done(new Error(`coordinator process: ${m.message}`));
        else if (expected.includes(m.type)) done(null, m as Reply<T>);
      };
      const onExit = (code: number | null) => done(new Error(`coordinator process exited (${code}) before '${expected.join("' or '")}'`));
      const timer = setTimeout(() => done(new Error(`coordinator process: no '${expected.join("' or '")}' within ${timeoutMs} ms`)), timeoutMs);
      this.child.on('message', on);
      this.child.once('exit', onExit);
      this.child.send(msg);
    });
  }

  /** Ends the process if it is still there (after a failure) and waits for it. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}
