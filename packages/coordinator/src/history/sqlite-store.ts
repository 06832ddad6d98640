import * as fs from 'node:fs';
import * as path from 'node:path';
import Database from 'better-sqlite3';
import { newId } from '../ids.js';
import { layoutOf, type WeightLayout } from '@fedunlearn/protocol';
import {
  BlobFormatError,
  blobPayload,
  decodeBlob,
  encodeBlob,
  ensureDirSync,
  fsyncPathSync,
  kernelSync,
  readBlobHeader,
  TEMP_MARK,
  sha256Hex,
  writeFileDurableSync,
  type BlobEncoding,
  type DiskSync,
} from './blob-files.js';
import type { Logger } from '../logger.js';
import { behindMark, HistoryLossError, readHighWaterMark, writeHighWaterMark } from './high-water-mark.js';
import { migrate } from './migrations.js';
import { FsBlobStore } from './fs-blob-store.js';
import { checkConfig, checkMissing, checkNewRoundId, checkParticipants, checkResume, checkRoundOrder, checkUnlearning, checkJobStep, parseTopology, resolveLineage, type CheckedParticipant } from './store-rules.js';
import {
  HistoryError,
  ModelErasedError,
  ModelPrunedError,
  keepsUpdatesUnder,
  type ClientRecord,
  type CommitUnlearningInput,
  type FederationMeta,
  type FinishUnlearningInput,
  type JobStep,
  type HistoryConfig,
  type HistoryStats,
  type HistoryStore,
  type JobRecord,
  type ModelCause,
  type ModelVersion,
  type Participant,
  type ParticipantInput,
  type PurgeOptions,
  type PurgeSummary,
  type MissingClient,
  type RoundRecord,
} from './store.js';
import { layoutSpecs, metaOf, modelRowOf, metricsFromJson, metricsToJson, normsFromBytes, normsToBytes, toJob, toModel, type FederationRow, type JobRow, type ModelRow } from './rows.js';

/**
 * The embedded history store: SQLite (WAL, synchronous=FULL) for metadata, one file per blob under <dataDir>/blobs.
 *
 * Crash safety rests on one ordering: a blob is durable (written, fsynced, renamed, directory fsynced) before any
 * transaction refers to it (a staged update is written under its final name without an fsync, and made durable with
 * the rest of its round, together, before the commit that refers to it), and files no committed row refers to are
 * deleted when the store is opened. So a crash at any point leaves either a whole commit or none of it, plus garbage
 * that the next open removes.
 *
 * One process per data directory: open() deletes unreferenced blobs, which would include another process's staged ones.
 */

export interface SqliteHistoryOptions {
  /** Clock for createdAt / closedAt / updatedAt (unix ms). */
  now?: () => number;
  /** Test hook (src/test-hooks.ts): awaited at 'history-write', once a round's staged blobs are durable and before
   *  the commit that refers to them, and at 'job-purge', once a job's end has committed and before its purged files
   *  are unlinked; the crash tests kill the process there. */
  pause?: (point: string) => Promise<void>;
  /**
   * open() refuses a database that is behind the high-water mark of what was committed (history.hwm.json, written
   * after every commit): committed rounds were lost. True accepts the loss and continues from what the database holds.
   */
  acceptHistoryLoss?: boolean;
  /** Where open() reports what garbage collection moved to quarantine and an accepted history loss; default silent. */
  log?: Pick<Logger, 'warn' | 'info'>;
  /** The fsyncs and the commit (default: the kernel's). A test passes a recorder that calls through to kernelSync. */
  disk?: DiskSync;
  /** Where the blob bytes live (default: files under <dataDir>/blobs, with the same DiskSync). The store's
   *  synchronous paths (a round's commit, garbage collection at open) still work on its files, so it is a
   *  filesystem one. */
  blobs?: FsBlobStore;
}

/** Where garbage collection moves blob files no committed row refers to, one folder per collection. */
export const QUARANTINE_DIR = 'quarantine';

export const DB_FILE = 'history.db';
/** Bytes a WAL is cut back to when it is reset (SQLite's journal_size_limit): without it a WAL that grew while a
 *  reader held an old snapshot keeps its size for good. */
export const WAL_SIZE_LIMIT = 4 * 1024 * 1024;
export const BLOBS_DIR = 'blobs';

export function openSqliteHistory(dataDir: string, opts: SqliteHistoryOptions = {}): HistoryStore {
  return new SqliteHistoryStore(dataDir, opts);
}


interface RoundRow {
  round_id: string;
  lineage: string;
  round: number;
  model_before: string | null;
  model_after: string | null;
  updates_stored: number;
  metrics_json: string;
  missing_json: string;
  started_at: number;
  closed_at: number;
}
interface ParticipantRow {
  round_id: string;
  client_id: string;
  num_examples: number;
  norms: Buffer;
  metrics_json: string | null;
  sensitivity: number | null;
  has_update: number;
}
interface UpdateRow {
  round_id: string;
  client_id: string;
  encoding: BlobEncoding;
  blob: string;
  bytes: number;
  blob_sha256: string;
}
interface ClientRow {
  client_id: string;
  secret_hash: string | null;
  num_examples: number;
  first_seen: number;
  last_seen: number;
  forgotten: number;
  revoked: number;
}

/** An update written to disk for a round that has not committed yet. Each staging owns its own file. */
interface StagedUpdate {
  rel: string;
  encoding: BlobEncoding;
  bytes: number;
  blobSha: string;
  /** False while the file is being written: a commit only takes finished stagings. */
  done: boolean;
  /** The file and its directory entry are fsynced (syncStaged, or the commit itself). */
  durable: boolean;
}

/** A model version about to be committed, its blob already durable. */
interface PlannedModel {
  row: ModelRow;
}

/** What a purge transaction removed, and the files to unlink once it committed. */
interface PurgedRows {
  files: string[];
  modelFiles: string[];
  summary: Omit<PurgeSummary, 'complete'>;
}

/** An unlearning commit validated and with its blobs durable, ready for its transaction. */
interface PreparedUnlearning {
  input: CommitUnlearningInput;
  oldHead: ModelVersion;
  lineage: string;
  keep: boolean;
  planned: PlannedModel[];
  resolved: { before: string | null; after: string | null }[];
  participants: CheckedParticipant[][];
  missing: MissingClient[][];
  updates: { clientId: string; staged: StagedUpdate }[][];
  result: PlannedModel;
}

