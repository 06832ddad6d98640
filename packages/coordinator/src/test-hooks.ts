import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Pause points for the crash tests, off unless FEDUNLEARN_TEST_PAUSE_DIR names a directory. A point pauses when the
 * test has armed it by creating the file `<dir>/<point>`: the file is removed (one pause per arming), the line
 * `paused at <point>` goes to stdout, and the returned promise never resolves, so the process sits exactly there until
 * the test kills it. This is how test/src/crash-loop.e2e.test.ts lands SIGKILLs inside a history write and inside each
 * phase of a job's end, instead of hoping that chance does.
 */
export function pauseFromEnv(env: NodeJS.ProcessEnv = process.env): ((point: string) => Promise<void>) | undefined {
  const dir = env.FEDUNLEARN_TEST_PAUSE_DIR;
  if (!dir) return undefined;
  return (point) => {
    const armed = join(dir, point);
    if (!existsSync(armed)) return Promise.resolve();
    rmSync(armed, { force: true });
    process.stdout.write(`paused at ${point}\n`);
    return new Promise<void>(() => undefined);
  };
}
