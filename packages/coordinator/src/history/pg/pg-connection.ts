import pg from 'pg';

/**
 * The PostgreSQL plumbing the history store and blob store share: where to connect (a URL naming the schema), one
 * pool per store, and transactions with the retries PostgreSQL asks for.
 *
 * Every connection of the pool runs with `search_path` set to the store's schema (one federation per schema), and with
 * `synchronous_commit = on` whatever the server's default: the store's durability is "a COMMIT that returned is on
 * disk", which is what the SQLite store's synchronous=FULL gave.
 */

/** A refused store URL or schema name (bad syntax, unsupported option). */
export class PgConfigError extends Error {
  override name = 'PgConfigError';
}

/** Where a PostgreSQL history lives: the server (a libpq-style URL, without our own options) and the schema. */
export interface PgLocation {
  /** postgres://user[:password]@host[:port]/database[?sslmode=...], as `pg` takes it. */
  connectionString: string;
  /** The schema holding this federation's tables; created by the migrations if absent. */
  schema: string;
}

/** The default schema when the URL names none. */
export const DEFAULT_SCHEMA = 'fedunlearn';

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/** Throws PgConfigError unless `schema` is a plain lower-case identifier (it is interpolated into DDL, so no quoting
 *  games: 1 to 63 characters of [a-z0-9_], not starting with a digit). */
export function checkSchemaName(schema: string): string {
  if (typeof schema !== 'string' || !SCHEMA_NAME.test(schema) || schema.startsWith('pg_')) {
    throw new PgConfigError(`bad PostgreSQL schema name ${JSON.stringify(schema)}: 1 to 63 characters of [a-z0-9_], not starting with a digit or pg_`);
  }
  return schema;
}

/**
 * Parses a store URL: `postgres://` or `postgresql://`, with an optional `schema` query parameter (ours, removed
 * before the URL reaches `pg`; default `fedunlearn`). Everything else (user, password, host, port, database, sslmode)
 * is libpq's meaning. Throws PgConfigError for another scheme, a URL without a database, or a bad schema name.
 */
export function parsePgUrl(url: string): PgLocation {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new PgConfigError(`not a URL: ${JSON.stringify(redact(url))}`);
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new PgConfigError(`a PostgreSQL store URL starts with postgres:// or postgresql://, got ${u.protocol}//`);
  }
  if (u.pathname === '' || u.pathname === '/') throw new PgConfigError(`the store URL ${redact(url)} names no database (postgres://host/DATABASE)`);
  const schemas = u.searchParams.getAll('schema');
  if (schemas.length > 1) throw new PgConfigError('the store URL gives schema more than once');
  u.searchParams.delete('schema');
  return { connectionString: u.toString(), schema: checkSchemaName(schemas[0] ?? DEFAULT_SCHEMA) };
}

/** True when `s` looks like a PostgreSQL URL (the store factory's test). */
export function isPgUrl(s: string): boolean {
  return /^postgres(ql)?:\/\//i.test(s);
}

/** The URL with its password replaced, for messages and logs. */
export function redact(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@]*@/i, '$1:***@');
}

export interface PgPoolOptions {
  /** Connections the pool may open (default 4: the store's writes are serialised by the coordinator's work lock;
   *  the rest are API reads and staging). */
  max?: number;
  /** Milliseconds to wait for a connection before the call fails with a clear error (default 10,000). */
  connectTimeoutMs?: number;
  /**
   * The server ends a session whose transaction sits idle longer than this (idle_in_transaction_session_timeout; 0,
   * the default: never). A cluster sets it to the lease TTL: a leader paused (SIGSTOP) inside a commit transaction
   * would otherwise hold the lease row's lock, and so the takeover, for as long as it stays paused.
   */
  idleInTransactionTimeoutMs?: number;
}

/**
 * A pool whose connections use `loc.schema` (search_path) and synchronous commits. Errors of idle connections (the
 * server restarted) are swallowed by the pool's 'error' listener: the next query gets a fresh connection, or the error.
 */
