import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPool, parsePgUrl, PgConfigError } from './pg-connection.js';
import { migratePg, PG_MIGRATIONS, PG_SCHEMA_VERSION, pgSchemaVersion, PgMigrationError } from './pg-migrations.js';
import { dropSchemas, freshSchemaName, schemaUrl } from './pg.test-support.js';

const schemas: string[] = [];
after(() => dropSchemas(schemas));

function freshPool(size = 4) {
  const schema = freshSchemaName();
  schemas.push(schema);
  const loc = parsePgUrl(schemaUrl(schema));
  return { schema, pool: createPool(loc, { max: size }) };
}

test('migratePg brings a fresh schema to the current version once; a second run changes nothing', async () => {
  const { schema, pool } = freshPool();
  try {
    assert.equal(await pgSchemaVersion(pool, schema), 0);
    assert.deepEqual(await migratePg(pool, schema), { from: 0, to: PG_SCHEMA_VERSION });
    assert.equal(await pgSchemaVersion(pool, schema), PG_SCHEMA_VERSION);
    assert.deepEqual(await migratePg(pool, schema), { from: PG_SCHEMA_VERSION, to: PG_SCHEMA_VERSION });
    const tables = (await pool.query<{ t: string }>('SELECT tablename AS t FROM pg_tables WHERE schemaname = $1 ORDER BY 1', [schema])).rows.map((r) => r.t);
    for (const t of ['blobs', 'clients', 'federation', 'job_steps', 'jobs', 'models', 'participants', 'purge_pending', 'rounds', 'schema_migrations', 'staged_updates', 'updates']) {
      assert.ok(tables.includes(t), `table ${t} exists`);
    }
    // The columns the store relies on: a nullable sensitivity, blob bytes kept out of line and uncompressed.
    const sens = await pool.query<{ is_nullable: string; data_type: string }>(
      `SELECT is_nullable, data_type FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'participants' AND column_name = 'sensitivity'`,
      [schema],
    );
    assert.deepEqual(sens.rows[0], { is_nullable: 'YES', data_type: 'double precision' });
    const storage = await pool.query<{ s: string }>(
      `SELECT a.attstorage AS s FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = $1 AND c.relname = 'blobs' AND a.attname = 'bytes'`,
      [schema],
    );
    assert.equal(storage.rows[0]?.s, 'e', 'STORAGE EXTERNAL');
    // Its partitions: one for models and other blobs, 16 for updates, each keeping the column's storage.
    const parts = await pool.query<{ relname: string; s: string }>(
      `SELECT c.relname, a.attstorage AS s FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
       JOIN pg_namespace n ON n.oid = p.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'bytes'
       WHERE n.nspname = $1 AND p.relname = 'blobs' ORDER BY 1`,
      [schema],
    );
    assert.equal(parts.rows.length, 17);
    assert.deepEqual([parts.rows[0]!.relname, parts.rows[16]!.relname], ['blobs_other', 'blobs_u15']);
    assert.ok(parts.rows.every((r) => r.s === 'e'));
  } finally {
    await pool.end();
  }
});

test('replicas migrating a fresh schema at the same moment migrate it once (advisory lock), and all succeed', async () => {
  const { schema, pool } = freshPool(8);
  try {
    const results = await Promise.all(Array.from({ length: 6 }, () => migratePg(pool, schema)));
    assert.equal(results.filter((r) => r.from === 0).length, 1, 'exactly one applied the migrations');
    assert.ok(results.every((r) => r.to === PG_SCHEMA_VERSION));
    const rows = await pool.query<{ n: number }>('SELECT COUNT(*)::integer AS n FROM schema_migrations');
    assert.equal(rows.rows[0]!.n, PG_SCHEMA_VERSION);
  } finally {
    await pool.end();
  }
});

test('a schema newer than this coordinator is refused, and a failing step leaves the schema at the version before the call', async () => {
  const { schema, pool } = freshPool();
  try {
    await migratePg(pool, schema);
    await pool.query('INSERT INTO schema_migrations (component, version) VALUES ($1, $2)', ['history', PG_SCHEMA_VERSION + 1]);
    await assert.rejects(migratePg(pool, schema), (e: Error) => e instanceof PgMigrationError && /newer than this coordinator/.test(e.message));

    // Another component in the same schema numbers its own steps; a bad step 2 rolls back step 1 with it.
    const steps = ['CREATE TABLE lease_demo (id integer PRIMARY KEY)', 'CREATE TABLE lease_demo (id integer)'];
    await assert.rejects(migratePg(pool, schema, steps, 'demo'), (e: Error) => e instanceof PgMigrationError && /demo migration 2 failed/.test(e.message));
    assert.equal(await pgSchemaVersion(pool, schema, 'demo'), 0);
    const t = await pool.query('SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2', [schema, 'lease_demo']);
    assert.equal(t.rowCount, 0, 'step 1 rolled back with the failed step 2');
    assert.deepEqual(await migratePg(pool, schema, steps.slice(0, 1), 'demo'), { from: 0, to: 1 });
    assert.equal(await pgSchemaVersion(pool, schema, 'history'), PG_SCHEMA_VERSION + 1, 'the history numbering is untouched');
  } finally {
    await pool.end();
  }
});

test('store URLs: the schema parameter is ours and checked; other schemes and URLs without a database are refused', () => {
  const loc = parsePgUrl('postgres://u:secret@db.example:6543/fl?schema=fed_a&sslmode=require');
  assert.equal(loc.schema, 'fed_a');
  assert.equal(loc.connectionString, 'postgres://u:secret@db.example:6543/fl?sslmode=require');
  assert.equal(parsePgUrl('postgresql://h/db').schema, 'fedunlearn');
  assert.throws(() => parsePgUrl('mysql://h/db'), PgConfigError);
  assert.throws(() => parsePgUrl('postgres://h/'), /names no database/);
  assert.throws(() => parsePgUrl('postgres://h/db?schema=Robert%27);DROP'), PgConfigError);
  assert.throws(() => parsePgUrl('postgres://h/db?schema=pg_catalog'), PgConfigError);
  assert.throws(() => parsePgUrl('not a url'), PgConfigError);
  // A refused URL's message never repeats the password.
  assert.throws(() => parsePgUrl('postgres://u:hunter2@h/'), (e: Error) => !e.message.includes('hunter2'));
  assert.equal(PG_MIGRATIONS.length, PG_SCHEMA_VERSION);
});
