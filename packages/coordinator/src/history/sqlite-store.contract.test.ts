import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BLOBS_DIR, DB_FILE, openSqliteHistory } from './sqlite-store.js';
import { historyStoreContract, type StoreFixture } from './store-contract.js';

/** The embedded store over a fresh data directory: the blobs are files under <dir>/blobs, keyed by their path. */
async function sqliteFixture(): Promise<StoreFixture> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fedunlearn-contract-'));
  const file = (key: string) => path.join(dir, BLOBS_DIR, ...key.split('/'));
  return {
    store: async (opts = {}) => openSqliteHistory(dir, opts),
    raw: {
      keys: async (prefix) => {
        const root = path.join(dir, BLOBS_DIR);
        if (!fs.existsSync(root)) return [];
        return fs
          .readdirSync(root, { recursive: true, withFileTypes: true })
          .filter((e) => e.isFile())
          .map((e) => path.relative(root, path.join(e.parentPath, e.name)).split(path.sep).join('/'))
          .filter((k) => k.startsWith(prefix));
      },
      size: async (key) => fs.statSync(file(key)).size,
      flipByte: async (key, at) => {
        const b = fs.readFileSync(file(key));
        b[at] = b[at]! ^ 0x01;
        fs.writeFileSync(file(key), b);
      },
      remove: async (key) => fs.rmSync(file(key)),
    },
    // The database and its write-ahead log: a purge must leave no copy of the purged rows in either.
    metadataHolds: async (bytes) =>
      Buffer.concat([DB_FILE, `${DB_FILE}-wal`].filter((f) => fs.existsSync(path.join(dir, f))).map((f) => fs.readFileSync(path.join(dir, f)))).includes(Buffer.from(bytes)),
    cleanup: async () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

historyStoreContract('SQLite + files', sqliteFixture);
