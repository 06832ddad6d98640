import type pg from 'pg';
import { quoteSchema } from './sql-identifier.js';

/**
 * The cluster's own tables (coordination state, not history), in their own migration list so that they never
 * interleave with the history store's: `cluster_migrations` records which of these ran. Append only: a migration,
 * once released, is never edited.
 */
export const CLUSTER_MIGRATIONS: readonly ((schema: string) => string)[] = [
  // 1: the leader lease. One row per lease name; `epoch` grows at every takeover (the fencing token), `expires_at` is
  // set from the database's clock only.
  (s) => `CREATE TABLE ${s}.leader_lease (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    epoch       bigint NOT NULL CHECK (epoch > 0),
    acquired_at timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
  )`,
];

/**
 * Creates `schema` if needed and applies the cluster migrations it lacks, in one transaction under an advisory lock
 * (replicas starting together migrate once). Returns how many ran. Throws what PostgreSQL throws; nothing is applied
 * then.
 */
export async function migrateCluster(client: pg.ClientBase, schema: string): Promise<number> {
  const s = quoteSchema(schema);
  await client.query('BEGIN');
  try {
    // Keyed on the schema name, so that two federations in two schemas do not wait on each other.
    await client.query(`SELECT pg_advisory_xact_lock(hashtext($1))`, [`fedunlearn.cluster.migrate:${schema}`]);
    await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
    await client.query(`CREATE TABLE IF NOT EXISTS ${s}.cluster_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
    const { rows } = await client.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${s}.cluster_migrations`);
    const done = rows[0]?.v ?? 0;
    if (done > CLUSTER_MIGRATIONS.length) {
      throw new Error(`schema ${schema} has cluster migration ${done}, this build knows ${CLUSTER_MIGRATIONS.length}: a newer coordinator migrated it`);
    }
    for (let v = done + 1; v <= CLUSTER_MIGRATIONS.length; v++) {
      await client.query(CLUSTER_MIGRATIONS[v - 1]!(s));
      await client.query(`INSERT INTO ${s}.cluster_migrations (version) VALUES ($1)`, [v]);
    }
    await client.query('COMMIT');
    return CLUSTER_MIGRATIONS.length - done;
  } catch (e) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}
