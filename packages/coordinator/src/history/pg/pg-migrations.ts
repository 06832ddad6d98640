import type pg from 'pg';
import { checkSchemaName, withTransaction } from './pg-connection.js';

/**
 * The PostgreSQL history schema, as an append-only list of migrations: migration i brings a schema from version i to
 * i + 1. Never edit a released step; add one.
 *
 * Applied versions are rows of `schema_migrations (component, version)`, so that other modules keeping tables in the
 * same schema (the cluster's lease, say) number their own migrations under their own component name.
 *
 * Differences from the SQLite schema (history/migrations.ts), and why:
 * - blob bytes live in the `blobs` table (bytea, STORAGE EXTERNAL: out of line in TOAST and never compressed, since
 *   float weights do not compress and a purge test must find their bytes), partitioned so that a purge rewrites the
 *   forgotten clients' partitions only; rows name blobs by key;
 * - staged updates are rows (`staged_updates`), not process memory, so that any replica may commit a round whose
 *   updates another staged, and a job's stagings survive a restart by carrying its job_id (SQLite's job_staged);
 * - participants keep an optional per-client `sensitivity` (the SIFU bound), NULL when not given;
 * - times are bigint unix milliseconds, flags booleans.
 */
export const PG_MIGRATIONS: readonly string[] = [
  `
  -- Partitioned so that a purge rewrites (VACUUM FULL) only the partitions that held the forgotten clients' bytes,
  -- not the whole history: part 0 holds models and other blobs, parts 1..16 the updates, by a hash of the client
  -- (pg-blob-store.ts blobPart computes it from the key; the key alone is unique, part is a function of it).
  CREATE TABLE blobs (
    part       smallint NOT NULL CHECK (part BETWEEN 0 AND 16),
    key        text NOT NULL,
    bytes      bytea NOT NULL,
    size       integer NOT NULL CHECK (size >= 0),
    created_at bigint NOT NULL,
    PRIMARY KEY (part, key)
  ) PARTITION BY LIST (part);
  ALTER TABLE blobs ALTER COLUMN bytes SET STORAGE EXTERNAL;
  CREATE TABLE blobs_other PARTITION OF blobs FOR VALUES IN (0);
  DO $$ BEGIN
    FOR i IN 1..16 LOOP
      EXECUTE format('CREATE TABLE blobs_u%s PARTITION OF blobs FOR VALUES IN (%s)', lpad((i - 1)::text, 2, '0'), i);
    END LOOP;
  END $$;

  -- Relations a committed purge deleted from and that completePurge has not yet rewritten (it may find a reader in
  -- the way, or the process may stop): any replica's next completePurge finishes them.
  CREATE TABLE purge_pending (
    seq     bigserial PRIMARY KEY,
    relname text NOT NULL,
    since   bigint NOT NULL,
    xid     xid8 NOT NULL                                   -- the purge's transaction: snapshots older keep its rows
  );

  CREATE TABLE models (
    seq        bigserial PRIMARY KEY,                       -- creation order
    version    text NOT NULL UNIQUE,
    parent     text REFERENCES models(version),
    cause      text NOT NULL CHECK (cause IN ('init', 'round', 'unlearning')),
    round      integer NOT NULL CHECK (round >= 0),
    job_id     text,
    lineage    text NOT NULL,
    sha256     text NOT NULL,
    blob       text NOT NULL UNIQUE,                        -- key in blobs, gone once erased_at or pruned_at is set
    bytes      integer NOT NULL,
    created_at bigint NOT NULL,
    erased_at  bigint,
    pruned_at  bigint
  );
  CREATE INDEX models_by_lineage ON models (lineage, seq);

  CREATE TABLE federation (
    id               integer PRIMARY KEY CHECK (id = 1),    -- one federation per schema
    topology_json    text NOT NULL,
    layout_json      text NOT NULL,
    history_interval integer NOT NULL CHECK (history_interval >= 1),
    retention        text NOT NULL CHECK (retention IN ('fp32', 'fp16', 'int8', 'norms')),
    created_at       bigint NOT NULL,
    head             text NOT NULL REFERENCES models(version)
  );

  CREATE TABLE rounds (
    round_id       text PRIMARY KEY,
    lineage        text NOT NULL,
    round          integer NOT NULL CHECK (round >= 1),
    model_before   text REFERENCES models(version),
    model_after    text REFERENCES models(version),
    updates_stored boolean NOT NULL,
    metrics_json   text NOT NULL,                           -- JSON keeping NaN/±Infinity as strings
    missing_json   text NOT NULL DEFAULT '[]',
    started_at     bigint NOT NULL,
    closed_at      bigint NOT NULL,
    UNIQUE (lineage, round)
  );

  CREATE TABLE participants (
    round_id     text NOT NULL REFERENCES rounds(round_id),
    client_id    text NOT NULL,
    ord          integer NOT NULL,                          -- order the caller listed them in
    num_examples integer NOT NULL CHECK (num_examples >= 0),
    norms        bytea NOT NULL,                            -- float64 little-endian, layout order: exact
    metrics_json text,
    sensitivity  double precision,
    PRIMARY KEY (round_id, client_id)
  );
  CREATE INDEX participants_by_client ON participants (client_id);

  CREATE TABLE updates (
    round_id    text NOT NULL,
    client_id   text NOT NULL,
    encoding    text NOT NULL CHECK (encoding IN ('fp32', 'fp16', 'int8')),
    blob        text NOT NULL UNIQUE,                       -- key in blobs
    bytes       integer NOT NULL,
    blob_sha256 text NOT NULL,                              -- of the whole blob: any flipped byte is caught
    PRIMARY KEY (round_id, client_id),
    FOREIGN KEY (round_id, client_id) REFERENCES participants (round_id, client_id)
  );
  CREATE INDEX updates_by_client ON updates (client_id);

  CREATE TABLE jobs (
    seq             bigserial PRIMARY KEY,
    job_id          text NOT NULL UNIQUE,
    kind            text NOT NULL,
    state           text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    client_ids_json text NOT NULL,
    requested_by    text NOT NULL,
    method          text NOT NULL,
    params_json     text NOT NULL,
    progress_json   text NOT NULL,
    checkpoint_json text,
    report_json     text,
    error           text,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL
  );
  CREATE INDEX jobs_by_state ON jobs (state, seq);

  CREATE TABLE job_steps (
    job_id    text NOT NULL REFERENCES jobs(job_id),
    step      integer NOT NULL CHECK (step >= 0),
    data_json text NOT NULL,
    PRIMARY KEY (job_id, step)
  );

  -- An update staged for a round that has not committed: its blob is written, no committed row refers to it yet.
  -- job_id is set once a running job recorded it with a checkpointed step: such stagings survive a restart.
  CREATE TABLE staged_updates (
    round_id    text NOT NULL,
    client_id   text NOT NULL,
    encoding    text NOT NULL CHECK (encoding IN ('fp32', 'fp16', 'int8')),
    blob        text NOT NULL UNIQUE,                       -- key in blobs
    bytes       integer NOT NULL,
    blob_sha256 text NOT NULL,
    job_id      text REFERENCES jobs(job_id),
    staged_at   bigint NOT NULL,
    PRIMARY KEY (round_id, client_id)
  );
  CREATE INDEX staged_updates_by_job ON staged_updates (job_id);
  CREATE INDEX staged_updates_by_client ON staged_updates (client_id);

  CREATE TABLE clients (
    client_id    text PRIMARY KEY,
    secret_hash  text,
    num_examples integer NOT NULL,
    first_seen   bigint NOT NULL,
    last_seen    bigint NOT NULL,
    forgotten    boolean NOT NULL DEFAULT false,
    revoked      boolean NOT NULL DEFAULT false
  );
  CREATE INDEX clients_forgotten ON clients (client_id) WHERE forgotten;
  `,
];

