import type { WeightLayout } from '@fedunlearn/protocol';

/**
 * The coordinator's durable history: model versions, round records with per-client update norms, full client
 * updates every Δt rounds, unlearning jobs and the client registry. Unlearning replays what is stored here, so
 * every read returns exactly what was committed (or throws): nothing is approximated except the declared
 * quantisation of full updates under the 'fp16' / 'int8' retention.
 */

/** A request the store refuses (out-of-order round, unknown version, mismatched federation, corrupted blob, ...). */
export class HistoryError extends Error {
  override name = 'HistoryError';
}

/** readModel of a version whose weights were erased with a forgotten client's contribution. */
export class ModelErasedError extends HistoryError {
  override name = 'ModelErasedError';
  constructor(readonly version: string, readonly erasedAt: number) {
    super(`model ${version} was erased at ${new Date(erasedAt).toISOString()}: a forgotten client had contributed to it`);
  }
}

/** readModel of a version whose weights the model retention policy pruned (its record stays). */
export class ModelPrunedError extends HistoryError {
  override name = 'ModelPrunedError';
  constructor(readonly version: string, readonly prunedAt: number) {
    super(`model ${version} was pruned at ${new Date(prunedAt).toISOString()} by the model retention policy (keepLastModels, keepModelsEvery): its record is kept, its weights are not`);
  }
}

export type ModelCause = 'init' | 'round' | 'unlearning';

export interface ModelVersion {
  /** Id (ids.ts: 21 letters and digits) of this model version. */
  version: string;
  /** The version it was derived from: null for 'init'; for 'round' the round's modelBefore; for the final model of an
   *  unlearning job the head it replaced (so the old lineage stays reachable); for an intermediate replay model the
   *  model its replayed round started from (or the replaced head when that is unknown). */
  parent: string | null;
  cause: ModelCause;
  /** Training rounds completed in its lineage when it was made (init: 0; unlearning: the number of the last replayed round). */
  round: number;
  /** Unlearning job that produced it. */
  jobId: string | null;
  /** Lineage id: the history (rounds) this model belongs to; unlearning starts a new lineage. */
  lineage: string;
  /** sha256 of the float32 little-endian weight bytes, hex. */
  sha256: string;
  /** Unix ms. */
  createdAt: number;
  /** Unix ms at which its weights were erased because a forgotten client had contributed to them (the record stays,
   *  for the lineage and the audit; readModel refuses it). null while the weights are kept. */
  erasedAt: number | null;
  /** Unix ms at which the model retention policy deleted its weights (the record stays; readModel refuses it). null
   *  while the weights are kept. */
  prunedAt: number | null;
}

export interface ParticipantInput {
  clientId: string;
  numExamples: number;
  /** Per-layer L2 norms of the update, layout order (kept in float64, exactly). */
  norms: Float64Array | number[];
  metrics?: Record<string, number>;
  /**
   * An upper bound on ||agg - agg_{-c}||, how far the round's aggregated step moves when this client is left out of
   * it (L2, in weight units), computed at the round's commit (rounds/sensitivity.ts). SIFU accumulates it
   * (unlearning/sifu.ts). Absent on rounds committed before it was kept and under aggregations it cannot be bounded for.
   */
  sensitivity?: number;
}

export interface Participant extends ParticipantInput {
  norms: number[];
  /** Whether this client's full update is stored (false on rounds that keep norms only, and after a purge). */
  hasUpdate: boolean;
}

/** Why a client asked to take part in a round sent no accepted update: never connected when the round began
 *  ('offline'), lost its connection or stopped answering heartbeats ('disconnected'), too slow ('deadline'), sent an
 *  update that was refused ('rejected'), or reported that its task failed ('failed'). */
export type MissingReason = 'offline' | 'disconnected' | 'deadline' | 'rejected' | 'failed';

export interface MissingClient {
  clientId: string;
  reason: MissingReason;
  detail?: string;
}

export interface RoundRecord {
  /** 1-based within the lineage. */
  round: number;
  roundId: string;
  lineage: string;
  /** Version the clients started from (M^t). '' when unknown: an unlearning round whose model was not kept. */
  modelBefore: string;
  /** Version committed with this round. '' when unknown: an unlearning round whose model was not kept. */
  modelAfter: string;
  participants: Participant[];
  /** Clients that were asked to take part but whose update is not in the round, with the reason (selection order of
   *  settlement). Empty for rounds recorded before this was kept. */
  missing: MissingClient[];
  /** True on rounds whose full updates are kept by policy: keepsUpdates(round) for training rounds, and every replayed
   *  round of an unlearning lineage unless the retention is 'norms'. Participant.hasUpdate says what is actually there. */
  updatesStored: boolean;
  /** E.g. aggregate train loss, accuracy reported by the caller. Non-finite values survive storage. */
  metrics: Record<string, number>;
  startedAt: number;
  closedAt: number;
}

