import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { layoutOf } from '@fedunlearn/protocol';
import { openHistoryStore, storeKind } from './open-store.js';
import { PgConfigError } from './pg/pg-connection.js';
import { PgHistoryStore } from './pg/pg-store.js';
import { adminClient, dropSchemas, freshSchemaName, schemaUrl } from './pg/pg.test-support.js';

const layout = layoutOf([{ name: 'w', shape: [4] }]);
const init = { topologyJson: '{"name":"factory"}', layout, initialWeights: Float32Array.from([1, 2, 3, 4]), config: { historyInterval: 1, retention: 'fp32' as const } };
const schemas: string[] = [];
after(() => dropSchemas(schemas));

test('openHistoryStore: a data directory opens the embedded store there', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-open-store-'));
  try {
    const store = await openHistoryStore(dir);
    assert.ok(!(store instanceof PgHistoryStore));
    const opened = await store.open(init);
    assert.deepEqual(await store.readModel(opened.head.version), init.initialWeights);
    await store.close();
    assert.ok(fs.existsSync(path.join(dir, 'history.db')), 'the SQLite database is in the directory given');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('openHistoryStore: a postgres:// URL opens the PostgreSQL store in the schema it names', async () => {
  const schema = freshSchemaName();
  schemas.push(schema);
  const store = await openHistoryStore(schemaUrl(schema));
  try {
    assert.ok(store instanceof PgHistoryStore);
    const opened = await store.open(init);
    assert.deepEqual(await store.readModel(opened.head.version), init.initialWeights);
  } finally {
    await store.close();
  }
  const c = await adminClient();
  try {
    const r = await c.query(`SELECT version FROM ${schema}.models`);
    assert.equal(r.rowCount, 1, 'the initial model is a row of that schema');
  } finally {
    await c.end();
  }
});

test('openHistoryStore refuses another URL scheme instead of creating a directory named after it, and says when PostgreSQL does not answer', async () => {
  const cwd = process.cwd();
  await assert.rejects(openHistoryStore('mysql://u:pw@h/db'), (e: Error) => e instanceof PgConfigError && !e.message.includes(':pw@'));
  assert.ok(!fs.existsSync(path.join(cwd, 'mysql:')));
  assert.equal(storeKind('./data'), 'sqlite');
  assert.equal(storeKind('POSTGRESQL://h/db'), 'postgres');
  // A port nothing listens on: a clear error naming the server, not a hang.
  await assert.rejects(openHistoryStore('postgres://postgres@127.0.0.1:1/test', { postgres: { pool: { connectTimeoutMs: 2_000 } } }), /PostgreSQL at postgres:\/\/postgres@127\.0\.0\.1:1\/test does not answer/);
});
