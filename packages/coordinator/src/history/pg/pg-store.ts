import type pg from 'pg';
import { newId } from '../../ids.js';
import { layoutOf, type WeightLayout } from '@fedunlearn/protocol';
import { BlobFormatError, blobPayload, decodeBlob, encodeBlob, readBlobHeader, sha256Hex, type BlobEncoding } from '../blob-files.js';
import type { Logger } from '../../logger.js';
import {
  HistoryError,
  keepsUpdatesUnder,
  ModelErasedError,
  ModelPrunedError,
  type ClientRecord,
  type CommitUnlearningInput,
  type FederationMeta,
  type FinishUnlearningInput,
  type HistoryConfig,
  type HistoryStats,
  type HistoryStore,
  type JobRecord,
  type JobStep,
  type MissingClient,
  type ModelCause,
  type ModelVersion,
  type Participant,
  type ParticipantInput,
  type PurgeOptions,
  type PurgeSummary,
  type RoundRecord,
} from '../store.js';
import { blobPart, blobPartition, deleteBlobs, getBlob, hasBlob, PgBlobStore, putBlob, type Queryable } from './pg-blob-store.js';
import {
  checkConfig,
  checkJobStep,
  checkMissing,
  checkNewRoundId,
  checkParticipants as checkParticipantsRule,
  checkResume,
  checkRoundOrder,
  checkUnlearning,
  resolveLineage,
  type CheckedParticipant as RuleParticipant,
  type CheckedUnlearning,
} from '../store-rules.js';
import {
  layoutSpecs,
  metaOf,
  metricsFromJson,
  metricsToJson,
  normsFromBytes,
  normsToBytes,
  modelRowOf,
  safeName,
  toClient,
  toJob,
  toModel,
  type ClientRow,
  type FederationRow,
  type JobRow,
  type ModelRow,
  type ParticipantRow,
  type RoundRow,
  type StagedRow,
} from './pg-rows.js';
import { createPool, parsePgUrl, ping, redact, withTransaction, type PgPoolOptions } from './pg-connection.js';
import { migratePg } from './pg-migrations.js';

/**
 * The PostgreSQL history store: the same HistoryStore as the embedded SQLite one (history/sqlite-store.ts), for
 * deployments where several coordinator replicas share one history. One federation per schema.
 *
 * Every commit is ONE transaction that writes its blobs too (they live in the `blobs` table, pg-blob-store.ts): a
 * round's model, record, participants, missing list and stored updates; an unlearning job's lineage, purge,
 * tombstones and end. So a crash leaves a whole commit or none, and there is no file garbage to collect. Staged
 * updates are rows (`staged_updates`), visible to every replica; a commit moves the listed ones into `updates` and
 * deletes the rest. Commits lock the federation row (SELECT … FOR UPDATE), so two writers cannot both advance the head
 * from the same model.
 *
 * Purge: DELETE in the transaction, then `completePurge` runs VACUUM FULL on the blob partitions and tables that held
 * the forgotten clients' rows: it rewrites them (and their TOAST relations) into new files, so that the relation files
 * hold no byte of the deleted rows (a plain VACUUM leaves them in the pages). It waits at most purgeLockTimeoutMs on
 * readers and reports incomplete while another session holds a snapshot reaching back to the purge (which keeps the
 * deleted rows alive); a later call completes it. What stays the operator's: the WAL segments (pg_wal, archives), base
 * backups and replicas, which keep copies until they are recycled or expire.
 */

export interface PgHistoryOptions {
  /** Clock for createdAt / closedAt / updatedAt (unix ms). */
  now?: () => number;
  /** Test hook, as the SQLite store's: awaited at 'history-write' (a round's stagings are durable, before its commit)
   *  and 'job-purge' (a job's end committed, before the vacuum). */
  pause?: (point: string) => Promise<void>;
  log?: Pick<Logger, 'warn' | 'info'>;
  pool?: PgPoolOptions;
  /** open() discards stagings of rounds that never committed (no job recorded them) older than this (ms). Default 0:
   *  one coordinator per schema, as the embedded store; replicas sharing a schema set it above the longest round,
   *  so that a replica starting does not drop the stagings of a round in flight on another. */
  stagingGraceMs?: number;
  /** How long completePurge waits for older snapshots to end, and then for each table lock, before it reports the
   *  purge incomplete (ms, default 2,000). */
  purgeLockTimeoutMs?: number;
  /**
   * A cluster's fencing (cluster/leader-lease.ts `fence`): run first inside every transaction that only the leader may
   * commit (a round, an unlearning commit or end, a job step, a pruning); it throws to refuse a deposed leader's
   * commit, which then rolls back.
   */
  fence?: (tx: pg.PoolClient) => Promise<void>;
}

/**
 * Connects to `url` (postgres://user@host:port/db?schema=NAME), checks that the server answers and brings the schema
 * to the current version (pg-migrations.ts); then call `open` as on any HistoryStore. Rejects with PgUnavailableError
 * when the server does not answer, PgConfigError for a bad URL, PgMigrationError for a schema newer than this code.
 */
export async function openPgHistory(url: string, opts: PgHistoryOptions = {}): Promise<PgHistoryStore> {
  const loc = parsePgUrl(url);
  const pool = createPool(loc, opts.pool);
  try {
    await ping(pool, url);
    await migratePg(pool, loc.schema);
  } catch (e) {
    await pool.end();
    throw e;
  }
  return new PgHistoryStore(pool, loc.schema, redact(url), opts);
}

/** Tables of the rows a purge deletes or rewrites (besides the blob partitions): completePurge rewrites them. */
const PURGED_TABLES = ['updates', 'staged_updates', 'participants', 'rounds', 'clients'] as const;
const RELNAME = /^[a-z_][a-z0-9_]{0,62}$/;

/** A staging being written by this process. */
interface InFlight {
  /** False once a later staging of the same client, or a discard, replaced it. */
  current: boolean;
  /** The outcome (committed or not) of a commit of its round that started while it was in flight. */
  commit: Promise<boolean> | null;
}

type RoundInput = {
  round: number;
  roundId: string;
  lineage: string;
  modelBefore: string | null;
  modelAfter: string | null;
  updatesStored: boolean;
  metrics: Record<string, number>;
  missing: MissingClient[];
  startedAt: number;
  closedAt: number;
};

export class PgHistoryStore implements HistoryStore {
  /** The blob store on the same pool and schema (job checkpoints and other blobs the engine keeps by key). */
  readonly blobs: PgBlobStore;
  private readonly now: () => number;
  private readonly pause: ((point: string) => Promise<void>) | undefined;
  private readonly log: Pick<Logger, 'warn' | 'info'> | null;
  private readonly stagingGraceMs: number;
  private readonly purgeLockTimeoutMs: number;
  private readonly fence: (tx: pg.PoolClient) => Promise<void>;
  private fed: FederationMeta | null = null;
  private closed = false;
  /** roundId -> clientId -> this process's staging of it still being written (what a commit must leave out). */
  private readonly inFlight = new Map<string, Map<string, InFlight>>();

