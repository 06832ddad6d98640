import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
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

/**
 * Paths of every relation file of `schema`'s tables, TOAST tables and indexes, after a CHECKPOINT (written pages reach
 * the files only at a checkpoint or an eviction). Reading them needs the rights of the server's data directory: the
 * tests run as root on the test machine.
 */
export async function relationFiles(schema: string): Promise<string[]> {
  const c = await adminClient();
  try {
    await c.query('CHECKPOINT');
    const dataDir = (await c.query<{ data_directory: string }>('SHOW data_directory')).rows[0]!.data_directory;
    const { rows } = await c.query<{ p: string | null }>(
      `SELECT pg_relation_filepath(c.oid) AS p FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
       UNION ALL
       SELECT pg_relation_filepath(c.reltoastrelid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.reltoastrelid <> 0
       UNION ALL
       SELECT pg_relation_filepath(i.indexrelid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_index i ON i.indrelid = c.reltoastrelid WHERE n.nspname = $1 AND c.reltoastrelid <> 0`,
      [schema],
    );
    const out: string[] = [];
    for (const r of rows) {
      if (!r.p) continue; // a partitioned parent has no storage of its own
      const base = path.join(dataDir, r.p);
      // The main fork and its 1 GB segments (base, base.1, ...).
      for (let seg = 0; ; seg++) {
        const f = seg === 0 ? base : `${base}.${seg}`;
        if (!fs.existsSync(f)) break;
        out.push(f);
      }
    }
    return out;
  } finally {
    await c.end();
  }
}

/** How many of these files contain `needle`. */
export function filesWith(files: string[], needle: Uint8Array): number {
  const b = Buffer.from(needle);
  return files.filter((f) => fs.readFileSync(f).includes(b)).length;
}
