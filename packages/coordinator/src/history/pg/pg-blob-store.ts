import type pg from 'pg';
import { BlobStoreClosedError, checkBlobKey, checkBlobPrefix, HistoryBlobMissingError, type BlobStore } from '../blob-store.js';
import { createPool, parsePgUrl, ping, type PgLocation, type PgPoolOptions } from './pg-connection.js';
import { migratePg } from './pg-migrations.js';

/**
 * BlobStore on PostgreSQL: one row per key in the `blobs` table, the bytes a `bytea` column stored out of line and
 * uncompressed (STORAGE EXTERNAL, see pg-migrations.ts), in the partition `blobPart(key)` names.
 *
 * Why bytea rather than large objects: a bytea row lives in the store's own schema (large objects are database-wide,
 * in pg_largeobject, which a per-federation schema cannot scope, drop or vacuum without owning the catalog), it is
 * written and deleted in the same transaction as the rows that refer to it (so a commit or a purge is one
 * transaction, with no orphan large objects to unlink), and its 1 GB limit is far above a model (MBs). Large objects
 * would pay off only for streaming partial reads, which the history never does.
 *
 * Durability: a `put` is one autocommitted INSERT, on disk (WAL flushed, synchronous_commit=on) when it resolves, so
 * `makeDurable` only checks that the keys hold something: PostgreSQL batches the flushes of concurrent commits itself
 * (group commit). `discard` deletes (no quarantine: the database is backed up by the operator's own means).
 */
export class PgBlobStore implements BlobStore {
  private closed = false;

  /** Takes a pool whose search_path is the store's schema (pg-connection.ts `createPool`); `ownsPool`: close ends it. */
  constructor(
    private readonly pool: pg.Pool,
    private readonly ownsPool: boolean,
    private readonly now: () => number = Date.now,
  ) {}

  async put(key: string, bytes: Uint8Array): Promise<void> {
    this.requireOpen();
    checkBlobKey(key);
    await putBlob(this.pool, key, bytes, this.now());
  }

  async makeDurable(keys: readonly string[]): Promise<void> {
    this.requireOpen();
    keys.forEach(checkBlobKey);
    if (keys.length === 0) return;
    const { rows } = await this.pool.query<{ key: string }>(`SELECT key FROM blobs WHERE ${BY_KEYS}`, byKeys(keys));
    const present = new Set(rows.map((r) => r.key));
    for (const k of keys) if (!present.has(k)) throw new HistoryBlobMissingError(k);
  }

  async get(key: string): Promise<Uint8Array | null> {
    this.requireOpen();
    checkBlobKey(key);
    return getBlob(this.pool, key);
  }

  async delete(keys: readonly string[]): Promise<number> {
    this.requireOpen();
    keys.forEach(checkBlobKey);
    return deleteBlobs(this.pool, keys);
  }

  async list(prefix: string): Promise<string[]> {
    this.requireOpen();
    checkBlobPrefix(prefix);
    const { rows } = await this.pool.query<{ key: string }>('SELECT key FROM blobs WHERE starts_with(key, $1)', [prefix]);
    return rows.map((r) => r.key);
  }

  async discard(keys: readonly string[]): Promise<string[]> {
    this.requireOpen();
    keys.forEach(checkBlobKey);
    if (keys.length === 0) return [];
    const { rows } = await this.pool.query<{ key: string }>(`DELETE FROM blobs WHERE ${BY_KEYS} RETURNING key`, byKeys(keys));
    return rows.map((r) => r.key);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsPool) await this.pool.end();
  }

  private requireOpen(): void {
    if (this.closed) throw new BlobStoreClosedError('the PostgreSQL blob store is closed');
  }
}

/** A connection or a transaction's client: the helpers below run in either, so a history commit writes and deletes
 *  its blobs inside its own transaction. */
export type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>;

/** Partitions of the `blobs` table holding updates (1..UPDATE_PARTS); part 0 holds every other blob. */
export const UPDATE_PARTS = 16;

/**
 * The partition of a key: for `updates/<round>/<client>/<nonce>` a hash (FNV-1a, 32 bits) of the client segment, so
 * that all of one client's updates share a partition and a purge rewrites only the partitions of the clients it
 * forgot; 0 for every other key. A pure function of the key, so that the key alone identifies a blob.
 */
export function blobPart(key: string): number {
  const seg = key.split('/');
  if (seg.length !== 4 || seg[0] !== 'updates') return 0;
  return 1 + (fnv1a(seg[2]!) % UPDATE_PARTS);
}

/** The partition table (in the store's schema) that holds `part`. */
export function blobPartition(part: number): string {
  return part === 0 ? 'blobs_other' : `blobs_u${String(part - 1).padStart(2, '0')}`;
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(s, 'utf8')) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h;
}

/** A WHERE clause matching the keys `byKeys` binds as $1 (parts) and $2 (keys): the planner prunes to their partitions. */
const BY_KEYS = '(part, key) IN (SELECT * FROM unnest($1::smallint[], $2::text[]))';
function byKeys(keys: readonly string[]): [number[], string[]] {
  const unique = [...new Set(keys)];
  return [unique.map(blobPart), unique];
}

/** Inserts or replaces one blob (in the caller's transaction when `q` is a transaction's client). */
export async function putBlob(q: Queryable, key: string, bytes: Uint8Array, now: number): Promise<void> {
  await q.query(
    `INSERT INTO blobs (part, key, bytes, size, created_at) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (part, key) DO UPDATE SET bytes = EXCLUDED.bytes, size = EXCLUDED.size, created_at = EXCLUDED.created_at`,
    [blobPart(key), key, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), bytes.byteLength, now],
  );
}

/** The blob's bytes, or null. */
export async function getBlob(q: Queryable, key: string): Promise<Uint8Array | null> {
  const { rows } = await q.query<{ bytes: Buffer }>('SELECT bytes FROM blobs WHERE part = $1 AND key = $2', [blobPart(key), key]);
  const b = rows[0]?.bytes;
  // A plain Uint8Array over the same memory (no copy), as every BlobStore returns.
  return b ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength) : null;
}

/** Whether the key holds a blob. */
export async function hasBlob(q: Queryable, key: string): Promise<boolean> {
  const { rowCount } = await q.query('SELECT 1 FROM blobs WHERE part = $1 AND key = $2', [blobPart(key), key]);
  return (rowCount ?? 0) > 0;
}

/** Deletes these blobs (missing ones skipped); resolves with the bytes freed. */
export async function deleteBlobs(q: Queryable, keys: readonly string[]): Promise<number> {
  if (keys.length === 0) return 0;
  const { rows } = await q.query<{ size: number }>(`DELETE FROM blobs WHERE ${BY_KEYS} RETURNING size`, byKeys(keys));
  return rows.reduce((s, r) => s + r.size, 0);
}

/**
 * Opens a standalone PostgreSQL BlobStore at `url` (postgres://…?schema=NAME): checks that the server answers, runs
 * the history migrations (the `blobs` table is theirs), and owns its pool. Rejects with PgUnavailableError or
 * PgConfigError.
 */
export async function openPgBlobStore(url: string, opts: PgPoolOptions & { now?: () => number } = {}): Promise<PgBlobStore> {
  const loc: PgLocation = parsePgUrl(url);
  const pool = createPool(loc, opts);
  try {
    await ping(pool, url);
    await migratePg(pool, loc.schema);
  } catch (e) {
    await pool.end();
    throw e;
  }
  return new PgBlobStore(pool, true, opts.now);
}