export const PG_SCHEMA_VERSION = PG_MIGRATIONS.length;
/** This module's name in schema_migrations. */
export const HISTORY_COMPONENT = 'history';

/** A schema newer than this coordinator, or a migration that failed (the schema is left at the version before it). */
export class PgMigrationError extends Error {
  override name = 'PgMigrationError';
}

/**
 * Brings `schema` to the latest version of `migrations` under `component` (default: the history's), creating the
 * schema and the schema_migrations table if needed. Everything runs in ONE transaction holding a transaction-scoped
 * advisory lock keyed on the schema, so replicas starting together migrate once: the others wait for the lock, then
 * find nothing to do. A failing step rolls back every step of this call. Refuses (PgMigrationError) a schema whose
 * component is at a version beyond `migrations`. Resolves with the versions before and after.
 */
export async function migratePg(
  pool: pg.Pool,
  schema: string,
  migrations: readonly string[] = PG_MIGRATIONS,
  component: string = HISTORY_COMPONENT,
): Promise<{ from: number; to: number }> {
  checkSchemaName(schema);
  return withTransaction(pool, async (tx) => {
    // Keyed on the schema, not the component: the CREATE SCHEMA below must not race another module's migrations.
    await tx.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`fedunlearn.migrations.${schema}`]);
    await tx.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
    await tx.query(`SET LOCAL search_path = ${schema}`);
    await tx.query(
      `CREATE TABLE IF NOT EXISTS schema_migrations (
         component  text NOT NULL,
         version    integer NOT NULL CHECK (version >= 1),
         applied_at timestamptz NOT NULL DEFAULT now(),
         PRIMARY KEY (component, version)
       )`,
    );
    const { rows } = await tx.query<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations WHERE component = $1', [component]);
    const from = rows[0]?.v ?? 0;
    if (from > migrations.length) {
      throw new PgMigrationError(`schema ${schema} holds ${component} schema version ${from}, newer than this coordinator's ${migrations.length}`);
    }
    for (let v = from; v < migrations.length; v++) {
      try {
        await tx.query(migrations[v]!);
      } catch (e) {
        throw new PgMigrationError(`${component} migration ${v + 1} failed in schema ${schema}: ${(e as Error).message}`, { cause: e });
      }
      await tx.query('INSERT INTO schema_migrations (component, version) VALUES ($1, $2)', [component, v + 1]);
    }
    return { from, to: migrations.length };
  });
}

/** The component's applied version in `schema` (0 when none, or when the schema does not exist). */
export async function pgSchemaVersion(pool: pg.Pool, schema: string, component: string = HISTORY_COMPONENT): Promise<number> {
  checkSchemaName(schema);
  const exists = await pool.query('SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2', [schema, 'schema_migrations']);
  if (exists.rowCount === 0) return 0;
  const { rows } = await pool.query<{ v: number | null }>(`SELECT MAX(version) AS v FROM ${schema}.schema_migrations WHERE component = $1`, [component]);
  return rows[0]?.v ?? 0;
}