function prepareStatements(db: Database.Database) {
  return {
    federation: db.prepare<[], FederationRow>('SELECT * FROM federation WHERE id = 1'),
    insertFederation: db.prepare(
      `INSERT INTO federation (id, topology_json, layout_json, history_interval, retention, created_at, head)
       VALUES (1, @topology_json, @layout_json, @history_interval, @retention, @created_at, @head)`,
    ),
    setHead: db.prepare<[string]>('UPDATE federation SET head = ? WHERE id = 1'),
    model: db.prepare<[string], ModelRow>('SELECT * FROM models WHERE version = ?'),
    models: db.prepare<[], ModelRow>('SELECT * FROM models ORDER BY seq'),
    modelsOfLineage: db.prepare<[string], ModelRow>('SELECT * FROM models WHERE lineage = ? ORDER BY seq'),
    // Both read the (lineage, seq) index only: one entry per model version, once per lineage by the callers.
    lineageStart: db.prepare<[string], { first: number | null }>('SELECT MIN(seq) AS first FROM models WHERE lineage = ?'),
    lineagesBefore: db.prepare<[number], { n: number }>(
      'SELECT COUNT(*) AS n FROM (SELECT MIN(seq) AS first FROM models GROUP BY lineage) WHERE first < ?',
    ),
    lineageCount: db.prepare<[], { n: number }>('SELECT COUNT(DISTINCT lineage) AS n FROM models'),
    insertModel: db.prepare(
      `INSERT INTO models (version, parent, cause, round, job_id, lineage, sha256, blob, bytes, created_at)
       VALUES (@version, @parent, @cause, @round, @job_id, @lineage, @sha256, @blob, @bytes, @created_at)`,
    ),
    roundById: db.prepare<[string], RoundRow>('SELECT * FROM rounds WHERE round_id = ?'),
    roundsOfLineage: db.prepare<[string, number, number], RoundRow>(
      'SELECT * FROM rounds WHERE lineage = ? AND round BETWEEN ? AND ? ORDER BY round',
    ),
    participantsOfLineage: db.prepare<[string, number, number], ParticipantRow>(
      `SELECT p.round_id, p.client_id, p.num_examples, p.norms, p.metrics_json, p.sensitivity, (u.round_id IS NOT NULL) AS has_update
       FROM participants p JOIN rounds r ON r.round_id = p.round_id
       LEFT JOIN updates u ON u.round_id = p.round_id AND u.client_id = p.client_id
       WHERE r.lineage = ? AND r.round BETWEEN ? AND ? ORDER BY r.round, p.ord`,
    ),
    insertRound: db.prepare(
      `INSERT INTO rounds (round_id, lineage, round, model_before, model_after, updates_stored, metrics_json, missing_json, started_at, closed_at)
       VALUES (@round_id, @lineage, @round, @model_before, @model_after, @updates_stored, @metrics_json, @missing_json, @started_at, @closed_at)`,
    ),
    insertParticipant: db.prepare(
      `INSERT INTO participants (round_id, client_id, ord, num_examples, norms, metrics_json, sensitivity)
       VALUES (@round_id, @client_id, @ord, @num_examples, @norms, @metrics_json, @sensitivity)`,
    ),
    insertUpdate: db.prepare(
      `INSERT INTO updates (round_id, client_id, encoding, blob, bytes, blob_sha256)
       VALUES (@round_id, @client_id, @encoding, @blob, @bytes, @blob_sha256)`,
    ),
    update: db.prepare<[string, string], UpdateRow>('SELECT * FROM updates WHERE round_id = ? AND client_id = ?'),
    updatesOfClient: db.prepare<[string], UpdateRow>('SELECT * FROM updates WHERE client_id = ?'),
    deleteUpdatesOfClient: db.prepare<[string]>('DELETE FROM updates WHERE client_id = ?'),
    deleteParticipantsOfClient: db.prepare<[string]>('DELETE FROM participants WHERE client_id = ?'),
    referencedBlobs: db.prepare<[], { blob: string }>(
      'SELECT blob FROM models WHERE erased_at IS NULL AND pruned_at IS NULL UNION ALL SELECT blob FROM updates UNION ALL SELECT blob FROM job_staged',
    ),
    putJobStaged: db.prepare(
      `INSERT OR REPLACE INTO job_staged (job_id, round_id, client_id, encoding, blob, bytes, blob_sha256)
       VALUES (@job_id, @round_id, @client_id, @encoding, @blob, @bytes, @blob_sha256)`,
    ),
    jobStaged: db.prepare<[], UpdateRow & { job_id: string }>('SELECT * FROM job_staged'),
    jobStagedOfJob: db.prepare<[string], UpdateRow & { job_id: string }>('SELECT * FROM job_staged WHERE job_id = ?'),
    deleteJobStaged: db.prepare<[string]>('DELETE FROM job_staged WHERE job_id = ?'),
    jobStagedOfClient: db.prepare<[string], UpdateRow & { job_id: string }>('SELECT * FROM job_staged WHERE client_id = ?'),
    deleteJobStagedOfClient: db.prepare<[string]>('DELETE FROM job_staged WHERE client_id = ?'),
    modelStats: db.prepare<[], { n: number; bytes: number | null; erased: number; pruned: number }>(
      'SELECT COUNT(*) AS n, SUM(CASE WHEN erased_at IS NULL AND pruned_at IS NULL THEN bytes END) AS bytes, COUNT(erased_at) AS erased, COUNT(CASE WHEN erased_at IS NULL THEN pruned_at END) AS pruned FROM models',
    ),
    pruneModel: db.prepare<[number, string]>('UPDATE models SET pruned_at = ? WHERE version = ? AND pruned_at IS NULL AND erased_at IS NULL'),
    firstRoundsOfClient: db.prepare<[string], { lineage: string; first: number }>(
      `SELECT r.lineage AS lineage, MIN(r.round) AS first FROM participants p JOIN rounds r ON r.round_id = p.round_id
       WHERE p.client_id = ? GROUP BY r.lineage`,
    ),
    keptModelsFrom: db.prepare<[string, number], ModelRow>(
      'SELECT * FROM models WHERE lineage = ? AND round >= ? AND erased_at IS NULL ORDER BY seq',
    ),
    eraseModel: db.prepare<[number, string]>('UPDATE models SET erased_at = ? WHERE version = ?'),
    updateStats: db.prepare<[], { encoding: BlobEncoding; n: number; bytes: number }>(
      'SELECT encoding, COUNT(*) AS n, SUM(bytes) AS bytes FROM updates GROUP BY encoding',
    ),
    roundCount: db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM rounds'),
    roundsMissingClient: db.prepare<[string], { round_id: string; missing_json: string }>('SELECT round_id, missing_json FROM rounds WHERE missing_json LIKE ?'),
    setRoundMissing: db.prepare<[string, string]>('UPDATE rounds SET missing_json = ? WHERE round_id = ?'),
    job: db.prepare<[string], JobRow>('SELECT * FROM jobs WHERE job_id = ?'),
    jobs: db.prepare<[], JobRow>('SELECT * FROM jobs ORDER BY seq'),
    jobsInState: db.prepare<[string], JobRow>('SELECT * FROM jobs WHERE state = ? ORDER BY seq'),
    insertJob: db.prepare(
      `INSERT INTO jobs (job_id, kind, state, client_ids_json, requested_by, method, params_json, progress_json,
                         checkpoint_json, report_json, error, created_at, updated_at)
       VALUES (@job_id, @kind, @state, @client_ids_json, @requested_by, @method, @params_json, @progress_json,
               @checkpoint_json, @report_json, @error, @created_at, @updated_at)`,
    ),
    updateJob: db.prepare(
      `UPDATE jobs SET state = @state, progress_json = @progress_json, checkpoint_json = @checkpoint_json,
                       report_json = @report_json, error = @error, updated_at = @updated_at WHERE job_id = @job_id`,
    ),
    client: db.prepare<[string], ClientRow>('SELECT * FROM clients WHERE client_id = ?'),
    clients: db.prepare<[], ClientRow>('SELECT * FROM clients ORDER BY client_id'),
    forgottenClients: db.prepare<[], { client_id: string }>('SELECT client_id FROM clients WHERE forgotten = 1'),
    putJobStep: db.prepare<[string, number, string]>('INSERT OR REPLACE INTO job_steps (job_id, step, data_json) VALUES (?, ?, ?)'),
    jobSteps: db.prepare<[string], { step: number; data_json: string }>('SELECT step, data_json FROM job_steps WHERE job_id = ? ORDER BY step'),
    deleteJobSteps: db.prepare<[string]>('DELETE FROM job_steps WHERE job_id = ?'),
    setJobCheckpoint: db.prepare<[string | null, number, string]>('UPDATE jobs SET checkpoint_json = ?, updated_at = ? WHERE job_id = ?'),
    putClient: db.prepare(
      `INSERT OR REPLACE INTO clients (client_id, secret_hash, num_examples, first_seen, last_seen, forgotten, revoked)
       VALUES (@client_id, @secret_hash, @num_examples, @first_seen, @last_seen, @forgotten, @revoked)`,
    ),
  };
}

