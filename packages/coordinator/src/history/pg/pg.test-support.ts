import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { redact } from './pg-connection.js';

/**
 * The PostgreSQL server the tests use: FEDUNLEARN_TEST_PG_URL, default the machine's (127.0.0.1:5432, trust auth,
 * database test). Tests that need it FAIL when it does not answer (CI starts it; a skipped test would hide a store
 * nobody tested).
 */
export const TEST_PG_URL = process.env.FEDUNLEARN_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** A fresh schema name per call: `fedunlearn_test_<random>`. */
export function freshSchemaName(): string {
  return `fedunlearn_test_${randomBytes(6).toString('hex')}`;
}

/** The store URL for `schema` on the test server. */
export function schemaUrl(schema: string): string {
  const u = new URL(TEST_PG_URL);
  u.searchParams.set('schema', schema);
  return u.toString();
}

/** An administrative connection (no schema), failing with a message that says what to start. */
export async function adminClient(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: TEST_PG_URL, connectionTimeoutMillis: 5_000 });
  try {
    await c.connect();
  } catch (e) {
    throw new Error(
      `PostgreSQL does not answer at ${redact(TEST_PG_URL)} (${(e as Error).message}): these tests need it. Start it (see the machine notes) or set FEDUNLEARN_TEST_PG_URL.`,
    );
  }
  return c;
}

/** Drops these schemas and everything in them. */
export async function dropSchemas(names: readonly string[]): Promise<void> {
  if (names.length === 0) return;
  const c = await adminClient();
  try {
    for (const n of names) await c.query(`DROP SCHEMA IF EXISTS ${n} CASCADE`);
  } finally {
    await c.end();
  }
}
