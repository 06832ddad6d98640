/**
 * The machine's PostgreSQL and Redis for the cluster tests (the real servers, never mocks): where they are, a fresh
 * schema or key prefix per test, and dedicated connections tests can name (and so terminate).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** The servers (the machine's by default; the same variable as the PostgreSQL store's tests). Tests that need them
 *  fail when they do not answer: CI starts both, and a skipped test would hide a part nobody tested. */
export const PG_URL = process.env.FEDUNLEARN_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
export const REDIS_URL = process.env.FEDUNLEARN_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

/** A name no other test run uses: `prefix` + pid + random hex (lower case, a valid schema name). */
export function uniqueName(prefix: string): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
}

/** A connected client of its own, named `applicationName` in pg_stat_activity. */
export async function connectPg(applicationName = 'fedunlearn-test'): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: PG_URL, application_name: applicationName, connectionTimeoutMillis: 5_000 });
  try {
    await c.connect();
  } catch (e) {
    throw new Error(`PostgreSQL does not answer at ${PG_URL} (${(e as Error).message}): the cluster tests need it (.ci/run starts it)`);
  }
  return c;
}

/** Drops a test's schema and everything in it. */
export async function dropSchema(schema: string): Promise<void> {
  const c = await connectPg();
  try {
    await c.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await c.end();
  }
}

/** Resolves with the first `event` of `emitter` whose payload passes `accept`; rejects after `ms` (a bound on a hang,
 *  never an assertion on speed). */
export function nextEvent<T>(emitter: NodeJS.EventEmitter, event: string, ms: number, accept: (v: T) => boolean = () => true): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, on);
      reject(new Error(`no ${event} event within ${ms} ms`));
    }, ms);
    const on = (v: T) => {
      if (!accept(v)) return;
      clearTimeout(timer);
      emitter.off(event, on);
      resolve(v);
    };
    emitter.on(event, on);
  });
}