export function createPool(loc: PgLocation, opts: PgPoolOptions = {}): pg.Pool {
  checkSchemaName(loc.schema);
  const pool = new pg.Pool({
    connectionString: loc.connectionString,
    max: opts.max ?? 4,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 10_000,
    // Startup options: every connection, including those the pool opens after a server restart, gets them.
    options: `-c search_path=${loc.schema} -c synchronous_commit=on${opts.idleInTransactionTimeoutMs ? ` -c idle_in_transaction_session_timeout=${Math.ceil(opts.idleInTransactionTimeoutMs)}` : ''}`,
    // bigint columns hold unix milliseconds and byte counts (below 2^53): numbers, not the strings pg gives by default.
    types: { getTypeParser: ((oid: number, format?: 'text' | 'binary') => (oid === INT8_OID ? parseInt8 : pg.types.getTypeParser(oid, format as 'text'))) as typeof pg.types.getTypeParser },
  });
  pool.on('error', () => {
    // An idle client lost its connection; pg removes it from the pool. Nothing is in flight on it.
  });
  return pool;
}

const INT8_OID = 20;
function parseInt8(v: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new RangeError(`bigint ${v} is beyond 2^53: not a count or a time this store writes`);
  return n;
}

/** Why a connection attempt failed, in the operator's words (the server's own message is kept as the cause). */
export class PgUnavailableError extends Error {
  override name = 'PgUnavailableError';
}

/** Checks that the server answers (one round trip); rejects with PgUnavailableError naming the URL (redacted). */
export async function ping(pool: pg.Pool, url: string): Promise<void> {
  try {
    await pool.query('SELECT 1');
  } catch (e) {
    throw new PgUnavailableError(`PostgreSQL at ${redact(url)} does not answer: ${(e as Error).message}`, { cause: e });
  }
}

/** SQLSTATEs after which the whole transaction may simply run again: serialization_failure, deadlock_detected. */
const RETRYABLE = new Set(['40001', '40P01']);

export interface TransactionOptions {
  isolation?: 'read committed' | 'repeatable read' | 'serializable';
  /** Attempts in all for a retryable failure (default 5). */
  attempts?: number;
}

/**
 * Runs `body` in a transaction on one pooled connection: COMMIT when it resolves, ROLLBACK when it throws (the error
 * is rethrown). A serialization failure or deadlock (which PostgreSQL reports so that the client retries) runs the
 * whole body again, up to `attempts` times, so `body` must not have effects outside the transaction that a rerun
 * would repeat wrongly. A COMMIT that fails leaves nothing committed.
 */
export async function withTransaction<T>(pool: pg.Pool, body: (tx: pg.PoolClient) => Promise<T>, opts: TransactionOptions = {}): Promise<T> {
  const attempts = opts.attempts ?? 5;
  for (let attempt = 1; ; attempt++) {
    const client = await pool.connect();
    let broken = false;
    // pg-pool listens for a client's errors only while it is idle: a connection that fails while checked out (the
    // server ended a transaction left idle past idle_in_transaction_session_timeout, a restart) would otherwise be an
    // unhandled 'error' event and end the process. The failed query rejects anyway; the client is not reused.
    const onError = () => {
      broken = true;
    };
    client.on('error', onError);
    try {
      await client.query(`BEGIN ISOLATION LEVEL ${(opts.isolation ?? 'read committed').toUpperCase()}`);
      const out = await body(client);
      await client.query('COMMIT');
      return out;
    } catch (e) {
      try {
        await client.query('ROLLBACK');
      } catch {
        // The connection itself failed: do not give it back to the pool.
        broken = true;
      }
      const code = (e as { code?: unknown }).code;
      if (attempt < attempts && typeof code === 'string' && RETRYABLE.has(code)) continue;
      throw e;
    } finally {
      client.off('error', onError);
      client.release(broken);
    }
  }
}
