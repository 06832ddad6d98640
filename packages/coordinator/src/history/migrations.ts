import type Database from 'better-sqlite3';

/**
 * The history schema, as an append-only list of migrations: migration i brings a database from user_version i to
 * i + 1. Never edit a released step; add one.
 *
 * Blobs live in files; rows name them by a path relative to the blobs directory. Model-version references are NULL
 * (not '') when unknown so that foreign keys check every known one.
 */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE models (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,           -- creation order
    version    TEXT NOT NULL UNIQUE,
    parent     TEXT REFERENCES models(version),
    cause      TEXT NOT NULL CHECK (cause IN ('init', 'round', 'unlearning')),
    round      INTEGER NOT NULL CHECK (round >= 0),
    job_id     TEXT,
    lineage    TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    blob       TEXT NOT NULL UNIQUE,
    bytes      INTEGER NOT NULL,
    created_at INTEGER NOT NULL
  );
  CREATE INDEX models_by_lineage ON models (lineage, seq);

  CREATE TABLE federation (
    id               INTEGER PRIMARY KEY CHECK (id = 1),    -- one federation per data directory
    topology_json    TEXT NOT NULL,
    layout_json      TEXT NOT NULL,
    history_interval INTEGER NOT NULL CHECK (history_interval >= 1),
    retention        TEXT NOT NULL CHECK (retention IN ('fp32', 'fp16', 'int8', 'norms')),
    created_at       INTEGER NOT NULL,
    head             TEXT NOT NULL REFERENCES models(version)
  );

  CREATE TABLE rounds (
    round_id       TEXT PRIMARY KEY,
    lineage        TEXT NOT NULL,
    round          INTEGER NOT NULL CHECK (round >= 1),
    model_before   TEXT REFERENCES models(version),
    model_after    TEXT REFERENCES models(version),
    updates_stored INTEGER NOT NULL,
    metrics_json   TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    closed_at      INTEGER NOT NULL,
    UNIQUE (lineage, round)
  );

  CREATE TABLE participants (
    round_id     TEXT NOT NULL REFERENCES rounds(round_id),
    client_id    TEXT NOT NULL,
    ord          INTEGER NOT NULL,                          -- order the caller listed them in
    num_examples INTEGER NOT NULL CHECK (num_examples >= 0),
    norms        BLOB NOT NULL,                             -- float64 little-endian, layout order: exact
    metrics_json TEXT,
    PRIMARY KEY (round_id, client_id)
  );
  CREATE INDEX participants_by_client ON participants (client_id);

  CREATE TABLE updates (
    round_id    TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    encoding    TEXT NOT NULL CHECK (encoding IN ('fp32', 'fp16', 'int8')),
    blob        TEXT NOT NULL UNIQUE,
    bytes       INTEGER NOT NULL,
    blob_sha256 TEXT NOT NULL,                              -- of the whole file: any flipped byte is caught
    PRIMARY KEY (round_id, client_id),
    FOREIGN KEY (round_id, client_id) REFERENCES participants (round_id, client_id)
  );
  CREATE INDEX updates_by_client ON updates (client_id);

  CREATE TABLE jobs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id          TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    client_ids_json TEXT NOT NULL,
    requested_by    TEXT NOT NULL,
    method          TEXT NOT NULL,
    params_json     TEXT NOT NULL,
    progress_json   TEXT NOT NULL,
    checkpoint_json TEXT,
    report_json     TEXT,
    error           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
  );
  CREATE INDEX jobs_by_state ON jobs (state, seq);

  CREATE TABLE clients (
    client_id    TEXT PRIMARY KEY,
    secret_hash  TEXT,
    num_examples INTEGER NOT NULL,
    first_seen   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    forgotten    INTEGER NOT NULL DEFAULT 0
  );
  `,
  // 2: who was asked but did not answer, and why (JSON array of {clientId, reason, detail?}).
  `
  ALTER TABLE rounds ADD COLUMN missing_json TEXT NOT NULL DEFAULT '[]';
  `,
  // 3: operator-issued credentials: a revoked client keeps its record (and its history) but is refused at hello.
  `
  ALTER TABLE clients ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
  `,
  // 4: a model version whose weights were erased with a forgotten client's contribution keeps its row (lineage,
  // sha256, audit) with the time of the erasure; its blob file is gone.
  `
  ALTER TABLE models ADD COLUMN erased_at INTEGER;
  `,
  // 5: a running job's completed steps, one row each, appended as they complete (the job's checkpoint_json keeps only
  // what is small), so checkpointing step j costs O(1) rows instead of rewriting every step before it.
  `
  CREATE TABLE job_steps (
    job_id    TEXT NOT NULL REFERENCES jobs(job_id),
    step      INTEGER NOT NULL CHECK (step >= 0),
    data_json TEXT NOT NULL,
    PRIMARY KEY (job_id, step)
  );
  -- Updates a running job staged for the new lineage's rounds, recorded as each step is checkpointed: durable blobs no
  -- committed row refers to yet, kept (not swept as garbage) across a restart so that the job's commit still stores them.
  CREATE TABLE job_staged (
    job_id      TEXT NOT NULL REFERENCES jobs(job_id),
    round_id    TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    encoding    TEXT NOT NULL CHECK (encoding IN ('fp32', 'fp16', 'int8')),
    blob        TEXT NOT NULL UNIQUE,
    bytes       INTEGER NOT NULL,
    blob_sha256 TEXT NOT NULL,
    PRIMARY KEY (round_id, client_id)
  );
  CREATE INDEX job_staged_by_job ON job_staged (job_id);
  `,
  // 6: a model version whose weights the retention policy let go (history/model-retention.ts) keeps its row for the
  // lineage and the audit, with the time of the pruning; its blob file is gone.
  `
  ALTER TABLE models ADD COLUMN pruned_at INTEGER;
  `,
  // 7: per client and round, the bound on how far the round's aggregate moves when that client is left out
  // (||agg - agg_{-c}||, rounds/sensitivity.ts), kept at commit for SIFU (unlearning/sifu.ts). NULL on rounds committed
  // before it was kept, or under an aggregation it cannot be bounded for (median, trimmed mean).
  `
  ALTER TABLE participants ADD COLUMN sensitivity REAL;
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** Brings the database up to SCHEMA_VERSION, each step in its own transaction; refuses a newer database. */
export function migrate(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  if (current > SCHEMA_VERSION) {
    throw new Error(`history database schema version ${current} is newer than this coordinator's ${SCHEMA_VERSION}`);
  }
  for (let v = current; v < SCHEMA_VERSION; v++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[v]!);
      // PRAGMA takes no bound parameters; v is a loop integer.
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
}