// --- row <-> record -------------------------------------------------------------------------------------------



function toClient(r: ClientRow): ClientRecord {
  return {
    clientId: r.client_id,
    secretHash: r.secret_hash,
    numExamples: r.num_examples,
    firstSeen: r.first_seen,
    lastSeen: r.last_seen,
    forgotten: r.forgotten !== 0,
    revoked: r.revoked !== 0,
  };
}



/** A file-name-safe, collision-free rendering of an id (ids are nanoids in practice; anything else is hashed). */
function safeName(id: string): string {
  return /^[A-Za-z0-9_-]{1,64}$/.test(id) ? id : `~${sha256Hex(Buffer.from(id, 'utf8')).slice(0, 40)}`;
}


class SqliteHistoryStore implements HistoryStore {
  private readonly db: Database.Database;
  private readonly dataDir: string;
  private readonly blobsDir: string;
  private readonly blobs: FsBlobStore;
  private readonly ownsBlobs: boolean;
  private readonly acceptHistoryLoss: boolean;
  private readonly log: Pick<Logger, 'warn' | 'info'> | null;
  private readonly now: () => number;
  private readonly pause: ((point: string) => Promise<void>) | undefined;
  private readonly disk: DiskSync;
  private readonly q: ReturnType<typeof prepareStatements>;
  private fed: FederationMeta | null = null;
  /** roundId -> clientId -> the current staging of that client's update. */
  private readonly staged = new Map<string, Map<string, StagedUpdate>>();
  private closed = false;
  /** The tombstones (clients.forgotten), mirrored in memory for the hot paths (every hello, every round's selection);
   *  updated only once a transaction that sets one has committed. */
  private readonly forgotten = new Set<string>();