/** How full updates are kept ('norms': not at all). */
export type Retention = 'fp32' | 'fp16' | 'int8' | 'norms';

export interface HistoryConfig {
  /** Δt: full updates kept on rounds 1, 1+Δt, 1+2Δt, ... (a positive integer). */
  historyInterval: number;
  retention: Retention;
}

export interface FederationMeta {
  topologyJson: string;
  layout: WeightLayout;
  config: HistoryConfig;
  createdAt: number;
}

/** Unlearning jobs, persisted; the engine owns the meaning of params/progress/checkpoint/report. */
export interface JobRecord {
  jobId: string;
  kind: string;
  state: 'queued' | 'running' | 'done' | 'failed';
  clientIds: string[];
  requestedBy: string;
  method: string;
  params: Record<string, unknown>;
  progress: { step: number; total: number; message?: string };
  /** Opaque JSON: where a restarted coordinator resumes the job. */
  checkpoint: unknown | null;
  report: unknown | null;
  error: string | null;
  createdAt: number;
  updatedAt: number;
}

export interface ClientRecord {
  clientId: string;
  secretHash: string | null;
  numExamples: number;
  /** Unix ms of its first and latest connection; 0 while a client with an issued credential has never connected. */
  firstSeen: number;
  lastSeen: number;
  /** Set by purgeClients, which leaves only this tombstone (no secret, no example count) behind. */
  forgotten: boolean;
  /** Set when the operator revoked the client's credential; a rotation issues a new one and clears it. */
  revoked: boolean;
}

export interface PurgeSummary {
  clientIds: string[];
  updatesDeleted: number;
  bytesDeleted: number;
  participantRowsDeleted: number;
  /** Model versions whose weights were erased (eraseModels), in creation order. */
  modelsErased: string[];
  modelBytesDeleted: number;
  /** True once no byte of the purged rows is left in any file of the data directory: the SQLite WAL, which still
   *  holds pre-purge copies of their pages, was checkpointed and truncated. False while a reader (a backup or
   *  monitoring tool holding a read transaction) keeps the checkpoint from completing: `completePurge` retries. */
  complete: boolean;
}

export interface PurgeOptions {
  /** Also erase the weights of every model version a purged client contributed to: in each lineage, the models from
   *  the first round the client took part in onwards (earlier ones, and the initial model, are clean). The head must
   *  not be among them (unlearn first); the request is refused otherwise. Default false. */
  eraseModels?: boolean;
}

/** One completed step of a running job, persisted as it completes (so a checkpoint costs O(step), not O(steps so far)). */
export interface JobStep {
  /** 0-based position in the job's new history. */
  step: number;
  /** Opaque JSON the engine owns (the replayed round without its weights, and where its model is kept). */
  data: unknown;
}

/** What `finishUnlearning` does besides the commit, inside the same transaction. */
export interface FinishUnlearningInput extends CommitUnlearningInput {
  /** Clients to purge (as purgeClients) and tombstone. */
  purge: { clientIds: string[]; eraseModels: boolean };
  /** The job's final state, computed from the new head and the purge (e.g. state 'done' and the report); its steps
   *  are deleted. Runs inside the transaction: a throw rolls everything back. */
  finish(after: ModelVersion, purged: PurgeSummary): Partial<Pick<JobRecord, 'state' | 'progress' | 'report' | 'error'>>;
}

export interface HistoryStats {
  /** Bytes of the model blobs still kept (erased ones excluded). */
  modelBytes: number;
  updateBytes: number;
  /** updateBytes split by the encoding each blob was actually written in ('fp32' | 'fp16' | 'int8'). */
  updateBytesByDtype: Record<string, number>;
  updates: number;
  rounds: number;
  /** Model versions recorded, erased ones included. */
  models: number;
  modelsErased: number;
  /** Model versions whose weights the retention policy pruned (and no forget job erased since: those count as erased). */
  modelsPruned: number;
}

