import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { MIGRATIONS, migrate } from './migrations.js';

// The missing lists' behaviour on every store is in the contract suite (store-contract.ts); this is SQLite's migration.

test('migration 2 gives rounds recorded before it an empty missing list', () => {
  const db = new Database(':memory:');
  try {
    db.exec(MIGRATIONS[0]!);
    db.pragma('user_version = 1');
    db.prepare("INSERT INTO rounds (round_id, lineage, round, model_before, model_after, updates_stored, metrics_json, started_at, closed_at) VALUES ('old', 'L', 1, NULL, NULL, 0, '{}', 0, 0)").run();
    migrate(db);
    assert.equal((db.prepare("SELECT missing_json FROM rounds WHERE round_id = 'old'").get() as { missing_json: string }).missing_json, '[]');
  } finally {
    db.close();
  }
});
