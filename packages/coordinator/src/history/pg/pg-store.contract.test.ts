import { after } from 'node:test';
import pg from 'pg';
import { historyStoreContract, type StoreFixture } from '../store-contract.js';
import { openPgHistory } from './pg-store.js';
import { adminClient, dropSchemas, filesWith, freshSchemaName, relationFiles, schemaUrl } from './pg.test-support.js';

/**
 * The HistoryStore contract on PostgreSQL: each test gets a fresh schema (fedunlearn_test_<random>) on the test server
 * (pg.test-support.ts), dropped at its end; a restart is a new store instance over the same schema. The blobs are
 * rows of the schema's `blobs` table, seen (and corrupted) through plain SQL; "metadata holds" searches the relation
 * files of every table of the schema on disk. Fails, not skips, when the server does not answer.
 */

const leftover: string[] = [];
after(() => dropSchemas(leftover));

async function pgFixture(): Promise<StoreFixture> {
  const schema = freshSchemaName();
  leftover.push(schema);
  // Fails here, with the message saying what to start, when the server does not answer.
  await (await adminClient()).end();
  const admin = new pg.Pool({ connectionString: schemaUrl(schema).replace(/[?&]schema=[^&]*/, ''), max: 1 });
  const blobs = `${schema}.blobs`;
  return {
    store: async (opts = {}) => openPgHistory(schemaUrl(schema), opts),
    raw: {
      keys: async (prefix) => (await admin.query<{ key: string }>(`SELECT key FROM ${blobs} WHERE starts_with(key, $1)`, [prefix])).rows.map((r) => r.key),
      size: async (key) => {
        const { rows } = await admin.query<{ n: number }>(`SELECT octet_length(bytes) AS n FROM ${blobs} WHERE key = $1`, [key]);
        if (!rows[0]) throw new Error(`no blob ${key}`);
        return rows[0].n;
      },
      flipByte: async (key, at) => {
        const r = await admin.query(`UPDATE ${blobs} SET bytes = set_byte(bytes, $2, get_byte(bytes, $2) # 1) WHERE key = $1`, [key, at]);
        if (r.rowCount !== 1) throw new Error(`no blob ${key}`);
      },
      remove: async (key) => {
        await admin.query(`DELETE FROM ${blobs} WHERE key = $1`, [key]);
      },
    },
    metadataHolds: async (bytes) => filesWith(await relationFiles(schema), bytes) > 0,
    cleanup: async () => {
      await admin.end();
      await dropSchemas([schema]);
    },
  };
}

historyStoreContract('PostgreSQL', pgFixture);
