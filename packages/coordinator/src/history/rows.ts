import { layoutOf, type WeightLayout, type WeightSpec } from '@fedunlearn/protocol';
import { encodeBlob, weightsSha256 } from './blob-files.js';
import { newId } from '../ids.js';
import { HistoryError, type FederationMeta, type HistoryConfig, type JobRecord, type ModelCause, type ModelVersion } from './store.js';

/**
 * What both history stores keep alike (sqlite-store.ts, pg/pg-store.ts): the federation, model and job rows, their
 * mapping to the HistoryStore records, and the encodings rows use (metrics JSON keeping non-finite values, norms as
 * float64 bytes). Rows that differ between the engines (booleans as 0/1 in SQLite, staged updates, blob names) stay
 * with their store.
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

/**
 * A new model version's row and its blob bytes (fp32, with the blob header): the weights are checked against the
 * layout (HistoryError otherwise), the version is a fresh id, and `blobKey` names where this store keeps the bytes.
 */
export function modelRowOf(
  layout: WeightLayout,
  weights: Float32Array,
  m: { parent: string | null; cause: ModelCause; round: number; jobId: string | null; lineage: string },
  createdAt: number,
  blobKey: (version: string) => string,
): { row: ModelRow; bytes: Uint8Array } {
  if (!(weights instanceof Float32Array) || weights.length !== layout.totalSize) {
    throw new HistoryError(`model weights hold ${weights.length} values, the layout ${layout.totalSize}`);
  }
  let encoded;
  try {
    encoded = encodeBlob(layout, weights, 'fp32');
  } catch (e) {
    throw new HistoryError(`model weights: ${(e as Error).message}`);
  }
  const version = newId();
  const row: ModelRow = {
    version,
    parent: m.parent,
    cause: m.cause,
    round: m.round,
    job_id: m.jobId,
    lineage: m.lineage,
    sha256: weightsSha256(weights),
    blob: blobKey(version),
    bytes: encoded.bytes.byteLength,
    created_at: createdAt,
    erased_at: null,
    pruned_at: null,
  };
  return { row, bytes: encoded.bytes };
}