  constructor(
    private readonly pool: pg.Pool,
    readonly schema: string,
    /** The URL without its password, for messages. */
    readonly where: string,
    opts: PgHistoryOptions = {},
  ) {
    this.now = opts.now ?? Date.now;
    this.pause = opts.pause;
    this.log = opts.log ?? null;
    this.stagingGraceMs = opts.stagingGraceMs ?? 0;
    this.purgeLockTimeoutMs = opts.purgeLockTimeoutMs ?? 2_000;
    this.fence = opts.fence ?? (async () => undefined);
    this.blobs = new PgBlobStore(pool, false, this.now);
  }

  // --- federation ---------------------------------------------------------------------------------------------

  async open(init: { topologyJson: string; layout: WeightLayout; initialWeights: Float32Array; config: HistoryConfig }): Promise<{
    meta: FederationMeta;
    head: ModelVersion;
    resumed: boolean;
  }> {
    this.requireNotClosed();
    if (this.fed) throw new HistoryError('the history store is already open');
    checkConfig(init.config);
    const opened = await withTransaction(this.pool, async (tx) => {
      // Two replicas opening an empty schema together: one creates the federation, the other then resumes it.
      await tx.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`fedunlearn.open.${this.schema}`]);
      const row = (await tx.query<FederationRow>('SELECT * FROM federation WHERE id = 1')).rows[0];
      if (row) {
        const meta = metaOf(row);
        checkResume(meta, init);
        const head = await this.headIn(tx);
        if (!(await hasBlob(tx, head.blob))) {
          throw new HistoryError(`the head model ${head.version} has no blob (${head.blob})`);
        }
        return { meta, head: toModel(head), resumed: true };
      }
      const layout = layoutOf(layoutSpecs(init.layout));
      const createdAt = this.now();
      const meta: FederationMeta = { topologyJson: init.topologyJson, layout, config: { ...init.config }, createdAt };
      const model = await this.insertModel(tx, layout, init.initialWeights, { parent: null, cause: 'init', round: 0, jobId: null, lineage: newId() }, createdAt);
      await tx.query(
        `INSERT INTO federation (id, topology_json, layout_json, history_interval, retention, created_at, head) VALUES (1, $1, $2, $3, $4, $5, $6)`,
        [init.topologyJson, JSON.stringify(layoutSpecs(layout)), init.config.historyInterval, init.config.retention, createdAt, model.version],
      );
      return { meta, head: toModel(model), resumed: false };
    });
    this.fed = opened.meta;
    if (opened.resumed) await this.collectGarbage();
    return opened;
  }

  async meta(): Promise<FederationMeta> {
    return this.requireOpen();
  }

  async head(): Promise<ModelVersion> {
    this.requireOpen();
    return toModel(await this.headIn(this.pool));
  }

  async keepsUpdates(round: number): Promise<boolean> {
    return keepsUpdatesUnder(this.requireOpen().config, round);
  }

  // --- staging ------------------------------------------------------------------------------------------------

  async stageUpdate(roundId: string, clientId: string, update: Float32Array): Promise<void> {
    const meta = this.requireOpen();
    if (meta.config.retention === 'norms') return;
    // Registered before the first await: a commit of the round called after this call began leaves it out.
    const entry: InFlight = { current: true, commit: null };
    let byClient = this.inFlight.get(roundId);
    if (!byClient) this.inFlight.set(roundId, (byClient = new Map()));
    const previous = byClient.get(clientId);
    if (previous) previous.current = false;
    byClient.set(clientId, entry);
    let key: string;
    try {
      key = await this.writeStaging(meta.layout, meta.config.retention, roundId, clientId, update);
    } finally {
      if (byClient.get(clientId) === entry) {
        byClient.delete(clientId);
        if (byClient.size === 0 && this.inFlight.get(roundId) === byClient) this.inFlight.delete(roundId);
      }
    }
    // A commit of the round that started while this staging was in flight left it out (as the embedded store does):
    // once that commit landed, the staging belongs to no one. So does one a later staging or a discard replaced.
    const committedMeanwhile = entry.commit !== null && (await entry.commit);
    if (committedMeanwhile || (await this.roundExists(this.pool, roundId))) {
      await this.dropStagedRows(this.pool, 'blob = $1', [key]);
      throw new HistoryError(`round ${roundId} committed while the update of ${clientId} was being staged; it was not included`);
    }
    if (!entry.current) await this.dropStagedRows(this.pool, 'blob = $1', [key]);
  }

  /** Writes one staging (blob and row, replacing the client's previous staging of the round); returns its key. */
  private async writeStaging(layout: WeightLayout, encoding: BlobEncoding, roundId: string, clientId: string, update: Float32Array): Promise<string> {
    if (await this.roundExists(this.pool, roundId)) throw new HistoryError(`round ${roundId} is already committed; its updates can no longer change`);
    let encoded;
    try {
      encoded = encodeBlob(layout, update, encoding);
    } catch (e) {
      throw new HistoryError(`update of ${clientId} for round ${roundId}: ${(e as Error).message}`);
    }
    // One key per staging (a fresh nonce), so that a staging never overwrites bytes a commit may be taking; the
    // client segment picks the partition (blobPart).
    const key = `updates/${safeName(roundId)}/${safeName(clientId)}/${newId().slice(0, 10)}`;
    const now = this.now();
    await withTransaction(this.pool, async (tx) => {
      // Stagings of one client for one round take turns (staging again replaces: delete, then insert).
      await tx.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`fedunlearn.stage.${this.schema}.${JSON.stringify([roundId, clientId])}`]);
      await putBlob(tx, key, encoded.bytes, now);
      const prev = await tx.query<{ blob: string }>('DELETE FROM staged_updates WHERE round_id = $1 AND client_id = $2 RETURNING blob', [roundId, clientId]);
      await tx.query(
        `INSERT INTO staged_updates (round_id, client_id, encoding, blob, bytes, blob_sha256, job_id, staged_at)
         VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)`,
        [roundId, clientId, encoded.encoding, key, encoded.bytes.byteLength, sha256Hex(encoded.bytes), now],
      );
      await deleteBlobs(tx, prev.rows.map((r) => r.blob));
    });
    return key;
  }

  /**
   * For a commit of `roundId` about to start: the clients whose staging of it is still in flight in this process
   * (left out of the commit), and `settle`, which tells those stagings whether the commit landed.
   */
  private claimInFlight(roundId: string): { excluded: ReadonlySet<string>; settle(committed: boolean): void } {
    const byClient = this.inFlight.get(roundId);
    let settle: (committed: boolean) => void = () => {};
    const outcome = new Promise<boolean>((resolve) => (settle = resolve));
    const excluded = new Set<string>();
    for (const [clientId, entry] of byClient ?? []) {
      entry.commit = outcome;
      excluded.add(clientId);
    }
    return { excluded, settle };
  }

  async syncStaged(roundId: string): Promise<void> {
    this.requireOpen();
    // A staging is durable once its INSERT committed (synchronous_commit=on): nothing to flush, only the test hook.
    const { rowCount } = await this.pool.query('SELECT 1 FROM staged_updates WHERE round_id = $1 LIMIT 1', [roundId]);
    if (rowCount) await this.pause?.('history-write');
  }

  async discardStaged(roundId: string, clientId?: string): Promise<void> {
    this.requireNotClosed();
    // A staging still in flight removes its own row once it sees it is no longer current.
    for (const [c, entry] of this.inFlight.get(roundId) ?? []) if (clientId === undefined || c === clientId) entry.current = false;
    if (clientId === undefined) await this.dropStagedRows(this.pool, 'round_id = $1', [roundId]);
    else await this.dropStagedRows(this.pool, 'round_id = $1 AND client_id = $2', [roundId, clientId]);
  }

  /** Deletes staged rows matching `where` and their blobs (one statement each, in `q`'s transaction if any). */
  private async dropStagedRows(q: Queryable, where: string, params: unknown[]): Promise<{ rows: number; bytes: number; keys: string[] }> {
    const { rows } = await q.query<{ blob: string; bytes: number }>(`DELETE FROM staged_updates WHERE ${where} RETURNING blob, bytes`, params);
    await deleteBlobs(q, rows.map((r) => r.blob));
    return { rows: rows.length, bytes: rows.reduce((s, r) => s + r.bytes, 0), keys: rows.map((r) => r.blob) };
  }

  // --- commits ------------------------------------------------------------------------------------------------

  async commitRound(input: {
    round: number;
    roundId: string;
    modelBefore: string;
    weights: Float32Array;
    participants: ParticipantInput[];
    missing?: MissingClient[];
    metrics: Record<string, number>;
    startedAt: number;
  }): Promise<ModelVersion> {
    const meta = this.requireOpen();
    const participants = checkParticipants(input.participants, meta.layout.specs.length, `round ${input.round}`);
    const missing = checkMissing(input.missing ?? [], participants, `round ${input.round}`);
    const keep = keepsUpdatesUnder(meta.config, input.round);
    const inFlight = this.claimInFlight(input.roundId);
    let committed = false;
    try {
      const row = await this.commitRoundRows(input, participants, missing, keep, inFlight.excluded);
      committed = true;
      return toModel(row);
    } finally {
      inFlight.settle(committed);
    }
  }

  private async commitRoundRows(
    input: Parameters<HistoryStore['commitRound']>[0],
    participants: CheckedParticipant[],
    missing: MissingClient[],
    keep: boolean,
    excluded: ReadonlySet<string>,
  ): Promise<ModelRow> {
    const meta = this.requireOpen();
    return withTransaction(this.pool, async (tx) => {
      await this.fence(tx);
      const head = await this.lockHead(tx);
      checkRoundOrder(toModel(head), input);
      await this.checkNewRoundId(tx, input.roundId);
      const closedAt = this.now();
      const model = await this.insertModel(tx, meta.layout, input.weights, { parent: head.version, cause: 'round', round: input.round, jobId: null, lineage: head.lineage }, closedAt);
      await this.insertRound(
        tx,
        { ...input, missing, lineage: head.lineage, modelBefore: head.version, modelAfter: model.version, updatesStored: keep, closedAt },
        participants,
        keep,
        excluded,
      );
      await tx.query('UPDATE federation SET head = $1 WHERE id = 1', [model.version]);
      return model;
    });
  }

  async commitUnlearning(input: CommitUnlearningInput): Promise<ModelVersion> {
    const meta = this.requireOpen();
    const checked = await this.checkUnlearning(input, meta.layout);
    const row = await withTransaction(this.pool, async (tx) => {
      await this.fence(tx);
      return this.insertUnlearning(tx, input, checked);
    });
    return toModel(row);
  }

  async finishUnlearning(input: FinishUnlearningInput): Promise<{ model: ModelVersion; purged: PurgeSummary; job: JobRecord }> {
    const meta = this.requireOpen();
    if (!(await this.jobRow(this.pool, input.jobId))) throw new HistoryError(`unknown job ${input.jobId}`);
    const checked = await this.checkUnlearning(input, meta.layout);
    const ids = [...new Set(input.purge.clientIds)];
    // One transaction: the new head, the purge and tombstones, and the job's end. A crash leaves all of it or none,
    // so a restarted coordinator either resumes the job (nothing of it committed) or finds it done (all of it).
    const out = await withTransaction(this.pool, async (tx) => {
      await this.fence(tx);
      const row = await this.insertUnlearning(tx, input, checked);
      const summary = await this.purgeRows(tx, ids, input.purge.eraseModels, this.now());
      const purged: PurgeSummary = { ...summary, complete: false };
      const patch = input.finish(toModel(row), purged);
      const job = await this.writeJob(tx, input.jobId, { ...patch, checkpoint: null });
      await tx.query('DELETE FROM job_steps WHERE job_id = $1', [input.jobId]);
      return { model: toModel(row), purged, job };
    });
    await this.pause?.('job-purge');
    return { ...out, purged: { ...out.purged, complete: await this.completePurge() } };
  }

  /** The shared rules (store-rules.ts), and the sensitivity each participant may carry. */
  private async checkUnlearning(input: CommitUnlearningInput, layout: WeightLayout): Promise<CheckedUnlearning & { participants: CheckedParticipant[][] }> {
    const checked = await checkUnlearning(input, layout.specs.length, (roundId) => this.roundExists(this.pool, roundId));
    return { ...checked, participants: checked.participants.map((ps, i) => withSensitivity(ps, input.rounds[i]!.participants, `unlearning job ${input.jobId}, round ${input.rounds[i]!.round}`)) };
  }

  /** The rows and blobs of an unlearning commit, inside the caller's transaction (the rules were checked before it;
   *  what depends on the rows is checked again here, under the head's lock). */
  private async insertUnlearning(tx: pg.PoolClient, input: CommitUnlearningInput, checked: CheckedUnlearning & { participants: CheckedParticipant[][] }): Promise<ModelRow> {
    const meta = this.requireOpen();
    const oldHead = await this.lockHead(tx);
    for (const r of input.rounds) await this.checkNewRoundId(tx, r.roundId);
    const lineage = newId();
    const now = this.now();
    const created = new Map<string, ModelRow>();
    const { resolved, result } = await resolveLineage(input, checked.intermediates, toModel(oldHead), {
      requireModel: (version, ctx) => this.requireModel(tx, version, ctx),
      create: async (weights, parent, round) => {
        const m = await this.insertModel(tx, meta.layout, weights, { cause: 'unlearning', jobId: input.jobId, lineage, parent, round }, now);
        created.set(m.version, m);
        return m.version;
      },
    });
    const keep = meta.config.retention !== 'norms';
    for (const [i, r] of input.rounds.entries()) {
      const { before, after } = resolved[i]!;
      await this.insertRound(tx, { ...r, missing: checked.missing[i]!, lineage, modelBefore: before, modelAfter: after, updatesStored: keep }, checked.participants[i]!, keep);
    }
    // Stagings the job recorded but no replayed round listed are garbage now.
    await this.dropStagedRows(tx, 'job_id = $1', [input.jobId]);
    await tx.query('UPDATE federation SET head = $1 WHERE id = 1', [result]);
    return created.get(result)!;
  }

  /** A round's rows; its stagings of listed participants (but `excluded`, still in flight) become its updates. */
  private async insertRound(tx: pg.PoolClient, r: RoundInput, participants: CheckedParticipant[], keep: boolean, excluded: ReadonlySet<string> = new Set()): Promise<void> {
    await tx.query(
      `INSERT INTO rounds (round_id, lineage, round, model_before, model_after, updates_stored, metrics_json, missing_json, started_at, closed_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
      [r.roundId, r.lineage, r.round, r.modelBefore, r.modelAfter, r.updatesStored, metricsToJson(r.metrics), JSON.stringify(r.missing), r.startedAt, r.closedAt],
    );
    if (participants.length > 0) {
      // One statement for the whole list (a round of 1,000 clients is one round trip, not 1,000).
      await tx.query(
        `INSERT INTO participants (round_id, client_id, ord, num_examples, norms, metrics_json, sensitivity)
         SELECT $1, u.client_id, u.ord - 1, u.num_examples, u.norms, u.metrics_json, u.sensitivity
         FROM unnest($2::text[], $3::integer[], $4::bytea[], $5::text[], $6::double precision[]) WITH ORDINALITY
              AS u(client_id, num_examples, norms, metrics_json, sensitivity, ord)`,
        [
          r.roundId,
          participants.map((p) => p.clientId),
          participants.map((p) => p.numExamples),
          participants.map((p) => normsToBytes(p.norms)),
          participants.map((p) => (p.metrics === undefined ? null : metricsToJson(p.metrics))),
          participants.map((p) => p.sensitivity ?? null),
        ],
      );
    }
    // The round's stagings: the listed participants' become its updates (when the policy keeps them), the rest go.
    const taken = participants.map((p) => p.clientId).filter((c) => !excluded.has(c));
    if (keep && taken.length > 0) {
      await tx.query(
        `INSERT INTO updates (round_id, client_id, encoding, blob, bytes, blob_sha256)
         SELECT round_id, client_id, encoding, blob, bytes, blob_sha256 FROM staged_updates
         WHERE round_id = $1 AND client_id = ANY($2::text[])`,
        [r.roundId, taken],
      );
      await tx.query('DELETE FROM staged_updates WHERE round_id = $1 AND client_id = ANY($2::text[])', [r.roundId, taken]);
    }
    await this.dropStagedRows(tx, 'round_id = $1', [r.roundId]);
  }

  /** Validates weights, writes their blob and the model row in `tx`. */
  private async insertModel(
    tx: pg.PoolClient,
    layout: WeightLayout,
    weights: Float32Array,
    m: { parent: string | null; cause: ModelCause; round: number; jobId: string | null; lineage: string },
    createdAt: number,
  ): Promise<ModelRow> {
    const { row, bytes } = modelRowOf(layout, weights, m, createdAt, (version) => `models/${safeName(version)}`);
    await putBlob(tx, row.blob, bytes, createdAt);
    await tx.query(
      `INSERT INTO models (version, parent, cause, round, job_id, lineage, sha256, blob, bytes, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
      [row.version, row.parent, row.cause, row.round, row.job_id, row.lineage, row.sha256, row.blob, row.bytes, row.created_at],
    );
    return row;
  }

  // --- reads --------------------------------------------------------------------------------------------------

  async listRounds(opts: { lineage?: string; from?: number; to?: number } = {}): Promise<RoundRecord[]> {
    this.requireOpen();
    const lineage = opts.lineage ?? (await this.headIn(this.pool)).lineage;
    const from = opts.from ?? 1;
    const to = Math.min(opts.to ?? 2 ** 31 - 1, 2 ** 31 - 1);
    // One snapshot for both reads: a purge between them must not leave participants of rounds not returned.
    return withTransaction(
      this.pool,
      async (tx) => {
        const ps = await tx.query<ParticipantRow>(
          `SELECT p.round_id, p.client_id, p.num_examples, p.norms, p.metrics_json, p.sensitivity, (u.round_id IS NOT NULL) AS has_update
           FROM participants p JOIN rounds r ON r.round_id = p.round_id
           LEFT JOIN updates u ON u.round_id = p.round_id AND u.client_id = p.client_id
           WHERE r.lineage = $1 AND r.round BETWEEN $2 AND $3 ORDER BY r.round, p.ord`,
          [lineage, from, to],
        );
        const byRound = new Map<string, Participant[]>();
        for (const p of ps.rows) {
          let list = byRound.get(p.round_id);
          if (!list) byRound.set(p.round_id, (list = []));
          const participant: Participant & { sensitivity?: number } = {
            clientId: p.client_id,
            numExamples: p.num_examples,
            norms: normsFromBytes(p.norms),
            hasUpdate: p.has_update,
          };
          if (p.metrics_json !== null) participant.metrics = metricsFromJson(p.metrics_json);
          if (p.sensitivity !== null) participant.sensitivity = p.sensitivity;
          list.push(participant);
        }
        const rs = await tx.query<RoundRow>('SELECT * FROM rounds WHERE lineage = $1 AND round BETWEEN $2 AND $3 ORDER BY round', [lineage, from, to]);
        return rs.rows.map((r) => ({
          round: r.round,
          roundId: r.round_id,
          lineage: r.lineage,
          modelBefore: r.model_before ?? '',
          modelAfter: r.model_after ?? '',
          participants: byRound.get(r.round_id) ?? [],
          missing: JSON.parse(r.missing_json) as MissingClient[],
          updatesStored: r.updates_stored,
          metrics: metricsFromJson(r.metrics_json),
          startedAt: r.started_at,
          closedAt: r.closed_at,
        }));
      },
      { isolation: 'repeatable read' },
    );
  }

  async getRound(round: number, lineage?: string): Promise<RoundRecord | null> {
    this.requireOpen();
    const l = lineage ?? (await this.headIn(this.pool)).lineage;
    return (await this.listRounds({ lineage: l, from: round, to: round }))[0] ?? null;
  }

  async readUpdate(roundId: string, clientId: string): Promise<Float32Array | null> {
    const meta = this.requireOpen();
    const { rows } = await this.pool.query<StagedRow>('SELECT * FROM updates WHERE round_id = $1 AND client_id = $2', [roundId, clientId]);
    const row = rows[0];
    if (!row) return null;
    const data = await getBlob(this.pool, row.blob);
    if (!data) throw new HistoryError(`update of ${clientId} in round ${roundId}: cannot read its blob ${row.blob}: it is missing`);
    if (sha256Hex(data) !== row.blob_sha256) throw new HistoryError(`update of ${clientId} in round ${roundId} is corrupted (sha256 mismatch in ${row.blob})`);
    try {
      return decodeBlob(meta.layout, data).values;
    } catch (e) {
      throw new HistoryError(`update of ${clientId} in round ${roundId}: ${(e as Error).message}`);
    }
  }

  async listModels(opts: { lineage?: string } = {}): Promise<ModelVersion[]> {
    this.requireNotClosed();
    const { rows } =
      opts.lineage === undefined
        ? await this.pool.query<ModelRow>('SELECT * FROM models ORDER BY seq')
        : await this.pool.query<ModelRow>('SELECT * FROM models WHERE lineage = $1 ORDER BY seq', [opts.lineage]);
    return rows.map(toModel);
  }

  async getModel(version: string): Promise<ModelVersion | null> {
    this.requireNotClosed();
    const row = await this.modelRow(this.pool, version);
    return row ? toModel(row) : null;
  }

  async lineagePosition(lineage: string): Promise<number> {
    this.requireNotClosed();
    const { rows } = await this.pool.query<{ n: number | null }>(
      `WITH firsts AS (SELECT lineage, MIN(seq) AS first FROM models GROUP BY lineage)
       SELECT (SELECT COUNT(*)::integer FROM firsts f WHERE f.first < t.first) AS n FROM firsts t WHERE t.lineage = $1`,
      [lineage],
    );
    const n = rows[0]?.n;
    if (n === null || n === undefined) throw new HistoryError(`unknown lineage ${lineage}`);
    return n;
  }

  async lineageCount(): Promise<number> {
    this.requireNotClosed();
    const { rows } = await this.pool.query<{ n: number }>('SELECT COUNT(DISTINCT lineage)::integer AS n FROM models');
    return rows[0]!.n;
  }

  async readModel(version: string): Promise<Float32Array> {
    const meta = this.requireOpen();
    const row = await this.modelRow(this.pool, version);
    if (!row) throw new HistoryError(`unknown model version ${version}`);
    if (row.erased_at !== null) throw new ModelErasedError(version, row.erased_at);
    if (row.pruned_at !== null) throw new ModelPrunedError(version, row.pruned_at);
    const bytes = await getBlob(this.pool, row.blob);
    if (!bytes) throw new HistoryError(`model ${version}: cannot read its blob ${row.blob}: it is missing`);
    let payload: Uint8Array;
    try {
      if (readBlobHeader(meta.layout, bytes).encoding !== 'fp32') throw new BlobFormatError('model blob is not fp32');
      payload = blobPayload(meta.layout, bytes);
    } catch (e) {
      throw new HistoryError(`model ${version} is corrupted: ${(e as Error).message}`);
    }
    if (sha256Hex(payload) !== row.sha256) throw new HistoryError(`model ${version} is corrupted (sha256 mismatch in ${row.blob})`);
    return decodeBlob(meta.layout, bytes).values;
  }

  // --- purge --------------------------------------------------------------------------------------------------

  async purgeClients(clientIds: string[], opts: PurgeOptions = {}): Promise<PurgeSummary> {
    this.requireNotClosed();
    const ids = [...new Set(clientIds)];
    const summary = await withTransaction(this.pool, (tx) => this.purgeRows(tx, ids, opts.eraseModels ?? false, this.now()));
    return { ...summary, complete: await this.completePurge() };
  }

  /**
   * Rewrites what purges recorded in purge_pending (VACUUM FULL: new relation files, TOAST included, without the dead
   * rows; the old files are truncated and unlinked): the blob partitions that held the forgotten clients' bytes and
   * the tables of their rows, so that no byte of a purged row is left in them. Other partitions are not touched, so
   * the cost follows the forgotten clients' share of the history, not its size. True when nothing is left to do.
   * False, after at most purgeLockTimeoutMs, when another session holds a lock on one of the tables or a snapshot
   * reaching back to the purge (it keeps the deleted rows alive, and VACUUM would copy them): call again later, from
   * any replica (what is pending is a table, purge_pending).
   */
  async completePurge(): Promise<boolean> {
    this.requireNotClosed();
    const pending = await this.pool.query<{ seq: number; relname: string; xid: string }>('SELECT seq, relname, xid::text AS xid FROM purge_pending ORDER BY seq');
    if (pending.rows.length === 0) return true;
    const upTo = pending.rows[pending.rows.length - 1]!.seq;
    const rels = [...new Set(pending.rows.map((r) => r.relname))];
    for (const r of rels) if (!RELNAME.test(r)) throw new HistoryError(`purge_pending names ${JSON.stringify(r)}, not a table of this store`);
    // The newest purge to finish: the vacuum drops its deleted rows only if no snapshot reaches back to its transaction.
    const purgeXid = pending.rows.reduce((m, r) => (BigInt(r.xid) > m ? BigInt(r.xid) : m), 0n);
    const client = await this.pool.connect();
    // A connection failing while checked out must not be an unhandled 'error' (pg-pool listens only while idle).
    let broken = false;
    const onError = () => {
      broken = true;
    };
    client.on('error', onError);
    try {
      // A session (or a replication slot, or a prepared transaction) whose oldest snapshot reaches back to the purge
      // makes VACUUM keep the deleted rows as "recently dead". Checked before the vacuum: no snapshot that old can
      // start afterwards. Short transactions end within the wait; a backup or report holding one makes this false.
      const deadline = Date.now() + this.purgeLockTimeoutMs;
      while (await this.snapshotsReachBack(client, purgeXid)) {
        if (Date.now() >= deadline) return false;
        await new Promise((r) => setTimeout(r, 50));
      }
      await client.query(`SET lock_timeout = ${Math.max(1, Math.floor(this.purgeLockTimeoutMs))}`);
      try {
        await client.query(`VACUUM (FULL) ${rels.join(', ')}`);
      } catch (e) {
        if ((e as { code?: string }).code === '55P03') return false; // lock_not_available: a reader holds a table
        throw e;
      } finally {
        await client.query('RESET lock_timeout');
      }
      // Purges committed while this ran added rows after upTo: they are the next call's.
      await client.query('DELETE FROM purge_pending WHERE seq <= $1', [upTo]);
      return true;
    } finally {
      client.off('error', onError);
      client.release(broken);
    }
  }

  /** Whether any other session of this database, replication slot or prepared transaction may still see rows that
   *  transaction `xid` deleted (its xmin or own xid is not after it). */
  private async snapshotsReachBack(client: pg.PoolClient, xid: bigint): Promise<boolean> {
    const { rows } = await client.query<{ n: number }>(
      `WITH p AS (SELECT (($1::bigint % 4294967296)::text)::xid AS x)
       SELECT (SELECT COUNT(*) FROM pg_stat_activity, p
                WHERE datname = current_database() AND pid <> pg_backend_pid()
                  AND ((backend_xmin IS NOT NULL AND age(backend_xmin) >= age(p.x)) OR (backend_xid IS NOT NULL AND age(backend_xid) >= age(p.x))))
            + (SELECT COUNT(*) FROM pg_replication_slots, p
                WHERE (database IS NULL OR database = current_database()) AND xmin IS NOT NULL AND age(xmin) >= age(p.x))
            + (SELECT COUNT(*) FROM pg_prepared_xacts, p WHERE database = current_database() AND age(transaction) >= age(p.x)) AS n`,
      [xid.toString()],
    );
    return Number(rows[0]!.n) > 0;
  }

  /** Deletes the clients' rows and blobs and tombstones them, in `tx`. */
  private async purgeRows(tx: pg.PoolClient, ids: string[], eraseModels: boolean, now: number): Promise<Omit<PurgeSummary, 'complete'>> {
    const modelsErased: string[] = [];
    let modelBytesDeleted = 0;
    if (eraseModels) {
      // Before the participant rows go: they are what says which rounds, hence which models, a client shaped.
      const shaped = await this.modelsShapedBy(tx, ids);
      for (const m of shaped) {
        await tx.query('UPDATE models SET erased_at = $1 WHERE version = $2', [now, m.version]);
        modelsErased.push(m.version);
        if (m.pruned_at === null) modelBytesDeleted += m.bytes;
      }
      await deleteBlobs(tx, shaped.map((m) => m.blob));
    }
    const upd = await tx.query<{ blob: string; bytes: number }>('DELETE FROM updates WHERE client_id = ANY($1::text[]) RETURNING blob, bytes', [ids]);
    await deleteBlobs(tx, upd.rows.map((r) => r.blob));
    const staged = await this.dropStagedRows(tx, 'client_id = ANY($1::text[])', [ids]);
    const partRows = await tx.query('DELETE FROM participants WHERE client_id = ANY($1::text[])', [ids]);
    for (const id of ids) {
      // A missing-list entry names the client too; the round keeps its other absentees only.
      const rs = await tx.query<{ round_id: string; missing_json: string }>('SELECT round_id, missing_json FROM rounds WHERE strpos(missing_json, $1) > 0', [
        JSON.stringify(id),
      ]);
      for (const r of rs.rows) {
        const kept = (JSON.parse(r.missing_json) as MissingClient[]).filter((m) => m.clientId !== id);
        await tx.query('UPDATE rounds SET missing_json = $1 WHERE round_id = $2', [JSON.stringify(kept), r.round_id]);
      }
    }
    // What completePurge must rewrite: the partitions that held the deleted blobs, and the tables of the rows.
    const parts = new Set([...upd.rows.map((r) => r.blob), ...staged.keys].map(blobPart));
    if (eraseModels && modelsErased.length > 0) parts.add(0);
    const rels = [...[...parts].sort((a, b) => a - b).map(blobPartition), ...PURGED_TABLES];
    await tx.query('INSERT INTO purge_pending (relname, since, xid) SELECT r, $2, pg_current_xact_id() FROM unnest($1::text[]) AS r', [rels, now]);
    if (ids.length > 0) {
      await tx.query(
        `INSERT INTO clients (client_id, secret_hash, num_examples, first_seen, last_seen, forgotten, revoked)
         SELECT id, NULL, 0, $2, $2, true, false FROM unnest($1::text[]) AS id
         ON CONFLICT (client_id) DO UPDATE SET secret_hash = NULL, num_examples = 0, forgotten = true`,
        [ids, now],
      );
    }
    return {
      clientIds: ids,
      updatesDeleted: upd.rowCount ?? 0,
      bytesDeleted: upd.rows.reduce((s, r) => s + r.bytes, 0) + staged.bytes,
      participantRowsDeleted: partRows.rowCount ?? 0,
      modelsErased,
      modelBytesDeleted,
    };
  }

  /** Kept model versions any of these clients contributed to: in each lineage, from the first round one of them took
   *  part in. Refuses when the head is among them (unlearn first). */
  private async modelsShapedBy(tx: pg.PoolClient, ids: string[]): Promise<ModelRow[]> {
    const head = (await tx.query<{ head: string }>('SELECT head FROM federation WHERE id = 1')).rows[0]?.head;
    const { rows } = await tx.query<ModelRow>(
      `WITH firsts AS (
         SELECT r.lineage, MIN(r.round) AS first FROM participants p JOIN rounds r ON r.round_id = p.round_id
         WHERE p.client_id = ANY($1::text[]) GROUP BY r.lineage)
       SELECT m.* FROM models m JOIN firsts f ON f.lineage = m.lineage
       WHERE m.round >= f.first AND m.erased_at IS NULL ORDER BY m.seq`,
      [ids],
    );
    for (const m of rows) {
      if (m.version === head) throw new HistoryError(`the head model ${head} holds the contribution of ${ids.join(', ')}: unlearn them before erasing it`);
    }
    return rows;
  }

  async stats(): Promise<HistoryStats> {
    this.requireNotClosed();
    const m = (
      await this.pool.query<{ n: number; bytes: number | null; erased: number; pruned: number }>(
        `SELECT COUNT(*)::integer AS n, SUM(CASE WHEN erased_at IS NULL AND pruned_at IS NULL THEN bytes END)::bigint AS bytes,
                COUNT(erased_at)::integer AS erased, COUNT(CASE WHEN erased_at IS NULL THEN pruned_at END)::integer AS pruned FROM models`,
      )
    ).rows[0]!;
    const updateBytesByDtype: Record<string, number> = {};
    let updateBytes = 0;
    let updates = 0;
    const us = await this.pool.query<{ encoding: string; n: number; bytes: number }>(
      'SELECT encoding, COUNT(*)::integer AS n, SUM(bytes)::bigint AS bytes FROM updates GROUP BY encoding',
    );
    for (const u of us.rows) {
      updateBytesByDtype[u.encoding] = u.bytes;
      updateBytes += u.bytes;
      updates += u.n;
    }
    const rounds = (await this.pool.query<{ n: number }>('SELECT COUNT(*)::integer AS n FROM rounds')).rows[0]!.n;
    return { modelBytes: m.bytes ?? 0, updateBytes, updateBytesByDtype, updates, rounds, models: m.n, modelsErased: m.erased, modelsPruned: m.pruned };
  }

  // --- model retention ------------------------------------------------------------------------------------------

  async pruneModels(versions: string[]): Promise<{ pruned: string[]; bytesDeleted: number }> {
    this.requireNotClosed();
    return withTransaction(this.pool, async (tx) => {
      await this.fence(tx);
      const head = (await tx.query<{ head: string }>('SELECT head FROM federation WHERE id = 1 FOR UPDATE')).rows[0]?.head;
      if (head !== undefined && versions.includes(head)) throw new HistoryError(`the head model ${head} cannot be pruned`);
      const now = this.now();
      const pruned: string[] = [];
      const keys: string[] = [];
      for (const v of new Set(versions)) {
        const row = await this.modelRow(tx, v);
        if (!row) throw new HistoryError(`cannot prune unknown model version ${v}`);
        const r = await tx.query('UPDATE models SET pruned_at = $1 WHERE version = $2 AND pruned_at IS NULL AND erased_at IS NULL', [now, v]);
        if (!r.rowCount) continue;
        pruned.push(v);
        keys.push(row.blob);
      }
      return { pruned, bytesDeleted: await deleteBlobs(tx, keys) };
    });
  }

  // --- jobs ---------------------------------------------------------------------------------------------------

  async createJob(job: Omit<JobRecord, 'createdAt' | 'updatedAt'>): Promise<JobRecord> {
    this.requireNotClosed();
    const t = this.now();
    const { rows } = await this.pool.query<JobRow>(
      `INSERT INTO jobs (job_id, kind, state, client_ids_json, requested_by, method, params_json, progress_json, checkpoint_json, report_json, error, created_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) ON CONFLICT (job_id) DO NOTHING RETURNING *`,
      [
        job.jobId,
        job.kind,
        job.state,
        JSON.stringify(job.clientIds),
        job.requestedBy,
        job.method,
        JSON.stringify(job.params),
        JSON.stringify(job.progress),
        job.checkpoint === null ? null : JSON.stringify(job.checkpoint),
        job.report === null ? null : JSON.stringify(job.report),
        job.error,
        t,
      ],
    );
    if (!rows[0]) throw new HistoryError(`job ${job.jobId} already exists`);
    return toJob(rows[0]);
  }

  async updateJob(jobId: string, patch: Partial<Pick<JobRecord, 'state' | 'progress' | 'checkpoint' | 'report' | 'error'>>): Promise<JobRecord> {
    this.requireNotClosed();
    return withTransaction(this.pool, (tx) => this.writeJob(tx, jobId, patch));
  }

  private async writeJob(tx: pg.PoolClient, jobId: string, patch: Partial<Pick<JobRecord, 'state' | 'progress' | 'checkpoint' | 'report' | 'error'>>): Promise<JobRecord> {
    const row = (await tx.query<JobRow>('SELECT * FROM jobs WHERE job_id = $1 FOR UPDATE', [jobId])).rows[0];
    if (!row) throw new HistoryError(`unknown job ${jobId}`);
    const next = { ...toJob(row), ...patch };
    const { rows } = await tx.query<JobRow>(
      `UPDATE jobs SET state = $2, progress_json = $3, checkpoint_json = $4, report_json = $5, error = $6, updated_at = $7 WHERE job_id = $1 RETURNING *`,
      [
        jobId,
        next.state,
        JSON.stringify(next.progress),
        next.checkpoint === null || next.checkpoint === undefined ? null : JSON.stringify(next.checkpoint),
        next.report === null || next.report === undefined ? null : JSON.stringify(next.report),
        next.error ?? null,
        this.now(),
      ],
    );
    return toJob(rows[0]!);
  }

  async appendJobStep(jobId: string, step: JobStep, checkpoint: unknown, roundId?: string): Promise<void> {
    this.requireNotClosed();
    checkJobStep(jobId, step.step);
    if (!(await this.jobRow(this.pool, jobId))) throw new HistoryError(`unknown job ${jobId}`);
    if (roundId !== undefined) await this.syncStaged(roundId);
    await withTransaction(this.pool, async (tx) => {
      await this.fence(tx);
      const r = await tx.query('UPDATE jobs SET checkpoint_json = $1, updated_at = $2 WHERE job_id = $3', [JSON.stringify(checkpoint), this.now(), jobId]);
      if (!r.rowCount) throw new HistoryError(`unknown job ${jobId}`);
      await tx.query(
        'INSERT INTO job_steps (job_id, step, data_json) VALUES ($1, $2, $3) ON CONFLICT (job_id, step) DO UPDATE SET data_json = EXCLUDED.data_json',
        [jobId, step.step, JSON.stringify(step.data)],
      );
      // The step's stagings now belong to the job: open() keeps them, its commit stores them, clearJobSteps drops them.
      if (roundId !== undefined) await tx.query('UPDATE staged_updates SET job_id = $1 WHERE round_id = $2', [jobId, roundId]);
    });
  }

  async jobSteps(jobId: string): Promise<JobStep[]> {
    this.requireNotClosed();
    const { rows } = await this.pool.query<{ step: number; data_json: string }>('SELECT step, data_json FROM job_steps WHERE job_id = $1 ORDER BY step', [jobId]);
    return rows.map((r) => ({ step: r.step, data: JSON.parse(r.data_json) as unknown }));
  }

  async clearJobSteps(jobId: string): Promise<void> {
    this.requireNotClosed();
    await withTransaction(this.pool, async (tx) => {
      await tx.query('DELETE FROM job_steps WHERE job_id = $1', [jobId]);
      await this.dropStagedRows(tx, 'job_id = $1', [jobId]);
    });
  }

  async getJob(jobId: string): Promise<JobRecord | null> {
    this.requireNotClosed();
    const row = await this.jobRow(this.pool, jobId);
    return row ? toJob(row) : null;
  }

  async listJobs(opts: { state?: JobRecord['state'] } = {}): Promise<JobRecord[]> {
    this.requireNotClosed();
    const { rows } =
      opts.state === undefined
        ? await this.pool.query<JobRow>('SELECT * FROM jobs ORDER BY seq')
        : await this.pool.query<JobRow>('SELECT * FROM jobs WHERE state = $1 ORDER BY seq', [opts.state]);
    return rows.map(toJob);
  }

  // --- clients ------------------------------------------------------------------------------------------------

  async upsertClient(c: { clientId: string; secretHash?: string | null; numExamples?: number; seenAt: number; forgotten?: boolean; revoked?: boolean }): Promise<ClientRecord> {
    this.requireNotClosed();
    // One statement, so that two replicas seeing the same client at once cannot lose either sighting. first_seen 0 is
    // "never seen" (a credential issued before the client connected): any real sighting replaces it.
    const { rows } = await this.pool.query<ClientRow>(
      `INSERT INTO clients AS c (client_id, secret_hash, num_examples, first_seen, last_seen, forgotten, revoked)
       VALUES ($1, $2, COALESCE($3, 0), $4, $4, COALESCE($5, false), COALESCE($6, false))
       ON CONFLICT (client_id) DO UPDATE SET
         secret_hash  = CASE WHEN $7 THEN EXCLUDED.secret_hash ELSE c.secret_hash END,
         num_examples = COALESCE($3, c.num_examples),
         first_seen   = CASE WHEN c.first_seen = 0 THEN $4 WHEN $4 > 0 THEN LEAST(c.first_seen, $4) ELSE c.first_seen END,
         last_seen    = GREATEST(c.last_seen, $4),
         forgotten    = COALESCE($5, c.forgotten),
         revoked      = COALESCE($6, c.revoked)
       RETURNING *`,
      [c.clientId, c.secretHash ?? null, c.numExamples ?? null, c.seenAt, c.forgotten ?? null, c.revoked ?? null, c.secretHash !== undefined],
    );
    return toClient(rows[0]!);
  }

  async getClient(clientId: string): Promise<ClientRecord | null> {
    this.requireNotClosed();
    const { rows } = await this.pool.query<ClientRow>('SELECT * FROM clients WHERE client_id = $1', [clientId]);
    return rows[0] ? toClient(rows[0]) : null;
  }

  async listClients(): Promise<ClientRecord[]> {
    this.requireNotClosed();
    const { rows } = await this.pool.query<ClientRow>('SELECT * FROM clients ORDER BY client_id COLLATE "C"');
    return rows.map(toClient);
  }

  /** Read from the table every time (no cache): a tombstone another replica committed holds here at once. */
  async isForgotten(clientId: string): Promise<boolean> {
    this.requireNotClosed();
    const { rows } = await this.pool.query<{ forgotten: boolean }>('SELECT forgotten FROM clients WHERE client_id = $1', [clientId]);
    return rows[0]?.forgotten ?? false;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Stagings stay as rows: the next open's garbage collection (or the replica that commits the round) sees them.
    await this.blobs.close();
    await this.pool.end();
  }

  // --- internals ----------------------------------------------------------------------------------------------

  private requireNotClosed(): void {
    if (this.closed) throw new HistoryError('the history store is closed');
  }

  private requireOpen(): FederationMeta {
    this.requireNotClosed();
    if (!this.fed) throw new HistoryError('the history store is not open: call open() first');
    return this.fed;
  }

  private async headIn(q: Queryable): Promise<ModelRow> {
    const { rows } = await q.query<ModelRow>('SELECT m.* FROM federation f JOIN models m ON m.version = f.head WHERE f.id = 1');
    if (!rows[0]) throw new HistoryError(`schema ${this.schema} holds no federation`);
    return rows[0];
  }

  /** The head, with the federation row locked until the transaction ends: commits that move the head serialise here. */
  private async lockHead(tx: pg.PoolClient): Promise<ModelRow> {
    await tx.query('SELECT 1 FROM federation WHERE id = 1 FOR UPDATE');
    return this.headIn(tx);
  }

  private async modelRow(q: Queryable, version: string): Promise<ModelRow | undefined> {
    return (await q.query<ModelRow>('SELECT * FROM models WHERE version = $1', [version])).rows[0];
  }

  private async jobRow(q: Queryable, jobId: string): Promise<JobRow | undefined> {
    return (await q.query<JobRow>('SELECT * FROM jobs WHERE job_id = $1', [jobId])).rows[0];
  }

  private async roundExists(q: Queryable, roundId: string): Promise<boolean> {
    return ((await q.query('SELECT 1 FROM rounds WHERE round_id = $1', [roundId])).rowCount ?? 0) > 0;
  }

  private async requireModel(q: Queryable, version: string, ctx: string): Promise<void> {
    if (!(await this.modelRow(q, version))) throw new HistoryError(`${ctx}: unknown model version ${version}`);
  }

  private async checkNewRoundId(q: Queryable, roundId: string): Promise<void> {
    checkNewRoundId(roundId, typeof roundId === 'string' && roundId !== '' && (await this.roundExists(q, roundId)));
  }

  /**
   * Drops what no committed row will ever refer to: stagings of rounds that never committed and that no job recorded
   * (older than stagingGraceMs), and update blobs no row names. Blobs under other prefixes (job checkpoints the engine
   * keeps by key) are not the history's to collect.
   */
  private async collectGarbage(): Promise<void> {
    const cutoff = this.now() - this.stagingGraceMs;
    const dropped = await withTransaction(this.pool, async (tx) => {
      const staged = await this.dropStagedRows(tx, 'job_id IS NULL AND staged_at <= $1', [cutoff]);
      const orphans = await tx.query<{ key: string }>(
        `DELETE FROM blobs b WHERE b.part >= 1 AND b.created_at <= $1
           AND NOT EXISTS (SELECT 1 FROM updates u WHERE u.blob = b.key)
           AND NOT EXISTS (SELECT 1 FROM staged_updates s WHERE s.blob = b.key)
         RETURNING key`,
        [cutoff],
      );
      return { staged: staged.rows, orphans: orphans.rowCount ?? 0 };
    });
    if (dropped.staged > 0 || dropped.orphans > 0) {
      this.log?.info({ staged: dropped.staged, orphans: dropped.orphans, schema: this.schema }, 'history garbage collection: dropped stagings of rounds that never committed');
    }
  }
}

// --- rules and encodings ----------------------------------------------------------------------------------------

/** A participant as checked by the shared rules, with the optional SIFU sensitivity (a finite number >= 0). */
type CheckedParticipant = RuleParticipant & { sensitivity?: number };

function checkParticipants(ps: ParticipantInput[], layers: number, ctx: string): CheckedParticipant[] {
  return withSensitivity(checkParticipantsRule(ps, layers, ctx), ps, ctx);
}

/** Adds each input's sensitivity, when given, to its checked participant (HistoryError when it is not a finite
 *  number >= 0). */
function withSensitivity(checked: RuleParticipant[], input: ParticipantInput[], ctx: string): CheckedParticipant[] {
  return checked.map((c, i) => {
    const sensitivity = (input[i] as ParticipantInput & { sensitivity?: unknown }).sensitivity;
    if (sensitivity === undefined) return c;
    if (typeof sensitivity !== 'number' || !Number.isFinite(sensitivity) || sensitivity < 0) {
      throw new HistoryError(`${ctx}: client ${c.clientId} has sensitivity ${String(sensitivity)}, not a finite number >= 0`);
    }
    return { ...c, sensitivity };
  });
}