  constructor(dataDir: string, opts: SqliteHistoryOptions) {
    this.disk = opts.disk ?? kernelSync;
    ensureDirSync(path.resolve(dataDir), this.disk);
    this.dataDir = dataDir;
    this.acceptHistoryLoss = opts.acceptHistoryLoss ?? false;
    this.log = opts.log ?? null;
    this.blobsDir = path.join(dataDir, BLOBS_DIR);
    ensureDirSync(this.blobsDir, this.disk);
    this.ownsBlobs = opts.blobs === undefined;
    this.blobs = opts.blobs ?? new FsBlobStore(this.blobsDir, { disk: this.disk, quarantineDir: path.join(dataDir, QUARANTINE_DIR), ...(opts.now ? { now: opts.now } : {}) });
    this.now = opts.now ?? Date.now;
    this.pause = opts.pause;
    this.db = new Database(path.join(dataDir, DB_FILE));
    try {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.pragma('foreign_keys = ON');
      // Deleted rows (a purged client's norms) are overwritten, not left in free pages.
      this.db.pragma('secure_delete = ON');
      this.db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT}`);
      migrate(this.db);
      this.q = prepareStatements(this.db);
      for (const r of this.q.forgottenClients.all()) this.forgotten.add(r.client_id);
    } catch (e) {
      this.db.close();
      throw e;
    }
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
    parseTopology(init.topologyJson);
    const row = this.q.federation.get();
    this.checkHighWaterMark(row !== undefined);
    if (row) {
      const meta = metaOf(row);
      checkResume(meta, init);
      this.fed = meta;
      this.collectGarbage();
      // A running job's stagings, recorded with its steps: staged again, as they were before the restart.
      for (const r of this.q.jobStaged.all()) {
        let byClient = this.staged.get(r.round_id);
        if (!byClient) this.staged.set(r.round_id, (byClient = new Map()));
        byClient.set(r.client_id, { rel: r.blob, encoding: r.encoding, bytes: r.bytes, blobSha: r.blob_sha256, done: true, durable: true });
      }
      const head = this.headNow();
      const headRow = this.q.model.get(head.version)!;
      if (!fs.existsSync(this.blobs.fileOf(headRow.blob))) throw new HistoryError(`the head model ${head.version} has no blob file (${headRow.blob})`);
      // From here on the mark describes this database (after an accepted loss, or for a directory that had none).
      this.recordHighWaterMark();
      return { meta, head, resumed: true };
    }

    const layout = layoutOf(layoutSpecs(init.layout));
    const createdAt = this.now();
    const meta: FederationMeta = { topologyJson: init.topologyJson, layout, config: { ...init.config }, createdAt };
    // A crash while creating may have left an initial blob behind.
    this.collectGarbage();
    const planned = this.planModel(layout, init.initialWeights, { parent: null, cause: 'init', round: 0, jobId: null, lineage: newId() }, createdAt);
    this.commitWithBlobs([planned], () => {
      this.q.insertModel.run(planned.row);
      this.q.insertFederation.run({
        topology_json: init.topologyJson,
        layout_json: JSON.stringify(layoutSpecs(layout)),
        history_interval: init.config.historyInterval,
        retention: init.config.retention,
        created_at: createdAt,
        head: planned.row.version,
      });
    });
    this.fed = meta;
    return { meta, head: toModel(planned.row), resumed: false };
  }

  async meta(): Promise<FederationMeta> {
    return this.requireOpen();
  }

  async head(): Promise<ModelVersion> {
    return this.headNow();
  }

  private headNow(): ModelVersion {
    this.requireOpen();
    const row = this.q.federation.get()!;
    return toModel(this.q.model.get(row.head)!);
  }

  async keepsUpdates(round: number): Promise<boolean> {
    return keepsUpdatesUnder(this.requireOpen().config, round);
  }

  // --- staging ------------------------------------------------------------------------------------------------

  async stageUpdate(roundId: string, clientId: string, update: Float32Array): Promise<void> {
    const meta = this.requireOpen();
    if (meta.config.retention === 'norms') return;
    if (this.q.roundById.get(roundId)) throw new HistoryError(`round ${roundId} is already committed; its updates can no longer change`);
    let encoded;
    try {
      encoded = encodeBlob(meta.layout, update, meta.config.retention);
    } catch (e) {
      throw new HistoryError(`update of ${clientId} for round ${roundId}: ${(e as Error).message}`);
    }
    const entry: StagedUpdate = {
      rel: `updates/${safeName(roundId)}/${safeName(clientId)}.${newId().slice(0, 10)}.bin`,
      encoding: encoded.encoding,
      bytes: encoded.bytes.byteLength,
      blobSha: sha256Hex(encoded.bytes),
      done: false,
      durable: false,
    };
    let byClient = this.staged.get(roundId);
    if (!byClient) this.staged.set(roundId, (byClient = new Map()));
    const previous = byClient.get(clientId);
    byClient.set(clientId, entry);
    try {
      // No fsync here: that would hold each answer of the round behind its own disk flush. Nothing refers to the
      // file until a commit, which first makes it durable (syncStaged, or makeDurableSync); a crash before leaves
      // an unreferenced file, which open() deletes.
      await this.blobs.put(entry.rel, encoded.bytes);
    } catch (e) {
      if (this.stagedEntry(roundId, clientId) === entry) {
        if (previous) byClient.set(clientId, previous);
        else this.dropStaged(roundId, clientId);
      }
      throw e;
    }
    if (this.stagedEntry(roundId, clientId) !== entry) {
      // Superseded, discarded or taken over by a commit while writing: this file belongs to no one.
      fs.rmSync(this.blobs.fileOf(entry.rel), { force: true });
      if (this.closed) throw new HistoryError(`the history store closed while the update of ${clientId} for round ${roundId} was being staged`);
      if (this.q.roundById.get(roundId)) {
        throw new HistoryError(`round ${roundId} committed while the update of ${clientId} was being staged; it was not included`);
      }
      return;
    }
    entry.done = true;
    if (previous?.done) fs.rmSync(this.blobs.fileOf(previous.rel), { force: true });
  }

  async syncStaged(roundId: string): Promise<void> {
    this.requireOpen();
    const entries = [...(this.staged.get(roundId)?.values() ?? [])].filter((e) => e.done && !e.durable);
    if (entries.length === 0) return;
    // All at once: the kernel writes the files back together instead of one flush after another.
    await this.blobs.makeDurable(entries.map((e) => e.rel));
    for (const e of entries) e.durable = true;
    await this.pause?.('history-write');
  }

  /** Fsyncs whatever of `updates` syncStaged did not (a caller that skipped it): a commit refers only to durable files. */
  private makeDurableSync(updates: { staged: StagedUpdate }[]): void {
    const pending = updates.map((u) => u.staged).filter((s) => !s.durable);
    if (pending.length === 0) return;
    for (const s of pending) fsyncPathSync(this.blobs.fileOf(s.rel), this.disk);
    for (const dir of new Set(pending.map((s) => path.dirname(this.blobs.fileOf(s.rel))))) fsyncPathSync(dir, this.disk);
    for (const s of pending) s.durable = true;
  }

  async discardStaged(roundId: string, clientId?: string): Promise<void> {
    this.dropStagedFiles(roundId, clientId);
  }

  private dropStagedFiles(roundId: string, clientId?: string): void {
    const byClient = this.staged.get(roundId);
    if (!byClient) return;
    for (const [c, entry] of [...byClient]) {
      if (clientId !== undefined && c !== clientId) continue;
      this.dropStaged(roundId, c);
      // An unfinished staging removes its own file when it sees it is no longer current.
      if (entry.done) fs.rmSync(this.blobs.fileOf(entry.rel), { force: true });
    }
  }

  private stagedEntry(roundId: string, clientId: string): StagedUpdate | undefined {
    return this.staged.get(roundId)?.get(clientId);
  }

  private dropStaged(roundId: string, clientId: string): void {
    const byClient = this.staged.get(roundId);
    if (!byClient) return;
    byClient.delete(clientId);
    if (byClient.size === 0) this.staged.delete(roundId);
  }

  /** After a commit: the committed stagings now belong to rows; every other staging of the round is garbage. */
  private releaseStaged(roundId: string, committed: ReadonlySet<string>): void {
    const byClient = this.staged.get(roundId);
    if (!byClient) return;
    this.staged.delete(roundId);
    for (const [clientId, entry] of byClient) {
      if (!committed.has(clientId) && entry.done) fs.rmSync(this.blobs.fileOf(entry.rel), { force: true });
    }
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
    const head = this.headNow();
    checkRoundOrder(head, input);
    this.checkNewRoundId(input.roundId);
    const participants = checkParticipants(input.participants, meta.layout.specs.length, `round ${input.round}`);
    const missing = checkMissing(input.missing ?? [], participants, `round ${input.round}`);
    const closedAt = this.now();
    const planned = this.planModel(meta.layout, input.weights, { parent: head.version, cause: 'round', round: input.round, jobId: null, lineage: head.lineage }, closedAt);
    const keep = keepsUpdatesUnder(meta.config, input.round);
    const updates = keep ? this.finishedStagings(input.roundId, participants) : [];
    this.makeDurableSync(updates);
    this.commitWithBlobs([planned], () => {
      this.q.insertModel.run(planned.row);
      this.insertRound(
        { ...input, missing, lineage: head.lineage, modelBefore: head.version, modelAfter: planned.row.version, updatesStored: keep, closedAt },
        participants,
        updates,
      );
      this.q.setHead.run(planned.row.version);
    });
    this.releaseStaged(input.roundId, new Set(updates.map((u) => u.clientId)));
    return toModel(planned.row);
  }

  async commitUnlearning(input: CommitUnlearningInput): Promise<ModelVersion> {
    const prepared = await this.prepareUnlearning(input);
    this.commitWithBlobs(prepared.planned, () => this.insertUnlearning(prepared));
    this.releaseUnlearning(prepared);
    return toModel(prepared.result.row);
  }

  async finishUnlearning(input: FinishUnlearningInput): Promise<{ model: ModelVersion; purged: PurgeSummary; job: JobRecord }> {
    if (!this.q.job.get(input.jobId)) throw new HistoryError(`unknown job ${input.jobId}`);
    const prepared = await this.prepareUnlearning(input);
    const ids = [...new Set(input.purge.clientIds)];
    let purge: PurgedRows | undefined;
    let purged: PurgeSummary | undefined;
    let job: JobRecord | undefined;
    // One transaction: the new head, the purge and tombstones, and the job's end. A crash leaves all of it or none,
    // so a restarted coordinator either resumes the job (nothing of it committed) or finds it done (all of it).
    this.commitWithBlobs(prepared.planned, () => {
      this.insertUnlearning(prepared);
      purge = this.purgeRows(ids, input.purge.eraseModels, this.now());
      purged = { ...purge.summary, complete: false };
      const patch = input.finish(toModel(prepared.result.row), purged);
      job = this.writeJob(input.jobId, { ...patch, checkpoint: null });
      this.q.deleteJobSteps.run(input.jobId);
    });
    for (const id of ids) this.forgotten.add(id);
    this.releaseUnlearning(prepared);
    await this.pause?.('job-purge');
    // After the commit: nothing refers to these files any more, so a crash before (or during) the unlinks leaves
    // garbage that the next open deletes; unlinking twice is harmless.
    await this.blobs.delete([...purge!.files, ...this.dropStagedOf(ids)]);
    await this.blobs.delete(purge!.modelFiles);
    return { model: toModel(prepared.result.row), purged: { ...purged!, complete: this.checkpointWal() }, job: job! };
  }

  /** Validates an unlearning commit and writes its model blobs (async, made durable together before returning). */
  private async prepareUnlearning(input: CommitUnlearningInput): Promise<PreparedUnlearning> {
    const meta = this.requireOpen();
    const oldHead = this.headNow();
    const rounds = input.rounds;
    const { participants, missing, intermediates } = await checkUnlearning(input, meta.layout.specs.length, (id) => this.q.roundById.get(id) !== undefined);
    const lineage = newId();
    const now = this.now();
    const base = { cause: 'unlearning' as const, jobId: input.jobId, lineage };
    const planned: PlannedModel[] = [];
    const keep = meta.config.retention !== 'norms';
    let resolved: { before: string | null; after: string | null }[];
    let updates: { clientId: string; staged: StagedUpdate }[][];
    try {
      ({ resolved } = await resolveLineage(input, intermediates, oldHead, {
        requireModel: (version, ctx) => this.requireModel(version, ctx),
        create: async (weights, parent, round) => {
          const p = await this.planModelUnsynced(meta.layout, weights, { ...base, parent, round }, now);
          planned.push(p);
          return p.row.version;
        },
      }));
      // Every blob this commit refers to is durable before it: the models, then the replayed rounds' stagings, all
      // flushed together off the event loop (a long replay has thousands; one synchronous fsync each stalled the
      // service for seconds).
      await this.syncPlanned(planned);
      for (const r of rounds) await this.syncStaged(r.roundId);
      updates = rounds.map((r, i) => (keep ? this.finishedStagings(r.roundId, participants[i]!) : []));
      for (const u of updates) this.makeDurableSync(u);
    } catch (e) {
      this.unlinkPlanned(planned);
      throw e;
    }
    return { input, oldHead, lineage, keep, planned, resolved, participants, missing, updates, result: planned[planned.length - 1]! };
  }

  /** The rows of a prepared unlearning commit; runs inside the commit transaction. */
  private insertUnlearning(p: PreparedUnlearning): void {
    // The blobs were written across awaits: refuse if a round committed meanwhile (the caller holds the work lock,
    // so this is a bug guard, not a race anyone should meet).
    if (this.q.federation.get()!.head !== p.oldHead.version) throw new HistoryError(`unlearning job ${p.input.jobId}: the head moved while its commit was prepared`);
    for (const m of p.planned) this.q.insertModel.run(m.row);
    // The job's recorded stagings now belong to committed rows (or, if not listed, are released as garbage).
    this.q.deleteJobStaged.run(p.input.jobId);
    p.input.rounds.forEach((r, i) => {
      this.checkNewRoundId(r.roundId);
      const { before, after } = p.resolved[i]!;
      this.insertRound({ ...r, missing: p.missing[i]!, lineage: p.lineage, modelBefore: before, modelAfter: after, updatesStored: p.keep }, p.participants[i]!, p.updates[i]!);
    });
    this.q.setHead.run(p.result.row.version);
  }

  private releaseUnlearning(p: PreparedUnlearning): void {
    p.input.rounds.forEach((r, i) => this.releaseStaged(r.roundId, new Set(p.updates[i]!.map((u) => u.clientId))));
  }

  private insertRound(
    r: {
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
    },
    participants: CheckedParticipant[],
    updates: { clientId: string; staged: StagedUpdate }[],
  ): void {
    this.q.insertRound.run({
      round_id: r.roundId,
      lineage: r.lineage,
      round: r.round,
      model_before: r.modelBefore,
      model_after: r.modelAfter,
      updates_stored: r.updatesStored ? 1 : 0,
      metrics_json: metricsToJson(r.metrics),
      missing_json: JSON.stringify(r.missing),
      started_at: r.startedAt,
      closed_at: r.closedAt,
    });
    participants.forEach((p, ord) =>
      this.q.insertParticipant.run({
        round_id: r.roundId,
        client_id: p.clientId,
        ord,
        num_examples: p.numExamples,
        norms: normsToBytes(p.norms),
        metrics_json: p.metrics === undefined ? null : metricsToJson(p.metrics),
        sensitivity: p.sensitivity ?? null,
      }),
    );
    for (const u of updates) {
      this.q.insertUpdate.run({
        round_id: r.roundId,
        client_id: u.clientId,
        encoding: u.staged.encoding,
        blob: u.staged.rel,
        bytes: u.staged.bytes,
        blob_sha256: u.staged.blobSha,
      });
    }
  }

  private finishedStagings(roundId: string, participants: CheckedParticipant[]): { clientId: string; staged: StagedUpdate }[] {
    const out: { clientId: string; staged: StagedUpdate }[] = [];
    for (const p of participants) {
      const staged = this.stagedEntry(roundId, p.clientId);
      if (staged?.done) out.push({ clientId: p.clientId, staged });
    }
    return out;
  }

  /** Validates weights and writes their blob durably; the row is returned for the commit transaction to insert. */
  private planModel(
    layout: WeightLayout,
    weights: Float32Array,
    m: { parent: string | null; cause: ModelCause; round: number; jobId: string | null; lineage: string },
    createdAt: number,
  ): PlannedModel {
    const { planned, bytes } = this.encodeModel(layout, weights, m, createdAt);
    writeFileDurableSync(this.blobs.fileOf(planned.row.blob), bytes, this.disk);
    return planned;
  }

  /** As planModel, but the blob is written without an fsync (syncPlanned makes a batch durable before its commit). */
  private async planModelUnsynced(
    layout: WeightLayout,
    weights: Float32Array,
    m: { parent: string | null; cause: ModelCause; round: number; jobId: string | null; lineage: string },
    createdAt: number,
  ): Promise<PlannedModel> {
    const { planned, bytes } = this.encodeModel(layout, weights, m, createdAt);
    await this.blobs.put(planned.row.blob, bytes);
    return planned;
  }

  /** Validates weights and encodes their blob; the row names a fresh version and the blob file it is to be written to. */
  private encodeModel(
    layout: WeightLayout,
    weights: Float32Array,
    m: { parent: string | null; cause: ModelCause; round: number; jobId: string | null; lineage: string },
    createdAt: number,
  ): { planned: PlannedModel; bytes: Uint8Array } {
    const { row, bytes } = modelRowOf(layout, weights, m, createdAt, (version) => `models/${version}.bin`);
    return { planned: { row }, bytes };
  }

  /** Makes planned model blobs durable, together (the blob store batches the flushes). */
  private async syncPlanned(planned: PlannedModel[]): Promise<void> {
    await this.blobs.makeDurable(planned.map((p) => p.row.blob));
  }

  /** Runs the commit transaction; if it fails, the blobs written for it are removed (they would be garbage). */
  private commitWithBlobs(planned: PlannedModel[], body: () => void): void {
    try {
      // Through the seam, with the pragma the transaction commits under: what makes the commit itself durable.
      this.disk.commit(this.db.transaction(body), this.db.pragma('synchronous', { simple: true }) as number);
    } catch (e) {
      this.unlinkPlanned(planned);
      throw e;
    }
    this.recordHighWaterMark();
  }

  /**
   * Moves the high-water mark up to what the database holds now. Never throws: the commit before it is durable, and
   * a caller told it failed would discard what it committed. A mark left behind only weakens the check until the next.
   */
  private recordHighWaterMark(): void {
    try {
      const head = this.q.federation.get();
      if (!head) return;
      const h = this.q.model.get(head.head)!;
      writeHighWaterMark(this.dataDir, { models: this.q.modelStats.get()!.n, head: h.version, round: h.round, lineage: h.lineage, at: this.now() });
    } catch (e) {
      this.log?.warn({ err: e }, "could not record the history's high-water mark (the commit itself is durable)");
    }
  }

  /** open(): refuses a database behind the high-water mark unless the loss is accepted (then says so in the log). */
  private checkHighWaterMark(hasFederation: boolean): void {
    const mark = readHighWaterMark(this.dataDir);
    if (!mark) return;
    const headRow = hasFederation ? this.q.model.get(this.q.federation.get()!.head) : undefined;
    const why = behindMark(mark, {
      models: hasFederation ? this.q.modelStats.get()!.n : 0,
      hasHead: this.q.model.get(mark.head) !== undefined,
      head: headRow ? { version: headRow.version, round: headRow.round } : null,
    });
    if (!why) return;
    if (!this.acceptHistoryLoss) throw new HistoryLossError(why);
    this.log?.warn({ mark, models: hasFederation ? this.q.modelStats.get()!.n : 0, head: headRow?.version ?? null }, `accepting history loss: ${why}`);
  }

  private unlinkPlanned(planned: PlannedModel[]): void {
    for (const p of planned) fs.rmSync(this.blobs.fileOf(p.row.blob), { force: true });
  }

  // --- reads --------------------------------------------------------------------------------------------------

  async listRounds(opts: { lineage?: string; from?: number; to?: number } = {}): Promise<RoundRecord[]> {
    return this.roundsOf(opts);
  }

  private roundsOf(opts: { lineage?: string; from?: number; to?: number }): RoundRecord[] {
    this.requireOpen();
    const lineage = opts.lineage ?? this.headNow().lineage;
    const from = opts.from ?? 1;
    const to = opts.to ?? Number.MAX_SAFE_INTEGER;
    const byRound = new Map<string, Participant[]>();
    for (const p of this.q.participantsOfLineage.all(lineage, from, to)) {
      let list = byRound.get(p.round_id);
      if (!list) byRound.set(p.round_id, (list = []));
      const participant: Participant = { clientId: p.client_id, numExamples: p.num_examples, norms: normsFromBytes(p.norms), hasUpdate: p.has_update !== 0 };
      if (p.metrics_json !== null) participant.metrics = metricsFromJson(p.metrics_json);
      if (p.sensitivity !== null) participant.sensitivity = p.sensitivity;
      list.push(participant);
    }
    return this.q.roundsOfLineage.all(lineage, from, to).map((r) => ({
      round: r.round,
      roundId: r.round_id,
      lineage: r.lineage,
      modelBefore: r.model_before ?? '',
      modelAfter: r.model_after ?? '',
      participants: byRound.get(r.round_id) ?? [],
      missing: JSON.parse(r.missing_json) as MissingClient[],
      updatesStored: r.updates_stored !== 0,
      metrics: metricsFromJson(r.metrics_json),
      startedAt: r.started_at,
      closedAt: r.closed_at,
    }));
  }

  async getRound(round: number, lineage?: string): Promise<RoundRecord | null> {
    return this.roundsOf({ lineage: lineage ?? this.headNow().lineage, from: round, to: round })[0] ?? null;
  }

  async readUpdate(roundId: string, clientId: string): Promise<Float32Array | null> {
    const meta = this.requireOpen();
    const row = this.q.update.get(roundId, clientId);
    if (!row) return null;
    const bytes = await this.readBlobFile(row.blob, `update of ${clientId} in round ${roundId}`);
    if (sha256Hex(bytes) !== row.blob_sha256) {
      throw new HistoryError(`update of ${clientId} in round ${roundId} is corrupted (sha256 mismatch in ${row.blob})`);
    }
    try {
      return decodeBlob(meta.layout, bytes).values;
    } catch (e) {
      throw new HistoryError(`update of ${clientId} in round ${roundId}: ${(e as Error).message}`);
    }
  }

  async listModels(opts: { lineage?: string } = {}): Promise<ModelVersion[]> {
    this.requireNotClosed();
    const rows = opts.lineage === undefined ? this.q.models.all() : this.q.modelsOfLineage.all(opts.lineage);
    return rows.map(toModel);
  }

  async lineagePosition(lineage: string): Promise<number> {
    this.requireNotClosed();
    const first = this.q.lineageStart.get(lineage)?.first;
    if (first === null || first === undefined) throw new HistoryError(`unknown lineage ${lineage}`);
    return this.q.lineagesBefore.get(first)!.n;
  }

  async lineageCount(): Promise<number> {
    this.requireNotClosed();
    return this.q.lineageCount.get()!.n;
  }

  async getModel(version: string): Promise<ModelVersion | null> {
    this.requireNotClosed();
    const row = this.q.model.get(version);
    return row ? toModel(row) : null;
  }

  async readModel(version: string): Promise<Float32Array> {
    const meta = this.requireOpen();
    const row = this.q.model.get(version);
    if (!row) throw new HistoryError(`unknown model version ${version}`);
    if (row.erased_at !== null) throw new ModelErasedError(version, row.erased_at);
    if (row.pruned_at !== null) throw new ModelPrunedError(version, row.pruned_at);
    const bytes = await this.readBlobFile(row.blob, `model ${version}`);
    let payload: Uint8Array;
    try {
      if (readBlobHeader(meta.layout, bytes).encoding !== 'fp32') throw new BlobFormatError('model blob is not fp32');
      payload = blobPayload(meta.layout, bytes);
    } catch (e) {
      throw new HistoryError(`model ${version} is corrupted: ${(e as Error).message}`);
    }
    if (sha256Hex(payload) !== row.sha256) throw new HistoryError(`model ${version} is corrupted (sha256 mismatch in ${row.blob})`);
    if (!littleEndian) return decodeBlob(meta.layout, bytes).values;
    // Copy into fresh, aligned memory: the payload sits at an arbitrary offset of the file buffer.
    const out = new Float32Array(payload.byteLength / 4);
    new Uint8Array(out.buffer).set(payload);
    return out;
  }

  private async readBlobFile(rel: string, what: string): Promise<Uint8Array> {
    let bytes: Uint8Array | null;
    try {
      bytes = await this.blobs.get(rel);
    } catch (e) {
      throw new HistoryError(`${what}: cannot read its blob ${rel}: ${(e as Error).message}`);
    }
    if (bytes === null) throw new HistoryError(`${what}: cannot read its blob ${rel}: the blob store holds nothing under it`);
    return bytes;
  }

  private requireModel(version: string, ctx: string): void {
    if (!this.q.model.get(version)) throw new HistoryError(`${ctx}: unknown model version ${version}`);
  }

  // --- purge --------------------------------------------------------------------------------------------------

  async purgeClients(clientIds: string[], opts: PurgeOptions = {}): Promise<PurgeSummary> {
    this.requireNotClosed();
    const ids = [...new Set(clientIds)];
    let purge: PurgedRows | undefined;
    // Rows first: once they are gone the files are unreferenced, so a crash before the unlinks leaves only garbage
    // that the next open deletes.
    this.disk.commit(
      this.db.transaction(() => {
        purge = this.purgeRows(ids, opts.eraseModels ?? false, this.now());
      }),
      this.db.pragma('synchronous', { simple: true }) as number,
    );
    for (const id of ids) this.forgotten.add(id);
    await this.blobs.delete([...purge!.files, ...this.dropStagedOf(ids)]);
    await this.blobs.delete(purge!.modelFiles);
    return { ...purge!.summary, complete: this.checkpointWal() };
  }

  async completePurge(): Promise<boolean> {
    return this.checkpointWal();
  }

  private checkpointWal(): boolean {
    this.requireNotClosed();
    // The WAL still holds pre-purge copies of the pages (secure_delete overwrote them only in the newest copy): fold
    // it into the database and truncate it. Never wait: a reader holding an old snapshot (a backup tool) makes the
    // checkpoint busy, and waiting on it here would stall the service; the caller retries later instead.
    const timeout = this.db.pragma('busy_timeout', { simple: true }) as number;
    this.db.pragma('busy_timeout = 0');
    try {
      const [r] = this.db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number; log: number; checkpointed: number }[];
      return r !== undefined && r.busy === 0 && r.log <= 0;
    } finally {
      this.db.pragma(`busy_timeout = ${timeout}`);
    }
  }

  /** Deletes the clients' rows and tombstones them (inside the caller's transaction); drops their stagings. Returns
   *  the files to unlink once the transaction committed. */
  private purgeRows(ids: string[], eraseModels: boolean, now: number): PurgedRows {
    const files: string[] = [];
    const modelFiles: string[] = [];
    const modelsErased: string[] = [];
    let updatesDeleted = 0;
    let participantRowsDeleted = 0;
    let bytesDeleted = 0;
    let modelBytesDeleted = 0;
    if (eraseModels) {
      // Before the participant rows go: they are what says which rounds, hence which models, a client shaped.
      for (const m of this.modelsShapedBy(ids)) {
        this.q.eraseModel.run(now, m.version);
        modelFiles.push(m.blob);
        modelsErased.push(m.version);
        modelBytesDeleted += m.bytes;
      }
    }
    for (const id of ids) {
      for (const u of this.q.updatesOfClient.all(id)) {
        files.push(u.blob);
        bytesDeleted += u.bytes;
      }
      updatesDeleted += this.q.deleteUpdatesOfClient.run(id).changes;
      for (const u of this.q.jobStagedOfClient.all(id)) {
        // Also staged in memory (open() restores them): counted there, dropped and unlinked by dropStagedOf.
        if (!this.stagedEntry(u.round_id, id)) files.push(u.blob);
      }
      this.q.deleteJobStagedOfClient.run(id);
      participantRowsDeleted += this.q.deleteParticipantsOfClient.run(id).changes;
      // A missing-list entry names the client too; the round keeps the count of its other absentees only.
      for (const r of this.q.roundsMissingClient.all(`%${JSON.stringify(id)}%`)) {
        const kept = (JSON.parse(r.missing_json) as MissingClient[]).filter((m) => m.clientId !== id);
        this.q.setRoundMissing.run(JSON.stringify(kept), r.round_id);
      }
      const c = this.q.client.get(id);
      this.q.putClient.run({
        client_id: id,
        secret_hash: null,
        num_examples: 0,
        first_seen: c?.first_seen ?? now,
        last_seen: c?.last_seen ?? now,
        forgotten: 1,
        revoked: c?.revoked ?? 0,
      });
    }
    // Updates staged for rounds not committed yet (a round or a job step in flight): counted here, dropped by
    // dropStagedOf once the transaction committed (a rollback must leave them staged).
    for (const byClient of this.staged.values()) {
      for (const id of ids) {
        const entry = byClient.get(id);
        if (entry?.done) bytesDeleted += entry.bytes;
      }
    }
    return { files, modelFiles, summary: { clientIds: ids, updatesDeleted, bytesDeleted, participantRowsDeleted, modelsErased, modelBytesDeleted } };
  }

  /** Drops the clients' stagings of rounds not committed yet; returns their files, to unlink. */
  private dropStagedOf(ids: string[]): string[] {
    const files: string[] = [];
    for (const [roundId, byClient] of [...this.staged]) {
      for (const id of ids) {
        const entry = byClient.get(id);
        if (!entry) continue;
        this.dropStaged(roundId, id);
        // An unfinished staging removes its own file when it sees it is no longer current.
        if (entry.done) files.push(entry.rel);
      }
    }
    return files;
  }

  /** Kept model versions that any of these clients contributed to: in each lineage, from the first round one of them
   *  took part in. Refuses when the head is among them: its weights are the live model, so the clients must be
   *  unlearned (a new lineage without them) before their contribution can be erased. */
  private modelsShapedBy(ids: string[]): ModelRow[] {
    const first = new Map<string, number>();
    for (const id of ids) {
      for (const r of this.q.firstRoundsOfClient.all(id)) first.set(r.lineage, Math.min(first.get(r.lineage) ?? Infinity, r.first));
    }
    const head = this.q.federation.get()?.head;
    const out: ModelRow[] = [];
    for (const [lineage, round] of first) {
      for (const m of this.q.keptModelsFrom.all(lineage, round)) {
        if (m.version === head) throw new HistoryError(`the head model ${head} holds the contribution of ${ids.join(', ')}: unlearn them before erasing it`);
        out.push(m);
      }
    }
    return out;
  }

  async stats(): Promise<HistoryStats> {
    this.requireNotClosed();
    const m = this.q.modelStats.get()!;
    const updateBytesByDtype: Record<string, number> = {};
    let updateBytes = 0;
    let updates = 0;
    for (const u of this.q.updateStats.all()) {
      updateBytesByDtype[u.encoding] = u.bytes;
      updateBytes += u.bytes;
      updates += u.n;
    }
    return { modelBytes: m.bytes ?? 0, updateBytes, updateBytesByDtype, updates, rounds: this.q.roundCount.get()!.n, models: m.n, modelsErased: m.erased, modelsPruned: m.pruned };
  }

  // --- model retention ------------------------------------------------------------------------------------------

  async pruneModels(versions: string[]): Promise<{ pruned: string[]; bytesDeleted: number }> {
    this.requireNotClosed();
    const head = this.q.federation.get()?.head;
    if (head !== undefined && versions.includes(head)) throw new HistoryError(`the head model ${head} cannot be pruned`);
    const now = this.now();
    const pruned: string[] = [];
    const files: string[] = [];
    // Rows first, as in purgeClients: a crash before the unlinks leaves only unreferenced files, which open() deletes.
    this.db.transaction(() => {
      for (const v of new Set(versions)) {
        const row = this.q.model.get(v);
        if (!row) throw new HistoryError(`cannot prune unknown model version ${v}`);
        if (this.q.pruneModel.run(now, v).changes === 0) continue;
        pruned.push(v);
        files.push(row.blob);
      }
    })();
    return { pruned, bytesDeleted: await this.blobs.delete(files) };
  }

  // --- jobs ---------------------------------------------------------------------------------------------------

  async createJob(job: Omit<JobRecord, 'createdAt' | 'updatedAt'>): Promise<JobRecord> {
    this.requireNotClosed();
    if (this.q.job.get(job.jobId)) throw new HistoryError(`job ${job.jobId} already exists`);
    const t = this.now();
    this.q.insertJob.run({
      job_id: job.jobId,
      kind: job.kind,
      state: job.state,
      client_ids_json: JSON.stringify(job.clientIds),
      requested_by: job.requestedBy,
      method: job.method,
      params_json: JSON.stringify(job.params),
      progress_json: JSON.stringify(job.progress),
      checkpoint_json: job.checkpoint === null ? null : JSON.stringify(job.checkpoint),
      report_json: job.report === null ? null : JSON.stringify(job.report),
      error: job.error,
      created_at: t,
      updated_at: t,
    });
    return toJob(this.q.job.get(job.jobId)!);
  }

  async updateJob(jobId: string, patch: Partial<Pick<JobRecord, 'state' | 'progress' | 'checkpoint' | 'report' | 'error'>>): Promise<JobRecord> {
    this.requireNotClosed();
    return this.writeJob(jobId, patch);
  }

  private writeJob(jobId: string, patch: Partial<Pick<JobRecord, 'state' | 'progress' | 'checkpoint' | 'report' | 'error'>>): JobRecord {
    const row = this.q.job.get(jobId);
    if (!row) throw new HistoryError(`unknown job ${jobId}`);
    const cur = toJob(row);
    const next = { ...cur, ...patch };
    this.q.updateJob.run({
      job_id: jobId,
      state: next.state,
      progress_json: JSON.stringify(next.progress),
      checkpoint_json: next.checkpoint === null || next.checkpoint === undefined ? null : JSON.stringify(next.checkpoint),
      report_json: next.report === null || next.report === undefined ? null : JSON.stringify(next.report),
      error: next.error ?? null,
      updated_at: this.now(),
    });
    return toJob(this.q.job.get(jobId)!);
  }

  async appendJobStep(jobId: string, step: JobStep, checkpoint: unknown, roundId?: string): Promise<void> {
    this.requireNotClosed();
    checkJobStep(jobId, step.step);
    if (!this.q.job.get(jobId)) throw new HistoryError(`unknown job ${jobId}`);
    if (roundId !== undefined) await this.syncStaged(roundId);
    const staged = roundId === undefined ? [] : [...(this.staged.get(roundId) ?? [])].filter(([, e]) => e.done && e.durable);
    this.db.transaction(() => {
      if (this.q.setJobCheckpoint.run(JSON.stringify(checkpoint), this.now(), jobId).changes === 0) throw new HistoryError(`unknown job ${jobId}`);
      this.q.putJobStep.run(jobId, step.step, JSON.stringify(step.data));
      for (const [clientId, e] of staged) {
        this.q.putJobStaged.run({ job_id: jobId, round_id: roundId!, client_id: clientId, encoding: e.encoding, blob: e.rel, bytes: e.bytes, blob_sha256: e.blobSha });
      }
    })();
  }

  async jobSteps(jobId: string): Promise<JobStep[]> {
    this.requireNotClosed();
    return this.q.jobSteps.all(jobId).map((r) => ({ step: r.step, data: JSON.parse(r.data_json) as unknown }));
  }

  async clearJobSteps(jobId: string): Promise<void> {
    this.requireNotClosed();
    const staged = this.q.jobStagedOfJob.all(jobId);
    this.db.transaction(() => {
      this.q.deleteJobSteps.run(jobId);
      this.q.deleteJobStaged.run(jobId);
    })();
    for (const r of staged) this.dropStagedFiles(r.round_id, r.client_id);
    // Files of a previous run (not staged in this process) are unreferenced now; the next open would sweep them.
    for (const r of staged) fs.rmSync(this.blobs.fileOf(r.blob), { force: true });
  }

  async getJob(jobId: string): Promise<JobRecord | null> {
    this.requireNotClosed();
    const row = this.q.job.get(jobId);
    return row ? toJob(row) : null;
  }

  async listJobs(opts: { state?: JobRecord['state'] } = {}): Promise<JobRecord[]> {
    this.requireNotClosed();
    return (opts.state === undefined ? this.q.jobs.all() : this.q.jobsInState.all(opts.state)).map(toJob);
  }

  // --- clients ------------------------------------------------------------------------------------------------

  async upsertClient(c: { clientId: string; secretHash?: string | null; numExamples?: number; seenAt: number; forgotten?: boolean; revoked?: boolean }): Promise<ClientRecord> {
    this.requireNotClosed();
    const cur = this.q.client.get(c.clientId);
    this.q.putClient.run({
      client_id: c.clientId,
      secret_hash: c.secretHash !== undefined ? c.secretHash : (cur?.secret_hash ?? null),
      num_examples: c.numExamples ?? cur?.num_examples ?? 0,
      // 0 is "never seen" (a credential issued to a client that has not connected yet): any real sighting replaces it.
      first_seen: !cur || cur.first_seen === 0 ? c.seenAt : c.seenAt > 0 ? Math.min(cur.first_seen, c.seenAt) : cur.first_seen,
      last_seen: cur ? Math.max(cur.last_seen, c.seenAt) : c.seenAt,
      forgotten: c.forgotten !== undefined ? (c.forgotten ? 1 : 0) : (cur?.forgotten ?? 0),
      revoked: c.revoked !== undefined ? (c.revoked ? 1 : 0) : (cur?.revoked ?? 0),
    });
    const row = this.q.client.get(c.clientId)!;
    if (row.forgotten !== 0) this.forgotten.add(c.clientId);
    else this.forgotten.delete(c.clientId);
    return toClient(row);
  }

  async getClient(clientId: string): Promise<ClientRecord | null> {
    this.requireNotClosed();
    const row = this.q.client.get(clientId);
    return row ? toClient(row) : null;
  }

  async listClients(): Promise<ClientRecord[]> {
    this.requireNotClosed();
    return this.q.clients.all().map(toClient);
  }

  async isForgotten(clientId: string): Promise<boolean> {
    this.requireNotClosed();
    return this.forgotten.has(clientId);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Staged files are left to the next open's garbage collection, like after a crash.
    this.staged.clear();
    this.db.close();
    if (this.ownsBlobs) await this.blobs.close();
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

  private checkNewRoundId(roundId: string): void {
    checkNewRoundId(roundId, typeof roundId === 'string' && roundId !== '' && this.q.roundById.get(roundId) !== undefined);
  }

  /**
   * Clears every blob file that no committed row refers to (stagings of rounds that never committed, temporary files
   * of interrupted writes, blobs of commits whose transaction never landed, or of commits the database lost) and
   * empty round directories. Temporary files are deleted (never complete by construction); every other orphan is
   * moved to <data>/quarantine/<time>/ keeping its path, never deleted, and the log says what moved where: an orphan
   * may be the only copy of a commit the database lost.
   */
  private collectGarbage(): void {
    const referenced = new Set(this.q.referencedBlobs.all().map((r) => r.blob));
    const quarantine = path.join(this.dataDir, QUARANTINE_DIR, new Date(this.now()).toISOString().replace(/[:.]/g, '-'));
    const moved: string[] = [];
    let movedBytes = 0;
    let temporary = 0;
    const sweep = (relDir: string): boolean => {
      const dir = this.blobs.fileOf(relDir);
      if (!fs.existsSync(dir)) return true;
      let changed = false;
      let remaining = 0;
      for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
        const rel = relDir === '' ? ent.name : `${relDir}/${ent.name}`;
        if (ent.isDirectory()) {
          if (sweep(rel) && relDir === 'updates') {
            fs.rmdirSync(this.blobs.fileOf(rel));
            changed = true;
          } else remaining++;
        } else if (!referenced.has(rel)) {
          if (ent.name.includes(TEMP_MARK)) {
            fs.rmSync(this.blobs.fileOf(rel), { force: true });
            temporary++;
          } else {
            const to = path.join(quarantine, rel);
            ensureDirSync(path.dirname(to), this.disk);
            movedBytes += fs.statSync(this.blobs.fileOf(rel)).size;
            fs.renameSync(this.blobs.fileOf(rel), to);
            moved.push(rel);
          }
          changed = true;
        } else remaining++;
      }
      if (changed) fsyncPathSync(dir, this.disk);
      return remaining === 0;
    };
    sweep('models');
    sweep('updates');
    if (moved.length > 0) {
      fsyncPathSync(path.dirname(quarantine), this.disk);
      this.log?.warn(
        { files: moved.length, bytes: movedBytes, quarantine, models: moved.filter((f) => f.startsWith('models/')).length, list: moved.slice(0, 50) },
        'history garbage collection: blob files no committed record refers to were moved to quarantine (uncommitted stagings after a crash, or blobs of lost commits); delete the folder once it is not needed',
      );
    }
    if (temporary > 0) this.log?.info({ files: temporary }, 'history garbage collection: deleted temporary files of interrupted writes');
  }
}


const littleEndian = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;


