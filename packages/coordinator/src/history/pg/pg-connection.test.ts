import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { createPool, parsePgUrl, withTransaction } from './pg-connection.js';
import { adminClient, dropSchemas, freshSchemaName, schemaUrl } from './pg.test-support.js';

const schemas: string[] = [];
after(() => dropSchemas(schemas));

async function counterPool(): Promise<pg.Pool> {
  const schema = freshSchemaName();
  schemas.push(schema);
  const c = await adminClient();
  try {
    await c.query(`CREATE SCHEMA ${schema}`);
    await c.query(`CREATE TABLE ${schema}.counter (id integer PRIMARY KEY, n integer NOT NULL)`);
    await c.query(`INSERT INTO ${schema}.counter VALUES (1, 0)`);
  } finally {
    await c.end();
  }
  return createPool(parsePgUrl(schemaUrl(schema)), { max: 4 });
}

/** Two serializable read-modify-write transactions that both read before either writes: the second to write fails
 *  with a serialization failure (40001), which PostgreSQL expects the client to retry. */
async function race(pool: pg.Pool, attempts: number): Promise<PromiseSettledResult<void>[]> {
  let reads = 0;
  let release!: () => void;
  const bothRead = new Promise<void>((r) => (release = r));
  const body = (first: { attempt: boolean }) => async (tx: pg.PoolClient) => {
    const { rows } = await tx.query<{ n: number }>('SELECT n FROM counter WHERE id = 1');
    if (first.attempt) {
      first.attempt = false;
      if (++reads === 2) release();
      await bothRead;
    }
    await tx.query('UPDATE counter SET n = $1 WHERE id = 1', [rows[0]!.n + 1]);
  };
  return Promise.allSettled([
    withTransaction(pool, body({ attempt: true }), { isolation: 'serializable', attempts }),
    withTransaction(pool, body({ attempt: true }), { isolation: 'serializable', attempts }),
  ]);
}

test('withTransaction reruns a transaction that hit a serialization failure, so that no increment is lost', async () => {
  const pool = await counterPool();
  try {
    const results = await race(pool, 5);
    assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'fulfilled']);
    assert.equal((await pool.query<{ n: number }>('SELECT n FROM counter')).rows[0]!.n, 2);
  } finally {
    await pool.end();
  }
});

test('without retries the same race surfaces the serialization failure, and the failed transaction changed nothing', async () => {
  const pool = await counterPool();
  try {
    const results = await race(pool, 1);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    assert.equal(failed.length, 1);
    assert.equal((failed[0]!.reason as { code?: string }).code, '40001');
    assert.equal((await pool.query<{ n: number }>('SELECT n FROM counter')).rows[0]!.n, 1);
    // The pool is still usable: the failed transaction's connection was rolled back and returned.
    await withTransaction(pool, async (tx) => void (await tx.query('UPDATE counter SET n = n + 1')));
    assert.equal((await pool.query<{ n: number }>('SELECT n FROM counter')).rows[0]!.n, 2);
  } finally {
    await pool.end();
  }
});
