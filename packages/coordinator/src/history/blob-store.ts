/**
 * The seam for blob bytes (model weights, client updates, job checkpoints): a flat namespace of keys, each holding
 * one immutable byte string. A HistoryStore keeps its metadata (rows) itself and the bytes here, and refers to a
 * blob from a committed row only once `makeDurable` resolved for it: a crash between a `put` and its `makeDurable`
 * leaves an unreferenced blob, which garbage collection (`list` + `discard`) removes.
 *
 * Keys are '/'-separated strings of [A-Za-z0-9._-] segments, e.g. `updates/<roundId>/<clientId>`, `models/<version>`,
 * `jobs/<jobId>/<step>`; no empty, '.' or '..' segment. Every method refuses another key with BlobKeyError.
 *
 * Implementations: `fs-blob-store.ts` (files in a data directory, the embedded default); a PostgreSQL one.
 * The contract every implementation meets is `blob-store-contract.ts`.
 */
export interface BlobStore {
  /** Writes `bytes` under `key`, replacing what it held. Not necessarily durable yet (a power loss may take it back):
   *  batch the durability with `makeDurable`. Resolves once `get` returns these bytes. Rejects with BlobKeyError for
   *  a bad key, BlobStoreClosedError after close, or the underlying I/O error (then the key holds nothing or its
   *  previous bytes, never a torn write). */
  put(key: string, bytes: Uint8Array): Promise<void>;
  /** Makes these keys' current bytes durable, together (fsync batching: one flush per key and directory, not per
   *  put). Keys already durable cost nothing. Rejects with HistoryBlobMissingError for a key that holds nothing, or
   *  the I/O error (then none of them may be referenced yet). */
  makeDurable(keys: readonly string[]): Promise<void>;
  /** The bytes under `key`, or null when it holds none. Rejects with BlobKeyError or the I/O error. */
  get(key: string): Promise<Uint8Array | null>;
  /** Deletes these keys durably (missing ones are skipped); resolves with the bytes freed. */
  delete(keys: readonly string[]): Promise<number>;
  /** Keys under `prefix` (a key prefix ending in '/' or '' for all), in no particular order: garbage collection
   *  compares them with the keys the metadata refers to. Never lists blobs a `discard` set aside. */
  list(prefix: string): Promise<string[]>;
  /** Removes unreferenced blobs found by garbage collection. An implementation may keep them aside for inspection
   *  (the filesystem one moves them to `quarantine/`) rather than destroy them. Resolves with the keys removed. */
  discard(keys: readonly string[]): Promise<string[]>;
  /** Optional: removes what puts interrupted by a crash left under `prefix` (the filesystem one's temporary files,
   *  never listed); resolves with how many. Stores whose put is atomic have nothing to remove and omit it. */
  sweepInterrupted?(prefix: string): Promise<number>;
  /** Releases resources; later calls reject with BlobStoreClosedError. Idempotent. */
  close(): Promise<void>;
}

export class BlobKeyError extends Error {
  override name = 'BlobKeyError';
}

export class BlobStoreClosedError extends Error {
  override name = 'BlobStoreClosedError';
}

export class HistoryBlobMissingError extends Error {
  override name = 'HistoryBlobMissingError';
  constructor(readonly key: string) {
    super(`blob ${key} holds nothing: it cannot be made durable`);
  }
}

const SEGMENT = /^[A-Za-z0-9._~-]+$/;

/** Throws BlobKeyError unless `key` is a valid blob key (see BlobStore). */
export function checkBlobKey(key: string): void {
  if (typeof key !== 'string' || key.length === 0 || key.length > 512) throw new BlobKeyError(`bad blob key ${JSON.stringify(key)}: 1 to 512 characters`);
  for (const seg of key.split('/')) {
    if (!SEGMENT.test(seg) || seg === '.' || seg === '..') {
      throw new BlobKeyError(`bad blob key ${JSON.stringify(key)}: '/'-separated segments of [A-Za-z0-9._~-], none empty, '.' or '..'`);
    }
  }
}

/** Throws BlobKeyError unless `prefix` is '' or a valid key followed by '/'. */
export function checkBlobPrefix(prefix: string): void {
  if (prefix === '') return;
  if (!prefix.endsWith('/')) throw new BlobKeyError(`bad blob prefix ${JSON.stringify(prefix)}: '' or ending in '/'`);
  checkBlobKey(prefix.slice(0, -1));
}

/** The key of a client's update in a round. */
export const updateKey = (roundId: string, clientId: string): string => `updates/${roundId}/${clientId}`;
/** The key of a model version's weights. */
export const modelKey = (version: string): string => `models/${version}`;
/** The key of a job step's checkpointed model. */
export const jobStepKey = (jobId: string, step: number): string => `jobs/${jobId}/step-${step}`;