/** One replayed round of an unlearning job, as the engine applied it. */
export interface UnlearningRoundInput {
  round: number;
  /** A fresh id: round ids are unique across lineages, so the replay cannot reuse the original round's id. */
  roundId: string;
  /** An existing version, or '' to take the intermediate model of the previous replayed round (or "unknown"). */
  modelBefore: string;
  /** An existing version, or ''/absent to take this round's intermediate model (the new head for the last round). */
  modelAfter?: string;
  participants: ParticipantInput[];
  /** Clients of the replay step that did not answer. */
  missing?: MissingClient[];
  metrics: Record<string, number>;
  startedAt: number;
  closedAt: number;
}

export interface CommitUnlearningInput {
  jobId: string;
  /** The unlearned model: becomes the head (cause 'unlearning', parent = the head it replaces). */
  weights: Float32Array;
  /** The replayed rounds, ascending by round number; they become the whole history of the new lineage. */
  rounds: UnlearningRoundInput[];
  /** Models after replayed rounds other than the last (whose result is `weights`), kept as versions of the new lineage. */
  intermediateModels?: { round: number; weights: Float32Array }[];
}

export interface HistoryStore {
  /** Opens an existing federation or creates one with this initial model; returns its meta and the head. On resume the
   *  topology, layout and config must match the stored ones (else a clear error) and initialWeights is ignored. */
  open(init: { topologyJson: string; layout: WeightLayout; initialWeights: Float32Array; config: HistoryConfig }): Promise<{
    meta: FederationMeta;
    head: ModelVersion;
    resumed: boolean;
  }>;
  meta(): Promise<FederationMeta>;
  /** Current global model version (the latest committed). */
  head(): Promise<ModelVersion>;
  /** Whether round `round` (1-based) keeps full updates under the config (Δt); always false under retention 'norms'. */
  keepsUpdates(round: number): Promise<boolean>;
  /** Durably writes one client's full update for an open round BEFORE the round commits (off the commit's critical
   *  path). Idempotent per (roundId, clientId): staging again replaces the previous staging. Must resolve before the
   *  commit that should include it. A no-op under retention 'norms'. */
  stageUpdate(roundId: string, clientId: string, update: Float32Array): Promise<void>;
  /** Makes the round's finished stagings durable together (a commit would otherwise do it, one after another, on
   *  its own critical path). Call after the stagings resolved and before the commit. */
  syncStaged(roundId: string): Promise<void>;
  /** Drops staged updates of a round that will not commit (or of a client dropped from it). */
  discardStaged(roundId: string, clientId?: string): Promise<void>;
  /** Atomically: the round record with its participants, its staged updates (only those of listed participants, and
   *  only when keepsUpdates(round)), and the new model version (cause 'round', parent = modelBefore, round =
   *  record.round). After a crash either all of it is there or none. round must be head.round + 1 and modelBefore the
   *  head. Other staged updates of the round are discarded. */
  commitRound(input: {
    round: number;
    roundId: string;
    modelBefore: string;
    weights: Float32Array;
    participants: ParticipantInput[];
    /** Selected clients whose update is not in the round; must not overlap the participants. */
    missing?: MissingClient[];
    metrics: Record<string, number>;
    startedAt: number;
  }): Promise<ModelVersion>;
  /** Rounds of a lineage (default: the head's), ascending; from/to are inclusive round numbers. */
  listRounds(opts?: { lineage?: string; from?: number; to?: number }): Promise<RoundRecord[]>;
  getRound(round: number, lineage?: string): Promise<RoundRecord | null>;
  /** A stored full update, decoded to float32 (dequantised if fp16/int8), or null if not kept / purged. Throws if the
   *  blob is corrupted. */
  readUpdate(roundId: string, clientId: string): Promise<Float32Array | null>;
  /** Model versions in creation order (default: every lineage). */
  listModels(opts?: { lineage?: string }): Promise<ModelVersion[]>;
  getModel(version: string): Promise<ModelVersion | null>;
  /** A lineage's position in creation order: 0 for the federation's first lineage, n for the lineage the n-th
   *  committed unlearning job started. Unlike the lineage id (random), it is the same in every run of the same
   *  schedule, so client selection is keyed on it. Throws HistoryError for an unknown lineage. */
  lineagePosition(lineage: string): Promise<number>;
  /** How many lineages exist: the position the next unlearning commit's lineage will take. */
  lineageCount(): Promise<number>;
  /** Verifies sha256 on read; a mismatch throws (corruption is never served). */
  readModel(version: string): Promise<Float32Array>;
  /** Commits the result of an unlearning job atomically: a new model version (cause 'unlearning', parent = the head at
   *  the time, jobId) in a NEW lineage whose rounds are `rounds` (the replayed rounds with the updates actually applied,
   *  staged beforehand with stageUpdate under their roundIds), making it the head. The old lineage stays readable. */
  commitUnlearning(input: CommitUnlearningInput): Promise<ModelVersion>;
  /** Deletes every stored update and participant row of these clients, in every lineage, durably (files unlinked and
   *  dirs fsynced), drops them from the rounds' missing lists, and reduces their client records to tombstones
   *  (forgotten: true); with eraseModels, also the weights of the model versions they contributed to. Idempotent. */
  purgeClients(clientIds: string[], opts?: PurgeOptions): Promise<PurgeSummary>;
  /** The end of a forget job as ONE transaction: the commit of the new head and lineage (as commitUnlearning), the
   *  purge of the clients' rows (as purgeClients) with their tombstones, and the job's final state. A crash leaves all
   *  of it or none. Blobs are written (async, durable) before the transaction, the purged files unlinked after it
   *  (a crash before the unlinks leaves unreferenced files, which the next open deletes); the WAL is then
   *  checkpointed once (`purged.complete` says whether that completed). */
  finishUnlearning(input: FinishUnlearningInput): Promise<{ model: ModelVersion; purged: PurgeSummary; job: JobRecord }>;
  /** Makes purged rows leave the disk: checkpoints the WAL into the database (secure_delete has overwritten them
   *  there) and truncates it. Never waits on a reader: false when one still holds a snapshot that needs the WAL. */
  completePurge(): Promise<boolean>;
  /** Deletes the weights of these model versions (retention policy), keeping their records with prunedAt set: rows
   *  first, then the blob files, durably. Refuses the head; already pruned or erased versions are skipped. Returns the
   *  versions pruned now and the bytes freed. */
  pruneModels(versions: string[]): Promise<{ pruned: string[]; bytesDeleted: number }>;
  /** Storage statistics: bytes of model blobs, update blobs (by encoding), rows. */
  stats(): Promise<HistoryStats>;
  // jobs
  createJob(job: Omit<JobRecord, 'createdAt' | 'updatedAt'>): Promise<JobRecord>;
  updateJob(jobId: string, patch: Partial<Pick<JobRecord, 'state' | 'progress' | 'checkpoint' | 'report' | 'error'>>): Promise<JobRecord>;
  getJob(jobId: string): Promise<JobRecord | null>;
  /** Appends a completed step to a running job and sets its (small) checkpoint, in one transaction. Replaces a step
   *  of the same number (a step redone after a crash). With `roundId`, the updates staged for that round are made
   *  durable and recorded with the job, so that they survive a restart and its commit still stores them. */
  appendJobStep(jobId: string, step: JobStep, checkpoint: unknown, roundId?: string): Promise<void>;
  /** The job's steps, ascending. */
  jobSteps(jobId: string): Promise<JobStep[]>;
  /** Deletes the job's steps and the updates it staged (a failed job). */
  clearJobSteps(jobId: string): Promise<void>;
  /** Jobs in creation order. */
  listJobs(opts?: { state?: JobRecord['state'] }): Promise<JobRecord[]>;
  // clients
  /** Creates or refreshes a client: lastSeen moves forward only; absent fields keep their stored values. */
  upsertClient(c: { clientId: string; secretHash?: string | null; numExamples?: number; seenAt: number; forgotten?: boolean; revoked?: boolean }): Promise<ClientRecord>;
  getClient(clientId: string): Promise<ClientRecord | null>;
  /** Whether the client was forgotten: its tombstone, set in the transaction that finished its job. The one source
   *  of truth every check (selection, hello, new jobs, the API) reads. */
  isForgotten(clientId: string): Promise<boolean>;
  listClients(): Promise<ClientRecord[]>;
  close(): Promise<void>;
}

/** Full updates are kept on rounds 1, 1+Δt, 1+2Δt, ... (the FedEraser schedule t_{j+1} = t_j + Δt). */
export function keepsUpdatesUnder(config: HistoryConfig, round: number): boolean {
  return config.retention !== 'norms' && onSchedule(config, round);
}

/** Whether a training round is on the FedEraser schedule (1, 1+Δt, ...), whatever the retention keeps of its updates. */
export function onSchedule(config: HistoryConfig, round: number): boolean {
  return Number.isInteger(round) && round >= 1 && (round - 1) % config.historyInterval === 0;
}
