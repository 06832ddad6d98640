import { sha256Hex, type BlobEncoding } from '../blob-files.js';
import type { ClientRecord } from '../store.js';
export { layoutSpecs, metaOf, modelRowOf, metricsFromJson, metricsToJson, normsFromBytes, normsToBytes, toJob, toModel, type FederationRow, type JobRow, type ModelRow } from '../rows.js';

/**
 * The PostgreSQL history store's rows (as `pg` returns them: bigint columns as numbers, see pg-connection.ts) and
 * their mapping to the HistoryStore records; the encodings the rows use (metrics JSON keeping non-finite values,
 * norms as float64 bytes, blob-key-safe ids).
 */

export interface RoundRow {
  round_id: string;
  lineage: string;
  round: number;
  model_before: string | null;
  model_after: string | null;
  updates_stored: boolean;
  metrics_json: string;
  missing_json: string;
  started_at: number;
  closed_at: number;
}
export interface ParticipantRow {
  round_id: string;
  client_id: string;
  num_examples: number;
  norms: Buffer;
  metrics_json: string | null;
  sensitivity: number | null;
  has_update: boolean;
}
export interface StagedRow {
  round_id: string;
  client_id: string;
  encoding: BlobEncoding;
  blob: string;
  bytes: number;
  blob_sha256: string;
}
export interface ClientRow {
  client_id: string;
  secret_hash: string | null;
  num_examples: number;
  first_seen: number;
  last_seen: number;
  forgotten: boolean;
  revoked: boolean;
}



/** A blob-key-safe, collision-free rendering of an id (ids are nanoids in practice; anything else is hashed, and a
 *  hashed name has a '.', which no plain one has). */
export function safeName(id: string): string {
  return /^[A-Za-z0-9_-]{1,64}$/.test(id) ? id : `h.${sha256Hex(Buffer.from(id, 'utf8')).slice(0, 40)}`;
}





export function toClient(r: ClientRow): ClientRecord {
  return {
    clientId: r.client_id,
    secretHash: r.secret_hash,
    numExamples: r.num_examples,
    firstSeen: r.first_seen,
    lastSeen: r.last_seen,
    forgotten: r.forgotten,
    revoked: r.revoked,
  };
}
