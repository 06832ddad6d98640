import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { MIGRATIONS, SCHEMA_VERSION, migrate } from './migrations.js';

test('migrate brings an empty database to the current schema once, and refuses a newer one', () => {
  const db = new Database(':memory:');
  try {
    migrate(db);
    assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    assert.equal(SCHEMA_VERSION, MIGRATIONS.length);
    const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
    assert.deepEqual(tables, ['clients', 'federation', 'job_staged', 'job_steps', 'jobs', 'models', 'participants', 'rounds', 'updates']);
    migrate(db); // a second run must not re-create anything (it would throw "table already exists")
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    assert.throws(() => migrate(db), /newer/);
  } finally {
    db.close();
  }
});

test('migration 3 adds the revoked flag to a version-1 database, keeping its clients', () => {
  const db = new Database(':memory:');
  try {
    db.exec(MIGRATIONS[0]!);
    db.pragma('user_version = 1');
    db.prepare("INSERT INTO clients (client_id, secret_hash, num_examples, first_seen, last_seen) VALUES ('old', 'scrypt$aa$bb', 5, 1, 2)").run();
    migrate(db);
    assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    assert.deepEqual({ ...(db.prepare("SELECT client_id, secret_hash, revoked FROM clients WHERE client_id = 'old'").get() as object) }, { client_id: 'old', secret_hash: 'scrypt$aa$bb', revoked: 0 });
  } finally {
    db.close();
  }
});

test('the schema enforces what the store relies on', () => {
  const db = new Database(':memory:');
  try {
    db.pragma('foreign_keys = ON');
    migrate(db);
    const model = db.prepare(
      "INSERT INTO models (version, parent, cause, round, job_id, lineage, sha256, blob, bytes, created_at) VALUES (?, ?, 'init', 0, NULL, 'L', 's', ?, 1, 0)",
    );
    model.run('m0', null, 'b0');
    assert.throws(() => model.run('m1', 'missing-parent', 'b1'), /FOREIGN KEY/);
    const round = db.prepare("INSERT INTO rounds (round_id, lineage, round, model_before, model_after, updates_stored, metrics_json, started_at, closed_at) VALUES (?, 'L', ?, 'm0', 'm0', 0, '{}', 0, 0)");
    round.run('r1', 1);
    assert.throws(() => round.run('r1b', 1), /UNIQUE/); // one round number per lineage
    // An update row needs its participant row: a purge that deleted participants first would fail loudly.
    assert.throws(() => db.prepare("INSERT INTO updates VALUES ('r1', 'c', 'fp32', 'u', 1, 'x')").run(), /FOREIGN KEY/);
  } finally {
    db.close();
  }
});

test('migration 4 keeps the model versions of a version-3 database, none of them erased', () => {
  const db = new Database(':memory:');
  try {
    for (const m of MIGRATIONS.slice(0, 3)) db.exec(m);
    db.pragma('user_version = 3');
    db.prepare("INSERT INTO models (version, parent, cause, round, job_id, lineage, sha256, blob, bytes, created_at) VALUES ('v0', NULL, 'init', 0, NULL, 'L', 'ab', 'models/v0.bin', 8, 1)").run();
    migrate(db);
    assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    assert.deepEqual({ ...(db.prepare("SELECT version, sha256, erased_at FROM models").get() as object) }, { version: 'v0', sha256: 'ab', erased_at: null });
  } finally {
    db.close();
  }
});

test('migration 7 adds the participants\' removal sensitivity, NULL on the rows a version-6 database holds', () => {
  const db = new Database(':memory:');
  try {
    for (const m of MIGRATIONS.slice(0, 6)) db.exec(m);
    db.pragma('user_version = 6');
    // Only the column is under test here: a participant row without its round.
    db.pragma('foreign_keys = OFF');
    db.prepare("INSERT INTO participants (round_id, client_id, ord, num_examples, norms) VALUES ('r1', 'old', 0, 5, x'00')").run();
    migrate(db);
    assert.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    assert.deepEqual({ ...(db.prepare("SELECT client_id, sensitivity FROM participants").get() as object) }, { client_id: 'old', sensitivity: null });
    db.prepare("INSERT INTO participants (round_id, client_id, ord, num_examples, norms, sensitivity) VALUES ('r1', 'new', 1, 5, x'00', 0.25)").run();
    assert.equal((db.prepare("SELECT sensitivity FROM participants WHERE client_id = 'new'").get() as { sensitivity: number }).sensitivity, 0.25);
  } finally {
    db.close();
  }
});
