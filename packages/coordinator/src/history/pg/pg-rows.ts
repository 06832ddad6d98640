import { layoutOf, type WeightLayout, type WeightSpec } from '@fedunlearn/protocol';
import { sha256Hex, type BlobEncoding } from '../blob-files.js';
import type { ClientRecord, FederationMeta, HistoryConfig, JobRecord, ModelCause, ModelVersion } from '../store.js';

/**
 * The PostgreSQL history store's rows (as `pg` returns them: bigint columns as numbers, see pg-connection.ts) and
 * their mapping to the HistoryStore records; the encodings the rows use (metrics JSON keeping non-finite values,
 * norms as float64 bytes, blob-key-safe ids).
 */

export interface ModelRow {
  version: string;
  parent: string | null;
  cause: ModelCause;
  round: number;
  job_id: string | null;
  lineage: string;
  sha256: string;
  blob: string;
  bytes: number;
  created_at: number;
  erased_at: number | null;
  pruned_at: number | null;
}
export interface FederationRow {
  topology_json: string;
  layout_json: string;
  history_interval: number;
  retention: HistoryConfig['retention'];
  created_at: number;
  head: string;
}
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
export interface JobRow {
  job_id: string;
  kind: string;
  state: JobRecord['state'];
  client_ids_json: string;
  requested_by: string;
  method: string;
  params_json: string;
  progress_json: string;
  checkpoint_json: string | null;
  report_json: string | null;
  error: string | null;
  created_at: number;
  updated_at: number;
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

export function metaOf(row: FederationRow): FederationMeta {
  return {
    topologyJson: row.topology_json,
    layout: layoutOf(JSON.parse(row.layout_json) as WeightSpec[]),
    config: { historyInterval: row.history_interval, retention: row.retention },
    createdAt: row.created_at,
  };
}

export function layoutSpecs(layout: WeightLayout): WeightSpec[] {
  return layout.specs.map((s) => ({ name: s.name, shape: [...s.shape] }));
}

/** A blob-key-safe, collision-free rendering of an id (ids are nanoids in practice; anything else is hashed, and a
 *  hashed name has a '.', which no plain one has). */
export function safeName(id: string): string {
  return /^[A-Za-z0-9_-]{1,64}$/.test(id) ? id : `h.${sha256Hex(Buffer.from(id, 'utf8')).slice(0, 40)}`;
}

/** JSON for metrics that keeps NaN and ±Infinity (a diverging round still commits, and reads back as it was). */
export function metricsToJson(m: Record<string, number>): string {
  return JSON.stringify(m, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v));
}
export function metricsFromJson(s: string): Record<string, number> {
  return JSON.parse(s, (_k, v: unknown) => (v === 'NaN' || v === 'Infinity' || v === '-Infinity' ? Number(v) : v)) as Record<string, number>;
}

/** Norms as float64 little-endian: exact. */
export function normsToBytes(norms: Float64Array): Buffer {
  const b = Buffer.alloc(norms.length * 8);
  for (let i = 0; i < norms.length; i++) b.writeDoubleLE(norms[i]!, i * 8);
  return b;
}
export function normsFromBytes(b: Buffer): number[] {
  const out: number[] = [];
  for (let i = 0; i + 8 <= b.length; i += 8) out.push(b.readDoubleLE(i));
  return out;
}

export function toModel(r: ModelRow): ModelVersion {
  return {
    version: r.version,
    parent: r.parent,
    cause: r.cause,
    round: r.round,
    jobId: r.job_id,
    lineage: r.lineage,
    sha256: r.sha256,
    createdAt: r.created_at,
    erasedAt: r.erased_at ?? null,
    prunedAt: r.pruned_at ?? null,
  };
}

export function toJob(r: JobRow): JobRecord {
  return {
    jobId: r.job_id,
    kind: r.kind,
    state: r.state,
    clientIds: JSON.parse(r.client_ids_json) as string[],
    requestedBy: r.requested_by,
    method: r.method,
    params: JSON.parse(r.params_json) as Record<string, unknown>,
    progress: JSON.parse(r.progress_json) as JobRecord['progress'],
    checkpoint: r.checkpoint_json === null ? null : (JSON.parse(r.checkpoint_json) as unknown),
    report: r.report_json === null ? null : (JSON.parse(r.report_json) as unknown),
    error: r.error,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
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
