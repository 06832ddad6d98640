import * as path from 'node:path';
import { openSqliteHistory, type SqliteHistoryOptions } from './sqlite-store.js';
import { isPgUrl, PgConfigError, redact } from './pg/pg-connection.js';
import { openPgHistory, type PgHistoryOptions } from './pg/pg-store.js';
import type { HistoryStore } from './store.js';

/** What the store factory needs: the options both stores share, and each one's own. */
export interface OpenStoreOptions {
  now?: () => number;
  pause?: (point: string) => Promise<void>;
  log?: SqliteHistoryOptions['log'];
  /** Options only the embedded store reads. */
  sqlite?: Omit<SqliteHistoryOptions, 'now' | 'pause' | 'log'>;
  /** Options only the PostgreSQL store reads. */
  postgres?: Omit<PgHistoryOptions, 'now' | 'pause' | 'log'>;
}

/** Which store a location names: a postgres:// or postgresql:// URL, or a data directory. */
export function storeKind(where: string): 'postgres' | 'sqlite' {
  if (isPgUrl(where)) return 'postgres';
  // Any other scheme is a mistake, not a directory to create (mysql://… would otherwise become ./mysql:/…).
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(where)) {
    throw new PgConfigError(`unsupported store URL ${redact(where)}: give a data directory or a postgres:// URL`);
  }
  return 'sqlite';
}

/**
 * Opens the history store `where` names: a PostgreSQL URL (postgres://user@host:port/db?schema=NAME: connects,
 * migrates, see history/pg/pg-store.ts) or a data directory (the embedded SQLite + files store, created if absent).
 * Call `open(...)` on the result as on any HistoryStore. Rejects with PgConfigError for another URL scheme, and with
 * what the chosen store's opener rejects with (PgUnavailableError when the server does not answer).
 */
export async function openHistoryStore(where: string, opts: OpenStoreOptions = {}): Promise<HistoryStore> {
  const shared = { ...(opts.now ? { now: opts.now } : {}), ...(opts.pause ? { pause: opts.pause } : {}), ...(opts.log ? { log: opts.log } : {}) };
  if (storeKind(where) === 'postgres') return openPgHistory(where, { ...opts.postgres, ...shared });
  return openSqliteHistory(path.resolve(where), { ...opts.sqlite, ...shared });
}
