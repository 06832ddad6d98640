import { EventEmitter } from 'node:events';
import { ErrorCode, layerNorms, ProtocolError } from '@fedunlearn/protocol';
import { newId } from '../ids.js';
import type { AggregationStrategy } from '../aggregation/strategy.js';
import { onSchedule, type FederationMeta, type HistoryStore, type JobRecord, type ModelVersion, type ParticipantInput, type PurgeSummary, type RoundRecord, type UnlearningRoundInput } from '../history/store.js';
import type { Logger } from '../logger.js';
import { TaskKind, type Missing, type TaskDispatcher } from '../rounds/dispatcher.js';
import { addCost, federatedStep, zeroCost, type StepRunner, type WorkCost } from '../rounds/federated-step.js';
import { localClients, type FederationClients } from '../rounds/federation-clients.js';

/** How often a job waiting for offline clients looks at where clients are connected (other replicas' presence). */
const CLIENT_POLL_MS = 1_000;
import type { FederationConfig, ModelCache } from '../rounds/round-engine.js';
import { roundSelectionKey, selectClients } from '../rounds/selection.js';
import type { ClientRegistry } from '../transport/client-registry.js';
import { FedEraser } from './federaser.js';
import { FedRecover } from './fedrecover.js';
import { METHOD_NAMES, resolveParams, type SifuCertificate, type MethodContext, type MethodName, type MethodParams, type MethodResult, type ReplayedRound, type ResolvedParams, type UnlearningMethod } from './method.js';
import { ServerReplay } from './replay.js';
import { Retrain } from './retrain.js';
import { Sifu, startOutsideSegments } from './sifu.js';
import { DEFAULT_JOB_OFFLINE, type JobOfflineSettings, type JobWaiting } from './offline.js';
import { JobScratch } from './scratch.js';
import { withSensitivities } from '../rounds/sensitivity.js';
import type { BlobStore } from '../history/blob-store.js';

export * from './offline.js';

export interface ForgetJobInput {
  clientIds: string[];
  method?: MethodName;
  params?: MethodParams;
  /** `client:<id>` for a client's own request, `operator:<name>` for the API. */
  requestedBy: string;
}

/** One replayed step in a report. */
export interface ReportedRound {
  sourceRound: number;
  /** Its round number in the new lineage (after the kept rounds). */
  round: number;
  calibrated: string[];
  /** Participants applied from their stored updates without fresh work: every one of a server-side replay, and the
   *  clients an offline policy 'server-side' completed. */
  uncalibrated: string[];
  /** FedRecover: participants whose update the server estimated (no client work). */
  estimated?: string[];
  /** FedRecover: of `estimated`, those whose exact update was wanted but who were offline or did not answer. */
  keptEstimate?: string[];
  missing: Missing[];
}

/** How the client updates a job applied were obtained, over its replayed and tuning rounds. */
export interface UpdateCounts {
  /** Computed by the client in this job (TRAIN or CALIBRATE). */
  exact: number;
  /** Estimated on the server (FedRecover). */
  estimated: number;
  /** Applied from the stored update as it was (server-side replay, offline completion). */
  stored: number;
}

/** The certificate of one forget job. */
export interface JobReport {
  jobId: string;
  clientsForgotten: string[];
  requestedBy: string;
  method: MethodName;
  exact: boolean;
  /** The parameters applied, defaults included. */
  params: ResolvedParams;
  /** False when no forgotten client took part in the current model's history: the model was left as it was. */
  contributionRemoved: boolean;
  modelBefore: { version: string; sha256: string; round: number };
  modelAfter: { version: string; sha256: string; round: number };
  /** The first round of the replaced lineage in which a forgotten client took part; null when none did. */
  t0: number | null;
  /** The model the method started from (retrain: the initial model; the others: the model before t0). */
  startModel: { version: string; sha256: string; round: number } | null;
  /** Rounds 1..roundsKeptExact of the replaced lineage were kept as they were (they never saw the forgotten clients). */
  roundsKeptExact: number;
  exactPrefix: { fromRound: number; toRound: number } | null;
  roundsReplayed: ReportedRound[];
  updates: UpdateCounts;
  tuneRounds: number;
  cost: WorkCost & { bytesOnWire: number };
  wallTimeMs: number;
  purged: PurgeSummary;
  /** The offline policy in force, the wait budget and how much of it the job spent. */
  offline: JobOfflineSettings & { waitedMs: number; completedServerSide: string[] };
  offlinePolicy: string;
  /** SIFU: epsilon, delta, sigma, the rollback round, the bound, the constants and the assumptions. */
  certificate?: SifuCertificate;
  notes: string[];
  startedAt: number;
  finishedAt: number;
}

/** A running job's checkpoint (small: the steps are rows of their own, appended one at a time). */
interface Checkpoint {
  cost: WorkCost;
  phase: 'method' | 'tune';
  /** Steps persisted (HistoryStore.jobSteps). */
  steps: number;
  /** Checkpoints written before steps had rows of their own held every step here. */
  rounds?: StepData[];
  /** Phase 'tune': what the method returned besides its rounds. */
  kept?: number;
  startedFrom?: string;
  notes?: string[];
  certificate?: SifuCertificate;
}

/** One persisted step: the replayed round without its weights, which are in the job's scratch file. */
type StepData = Omit<ReplayedRound, 'weights'> & { weightsFile: string };

function describePolicy(o: JobOfflineSettings): string {
  const wait = `a step whose clients are offline waits for them (at most ${Math.round(o.waitMs / 1000)} s over the whole job)`;
  const then =
    o.policy === 'fail'
      ? 'then a step below its quorum fails the job with nothing changed, and offline clients of a step with its quorum are left out of it'
      : 'then a calibration step completes its offline clients from their stored updates, uncalibrated (exact methods fail instead)';
  return `${wait}; ${then}; clients that drop or miss the deadline during a step are left out of it and the example weights renormalised over those who answered; a step nobody answers is skipped`;
}

/** A job's wait budget ran out and the offline policy says to stop: the job fails with nothing changed. */
class OfflineClientsError extends Error {}

/** Where a job can be stopped on purpose (a test hook: the crash tests kill the process there). */
export type JobPausePoint = 'job-step' | 'job-commit' | 'job-done';

/** How the end of a job waits for its purge to reach the disk when a reader blocks the WAL checkpoint. */
export interface PurgeRetry {
  /** The job retries the checkpoint this long before it reports `purge incomplete` (ms). */
  waitMs: number;
  /** ...then a background retry runs this often until it completes (ms). */
  everyMs: number;
}

export const DEFAULT_PURGE_RETRY: PurgeRetry = { waitMs: 5_000, everyMs: 5_000 };

/** The note a report carries while its purge is incomplete (removed once it completes). */
export const PURGE_INCOMPLETE_NOTE =
  'purge incomplete: a reader (e.g. a backup) holds an old snapshot of history.db, so its write-ahead log still holds pre-purge pages; the checkpoint is retried until it completes';

export interface EngineEvents {
  progress: [JobRecord];
  finished: [JobRecord];
  /** A finished job's purge reached the disk after its report said `purge incomplete`. */
  purged: [JobRecord];
}

/**
 * Runs forget jobs one at a time, at round boundaries (the caller holds the coordinator's work lock): runs the
 * method over the live fleet, optionally tunes with ordinary rounds, commits the result as a new model version in a
 * new lineage whose history is the updates that were applied, purges the forgotten clients' data, and writes the
 * report. A job interrupted by a restart resumes from its last checkpointed step.
 */
export class UnlearningEngine extends EventEmitter<EngineEvents> {
  private readonly methods: Map<MethodName, UnlearningMethod>;
  private readonly scratch: JobScratch;
  /** Steps persisted per running job (so a checkpoint appends only the new ones). */
  private readonly saved = new Map<string, number>();
  private purgeTimer: NodeJS.Timeout | null = null;
  private readonly clients: FederationClients;
  private readonly step: StepRunner;

  constructor(
    private readonly deps: {
      store: HistoryStore;
      registry: ClientRegistry;
      dispatcher: TaskDispatcher;
      strategy: AggregationStrategy;
      config: FederationConfig;
      /** Where job checkpoints (each step's model) are kept, under `jobs/<jobId>/`. */
      checkpoints: BlobStore;
      /** Erase the weights of the model versions the forgotten clients contributed to (CoordinatorOptions.modelsAfterForget). */
      eraseModels: boolean;
      /** Waiting for offline clients and what follows it (default DEFAULT_JOB_OFFLINE). */
      offline?: JobOfflineSettings;
      log: Logger;
      purgeRetry?: PurgeRetry;
      /** Test hook: resolves when the job may go on (the crash tests never resolve it and kill the process). */
      pause?: (point: JobPausePoint) => Promise<void>;
      /** Where clients are connected (default: this process's registry; a cluster: every replica). */
      clients?: FederationClients;
      /** How a step reaches its clients (default: this process's dispatcher, federatedStep). */
      step?: StepRunner;
    },
  ) {
    super();
    this.clients = deps.clients ?? localClients(deps.registry);
    this.step = deps.step ?? ((args) => federatedStep(deps.dispatcher, deps.strategy, args));
    this.methods = new Map<MethodName, UnlearningMethod>([
      ['federaser', new FedEraser()],
      ['replay', new ServerReplay()],
      ['retrain', new Retrain('retrain')],
      ['rollback', new Retrain('rollback')],
      ['sifu', new Sifu()],
      ['fedrecover', new FedRecover()],
    ]);
    this.scratch = new JobScratch(deps.checkpoints);
  }

  private get offline(): JobOfflineSettings {
    return this.deps.offline ?? DEFAULT_JOB_OFFLINE;
  }

  /**
   * Validates and persists a forget request as a queued job. Submissions run one at a time (`submitting`): with an
   * asynchronous store, two requests checked concurrently could both find no job in progress and both create one.
   * A request identical to a job in progress (same clients, method and parameters) is answered with that job
   * (`created: false`). Throws ProtocolError UNKNOWN_CLIENT, INVALID_ARGUMENT (already forgotten), JOB_CONFLICT when a
   * job in progress already covers some of the clients otherwise, and FORGET_REFUSED when the job could only fail or
   * do harm (see `refusal`); RangeError on bad input.
   */
  submit(input: ForgetJobInput): Promise<{ job: JobRecord; created: boolean }> {
    const run = this.submitting.then(() => this.submitNow(input));
    this.submitting = run.catch(() => undefined);
    return run;
  }

  /** The tail of the submission queue (see submit). One process's queue: a store shared by several coordinators
   *  needs its own exclusion around job creation. */
  private submitting: Promise<unknown> = Promise.resolve();

  private async submitNow(input: ForgetJobInput): Promise<{ job: JobRecord; created: boolean }> {
    const { store } = this.deps;
    const method = input.method ?? 'federaser';
    if (!METHOD_NAMES.includes(method)) throw new RangeError(`unknown method '${method}' (allowed: ${METHOD_NAMES.join(', ')})`);
    const clientIds = [...new Set(input.clientIds)];
    if (clientIds.length === 0) throw new RangeError('a forget job needs at least one client id');
    const params = normaliseParams(input.params ?? {});
    const records = await Promise.all(clientIds.map((id) => store.getClient(id)));
    const unknown = clientIds.filter((_, i) => !records[i]);
    if (unknown.length > 0) throw new ProtocolError(ErrorCode.UNKNOWN_CLIENT, `unknown client(s): ${unknown.join(', ')}`);
    // Jobs in progress are read BEFORE the tombstones: a job that ends meanwhile sets its tombstones in the same
    // transaction as 'done', so a job missing from this read has tombstoned its clients before the read below.
    const existing = await this.inProgressFor(clientIds);
    const forgotten = await Promise.all(clientIds.map((id) => store.isForgotten(id)));
    const already = clientIds.filter((_, i) => forgotten[i]);
    if (already.length > 0 && !existing) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, `already forgotten: ${already.join(', ')}`);
    if (existing) {
      const same = sameSet(existing.clientIds, clientIds) && existing.method === method && canonicalJson(existing.params) === canonicalJson(params);
      if (same) return { job: existing, created: false };
      const overlap = existing.clientIds.filter((id) => clientIds.includes(id));
      throw new ProtocolError(
        ErrorCode.JOB_CONFLICT,
        `${overlap.join(', ')} ${overlap.length === 1 ? 'is' : 'are'} already being forgotten by job ${existing.jobId} (${existing.method}, ${existing.state}, clients ${existing.clientIds.join(', ')}); wait for it to end, or ask for exactly its clients, method and parameters to follow it`,
      );
    }
    const refused = await this.refusal(clientIds, method, params);
    if (refused) throw new ProtocolError(ErrorCode.FORGET_REFUSED, refused);
    const job = await store.createJob({
      jobId: newId(),
      kind: 'forget',
      state: 'queued',
      clientIds,
      requestedBy: input.requestedBy,
      method,
      params: params as Record<string, unknown>,
      progress: { step: 0, total: 0, message: 'queued' },
      checkpoint: null,
      report: null,
      error: null,
    });
    this.deps.log.info({ jobId: job.jobId, method, clients: clientIds.length, requestedBy: input.requestedBy }, 'forget job queued');
    return { job, created: true };
  }

  /** The queued or running job that covers any of `clientIds`, if one does (at most one can: submit refuses overlaps). */
  async inProgressFor(clientIds: readonly string[]): Promise<JobRecord | null> {
    const wanted = new Set(clientIds);
    return (await this.pending()).find((j) => j.clientIds.some((id) => wanted.has(id))) ?? null;
  }

  /**
   * Why a forget request must be refused now, with nothing changed, or null. What can be known at submission is
   * refused at submission: a job that would leave no client at all, or none of those that took part in the current
   * model's history (nobody could replay or retrain it: the result could only be the initial model, or a failure);
   * and `replay` when no stored full update of a remaining client exists from t0 on (it re-applies stored updates
   * and has no other input).
   */
  private async refusal(clientIds: string[], method: MethodName, params: MethodParams): Promise<string | null> {
    const { store } = this.deps;
    const wanted = new Set(clientIds);
    const others = (await store.listClients()).filter((c) => !c.forgotten && !wanted.has(c.clientId));
    if (others.length === 0) return `every client of the federation (${clientIds.length}) would be forgotten: no client would be left to train the model; nothing was changed`;
    const rounds = await store.listRounds();
    const first = rounds.findIndex((r) => r.participants.some((p) => wanted.has(p.clientId)));
    // Nothing of theirs is in the model: the job only tombstones and purges, whatever the method.
    if (first < 0) return null;
    const tookPart = new Set(rounds.flatMap((r) => r.participants.map((p) => p.clientId)));
    const left = [...tookPart].filter((id) => !wanted.has(id));
    if (left.length === 0) {
      return `every client that took part in the current model's history (${tookPart.size}) would be forgotten: no remaining client could replay or retrain it; nothing was changed`;
    }
    if (method === 'fedrecover') {
      // FedRecover estimates each remaining participant's update of every round from t0 on from its stored one.
      if ((await store.meta()).config.retention === 'norms') {
        return "method 'fedrecover' estimates client updates from the stored ones, and this history keeps none (retention 'norms'); use federaser (it needs only the norms), rollback or retrain; nothing was changed";
      }
      const unstored = rounds.slice(first).filter((r) => !r.updatesStored);
      if (unstored.length > 0) {
        return `method 'fedrecover' needs the full updates of every round it replays (history interval 1), and rounds ${preview(unstored.map((r) => String(r.round)), unstored.length)} from round ${rounds[first]!.round} on kept none; use replay, federaser, rollback or retrain; nothing was changed`;
      }
    }
    if (method === 'replay') {
      if ((await store.meta()).config.retention === 'norms') {
        return "method 'replay' re-applies stored client updates, and this history keeps none (retention 'norms'); use federaser (it needs only the norms), rollback or retrain; nothing was changed";
      }
      const from = params.fullHistory ? 0 : first;
      const any = rounds.slice(from).some((r) => r.participants.some((p) => p.hasUpdate && !wanted.has(p.clientId)));
      if (!any) return `method 'replay' re-applies stored client updates, and no remaining client's update is stored from round ${rounds[from]!.round} on; use federaser, rollback or retrain; nothing was changed`;
    }
    return null;
  }

  /** Jobs to run, oldest first: interrupted ones (running) before queued ones. */
  async pending(): Promise<JobRecord[]> {
    const { store } = this.deps;
    return [...(await store.listJobs({ state: 'running' })), ...(await store.listJobs({ state: 'queued' }))].sort((a, b) => a.createdAt - b.createdAt);
  }

  /**
   * After a (re)start: removes the scratch of jobs that ended (a crash may have come between a job's commit and the
   * removal) and resumes the background retry of purges a reader kept from completing.
   */
  async recover(): Promise<void> {
    await this.scratch.sweep(new Set((await this.pending()).map((j) => j.jobId)));
    if ((await this.incompletePurges()).length > 0) this.schedulePurgeRetry();
  }

  /** Stops the background purge retry (the coordinator is stopping; a restart resumes it). */
  close(): void {
    this.closed = true;
    if (this.purgeTimer) clearTimeout(this.purgeTimer);
    this.purgeTimer = null;
  }

  /** Set by close: a retry whose store reads were in flight then does not schedule another. */
  private closed = false;

  /** Done jobs whose report says the purge has not reached the disk yet. */
  async incompletePurges(): Promise<JobRecord[]> {
    return (await this.deps.store.listJobs({ state: 'done' })).filter((j) => (j.report as JobReport | null)?.purged?.complete === false);
  }

  async run(job: JobRecord, current: ModelCache, signal: AbortSignal): Promise<JobRecord> {
    const { store, log } = this.deps;
    const started = Date.now();
    const method = this.methods.get(job.method as MethodName)!;
    const params = job.params as MethodParams;
    const forgotten = new Set(job.clientIds);
    const before = await store.head();
    const meta = await store.meta();
    const wait = { spentMs: 0, serverSide: new Set<string>() };
    let record = await store.updateJob(job.jobId, { state: 'running', progress: { step: 0, total: 0, message: 'starting' } });
    this.emit('progress', record);
    try {
      const checkpoint = job.checkpoint as Checkpoint | null;
      const resume = checkpoint ? await this.restore(job.jobId, checkpoint, current.weights.layout.totalSize) : null;
      this.saved.set(job.jobId, resume?.rounds.length ?? 0);
      const rounds = await store.listRounds();
      // t0: every model before it never saw the forgotten clients. Without such a round there is nothing to remove.
      const t0 = rounds.findIndex((r) => r.participants.some((p) => forgotten.has(p.clientId)));
      // Never start inside an earlier SIFU job's unperturbed rounds (their models carry its clients' contribution).
      const first = startOutsideSegments(rounds, t0);
      let result: MethodResult | null = null;
      let tune: { rounds: ReplayedRound[]; cost: WorkCost; weights: Float32Array } | null = null;
      let after = before;
      let purgeComplete = false;
      if (first >= 0) {
        const { ctx, flush } = this.context(record, meta, forgotten, rounds, first, wait, signal, resume && checkpoint?.phase === 'method' ? resume : null, (r) => (record = r));
        result =
          resume && checkpoint?.phase === 'tune'
            ? { weights: resume.rounds.at(-1)!.weights, kept: checkpoint.kept ?? 0, startedFrom: checkpoint.startedFrom ?? '', rounds: resume.rounds, cost: resume.cost, notes: checkpoint.notes ?? [], ...(checkpoint.certificate ? { certificate: checkpoint.certificate } : {}) }
            : await method.run(ctx, params);
        await flush();
        const answered = result.rounds.reduce((n, r) => n + r.participants.length, 0);
        if (result.rounds.length > 0 && answered === 0) {
          // Committing would publish a model nobody recomputed (the start model); refuse rather than mislead.
          throw new Error('no remaining client answered any step of the replay; the job cannot produce a model');
        }
        const m = result;
        tune = await this.tune(record, m.rounds, m.cost, m.weights, forgotten, params.tuneRounds ?? 0, signal, (r) => (record = r), { kept: m.kept, startedFrom: m.startedFrom, notes: m.notes, ...(m.certificate ? { certificate: m.certificate } : {}) });
        const kept = await this.carryOver(rounds.slice(0, m.kept), tune.rounds.length === 0, forgotten);
        const intermediate = tune.rounds.slice(0, -1).map((r, i) => ({ round: m.kept + i + 1, weights: r.weights }));
        await this.deps.pause?.('job-commit');
        interrupted(signal);
        // The new head, the purge of the forgotten clients' rows, their tombstones and the job's end commit in ONE
        // transaction: a crash at any point either leaves the job running (it resumes and commits) or finds it done,
        // its clients forgotten. Nothing can leave a new head without the purge, or a purge without `done`.
        const t = tune;
        // Read before the commit: the report is computed inside its transaction, where the store cannot be awaited.
        const startModel = await store.getModel(m.startedFrom);
        const finished = await store.finishUnlearning({
          jobId: job.jobId,
          weights: t.weights,
          rounds: [
            ...kept,
            ...t.rounds.map((r, i) => ({
              round: m.kept + i + 1,
              roundId: r.roundId,
              // The model the replay started from (before t0, or the initial one): a later job on the new lineage
              // replays from it in turn (with '' its first round had no known start, and a second job could not run).
              modelBefore: i === 0 && m.rounds.length > 0 ? m.startedFrom : '',
              participants: r.participants,
              missing: r.missing,
              metrics: { ...r.metrics, sourceRound: r.sourceRound },
              startedAt: r.startedAt,
              closedAt: r.closedAt,
            })),
          ],
          intermediateModels: intermediate,
          purge: { clientIds: [...forgotten], eraseModels: this.deps.eraseModels },
          finish: (after, purged) => ({
            state: 'done',
            progress: { step: record.progress.total, total: record.progress.total, message: 'done' },
            report: this.report(record, method, params, before, after, rounds, first, m, startModel, t, purged, wait, started, [
              ...(first !== t0 ? [`started before round ${rounds[first]!.round}, not at t0 = round ${rounds[t0]!.round}: the rounds between hold an earlier sifu job's forgotten clients' contribution without its noise`] : []),
              PURGE_INCOMPLETE_NOTE,
            ]),
          }),
        });
        current.version = finished.model.version;
        current.weights = { layout: current.weights.layout, values: t.weights };
        record = finished.job;
        after = finished.model;
        purgeComplete = finished.purged.complete;
      } else {
        // No contribution to remove: the model stays as it is (same version and sha256); the clients are still purged
        // and tombstoned. The purge is idempotent, so a crash before `done` re-runs this branch on resume.
        const purged = await store.purgeClients([...forgotten], { eraseModels: this.deps.eraseModels });
        record = await store.updateJob(job.jobId, {
          state: 'done',
          progress: { step: record.progress.total, total: record.progress.total, message: 'done' },
          checkpoint: null,
          report: this.report(record, method, params, before, before, rounds, first, null, null, null, { ...purged, complete: false }, wait, started, [PURGE_INCOMPLETE_NOTE]),
        });
        await store.clearJobSteps(job.jobId);
        purgeComplete = purged.complete;
      }
      this.saved.delete(job.jobId);
      // Idempotent, and a crash before it leaves a directory the next start's sweep removes.
      await this.scratch.remove(job.jobId);
      await this.deps.pause?.('job-done');
      record = await this.settlePurge(record, purgeComplete, signal);
      log.info({ jobId: job.jobId, method: method.name, before: before.version, after: after.version, ms: (record.report as JobReport).wallTimeMs }, 'forget job done');
    } catch (e) {
      const now = await store.getJob(job.jobId);
      if (signal.aborted && now?.state !== 'done') throw e; // shutting down: the job stays running and resumes after a restart
      if (now?.state === 'done') {
        // The job committed; what failed came after (the purge's checkpoint); its report says the purge is incomplete.
        log.error({ jobId: job.jobId, err: e }, 'forget job done, but its purge did not complete');
        record = now;
      } else {
        log.error({ jobId: job.jobId, err: e }, 'forget job failed');
        // Nothing of a failed job stays behind: the updates its completed steps staged are dropped with its steps.
        record = await store.updateJob(job.jobId, { state: 'failed', error: (e as Error).message, checkpoint: null, progress: { ...record.progress, message: 'failed' } });
        await store.clearJobSteps(job.jobId);
        await this.scratch.remove(job.jobId);
      }
      this.saved.delete(job.jobId);
    }
    this.emit('finished', record);
    return record;
  }

  /**
   * The rounds before t0 as rounds of the new lineage: the same records, their models referenced (not copied), their
   * stored updates staged again under fresh round ids (round ids are unique across lineages). When nothing follows
   * them, the last one's model is the job's result, which the commit writes.
   */
  private async carryOver(kept: RoundRecord[], lastIsResult: boolean, forgotten: ReadonlySet<string>): Promise<UnlearningRoundInput[]> {
    const { store } = this.deps;
    const out: UnlearningRoundInput[] = [];
    for (const [i, whole] of kept.entries()) {
      const roundId = newId();
      // Only SIFU keeps rounds a forgotten client took part in (their models carry its bounded contribution): its rows
      // do not follow it into the new lineage, whose models it therefore never shaped (the purge erases the old ones).
      const src = { ...whole, participants: whole.participants.filter((p) => !forgotten.has(p.clientId)), missing: whole.missing.filter((m) => !forgotten.has(m.clientId)) };
      for (const p of src.participants) {
        const u = p.hasUpdate ? await store.readUpdate(src.roundId, p.clientId) : null;
        if (u) await store.stageUpdate(roundId, p.clientId, u);
      }
      const participants: ParticipantInput[] = src.participants.map((p) => ({
        clientId: p.clientId,
        numExamples: p.numExamples,
        norms: p.norms,
        ...(p.metrics ? { metrics: p.metrics } : {}),
        ...(p.sensitivity !== undefined ? { sensitivity: p.sensitivity } : {}),
      }));
      const last = i === kept.length - 1;
      out.push({
        round: src.round,
        roundId,
        modelBefore: src.modelBefore,
        modelAfter: last && lastIsResult ? '' : src.modelAfter,
        participants,
        missing: src.missing,
        metrics: src.metrics,
        startedAt: src.startedAt,
        closedAt: src.closedAt,
      });
    }
    return out;
  }

  /**
   * The purge's rows are gone; its bytes leave the disk when the WAL checkpoint completes. Retries it (without ever
   * waiting on a reader) for purgeRetry.waitMs, then leaves the report saying `purge incomplete` and a background
   * retry running until it completes.
   */
  private async settlePurge(record: JobRecord, complete: boolean, signal: AbortSignal): Promise<JobRecord> {
    const { store } = this.deps;
    const retry = this.deps.purgeRetry ?? DEFAULT_PURGE_RETRY;
    const deadline = Date.now() + retry.waitMs;
    while (!complete && Date.now() < deadline && !signal.aborted) {
      await sleep(Math.min(200, retry.waitMs), signal);
      complete = await store.completePurge();
    }
    if (complete) return this.markPurged(record);
    this.deps.log.warn({ jobId: record.jobId }, 'purge incomplete: a reader holds an old snapshot of the history; retrying in the background');
    this.schedulePurgeRetry();
    return record;
  }

  private markPurged(record: JobRecord): Promise<JobRecord> {
    const report = record.report as JobReport;
    return this.deps.store.updateJob(record.jobId, {
      report: { ...report, purged: { ...report.purged, complete: true }, notes: report.notes.filter((n) => n !== PURGE_INCOMPLETE_NOTE) } satisfies JobReport,
    });
  }

  private schedulePurgeRetry(): void {
    if (this.purgeTimer || this.closed) return;
    const every = (this.deps.purgeRetry ?? DEFAULT_PURGE_RETRY).everyMs;
    const tick = async () => {
      this.purgeTimer = null;
      try {
        const waiting = await this.incompletePurges();
        if (waiting.length === 0) return;
        if (!(await this.deps.store.completePurge())) {
          if (this.closed) return;
          this.purgeTimer = setTimeout(tick, every);
          this.purgeTimer.unref();
          return;
        }
        for (const j of waiting) {
          const r = await this.markPurged(j);
          this.deps.log.info({ jobId: j.jobId }, 'purge completed');
          this.emit('purged', r);
        }
      } catch (e) {
        // The store closed under a stopping coordinator: the next start resumes the retry.
        this.deps.log.warn({ err: e }, 'purge retry failed');
      }
    };
    this.purgeTimer = setTimeout(tick, every);
    this.purgeTimer.unref();
  }

  private context(
    job: JobRecord,
    meta: FederationMeta,
    forgotten: Set<string>,
    rounds: RoundRecord[],
    firstContribution: number,
    wait: { spentMs: number; serverSide: Set<string> },
    signal: AbortSignal,
    resume: { rounds: ReplayedRound[]; cost: WorkCost } | null,
    setRecord: (r: JobRecord) => void,
  ): { ctx: MethodContext; flush: () => Promise<void> } {
    const { store, dispatcher, strategy, config } = this.deps;
    const method = this.methods.get(job.method as MethodName)!;
    // Under 'norms' no round keeps its full updates, yet the per-layer norms FedEraser needs are there on every round:
    // the replay points are then the scheduled training rounds, and every round of a lineage an earlier job replayed.
    // Otherwise they are the rounds that hold stored updates (rounds an earlier job kept carry theirs over).
    const storedRounds = rounds.filter((r) =>
      meta.config.retention === 'norms' ? Number.isFinite(r.metrics.sourceRound) || onSchedule(meta.config, r.round) : r.updatesStored && r.participants.some((p) => p.hasUpdate),
    );
    // Progress is reported synchronously by the methods but written asynchronously: the writes are queued in order,
    // and `flush` (awaited by every step, checkpoint and the end of the method) surfaces the first that failed.
    let writes: Promise<void> = Promise.resolve();
    let failed: { error: unknown } | null = null;
    const progress = (step: number, total: number, message: string, waiting?: JobWaiting) => {
      writes = writes.then(async () => {
        if (failed) return;
        try {
          const r = await store.updateJob(job.jobId, { progress: { step, total, message, ...(waiting ? { waiting } : {}) } });
          setRecord(r);
          this.emit('progress', r);
        } catch (e) {
          failed = { error: e };
        }
      });
    };
    const flush = async () => {
      await writes;
      if (failed) throw failed.error;
    };
    let last = { step: 0, total: 0, message: '' };
    const ctx: MethodContext = {
      forgotten,
      rounds,
      storedRounds,
      firstContribution,
      layout: meta.layout,
      topologyJson: meta.topologyJson,
      hyper: config.hyper,
      seed: config.seed,
      readModel: (v) => store.readModel(v),
      readUpdate: (roundId, clientId) => store.readUpdate(roundId, clientId),
      connected: (ids) => ids.filter((id) => this.deps.registry.get(id) !== undefined),
      step: async (args) => {
        await flush();
        const online = await this.awaitClients(args.clientIds, wait, signal, (w) => progress(last.step, last.total, waitingMessage(w), w));
        if (online.waited) progress(last.step, last.total, last.message);
        await flush();
        interrupted(signal);
        const offline = args.clientIds.filter((id) => !online.connected.has(id));
        const quorum = Math.min(config.minClients, args.clientIds.length);
        const completeServerSide = this.offline.policy === 'server-side' && !method.exact && args.kind === TaskKind.CALIBRATE && args.source !== undefined;
        if (online.connected.size < quorum && !completeServerSide) {
          throw new OfflineClientsError(
            `${offline.length} of the ${args.clientIds.length} clients of replay step ${args.round} stayed offline (${preview(offline)}) after waiting ${Math.round(wait.spentMs / 1000)} s in all; ` +
              `only ${online.connected.size} connected, ${quorum} needed; offline policy '${this.offline.policy}'${method.exact ? ` (the exact method ${method.name} is never completed server-side)` : ''}: the job stops with nothing changed`,
          );
        }
        const roundId = newId();
        const res = await this.step({
          clientIds: completeServerSide ? args.clientIds.filter((id) => online.connected.has(id)) : args.clientIds,
          model: args.model,
          modelVersion: `${job.jobId}/${args.round}`,
          topologyJson: meta.topologyJson,
          round: args.round,
          hyper: args.hyper ?? config.hyper,
          seed: args.seed,
          deadlineMs: config.roundDeadlineMs,
          jobId: job.jobId,
          kind: args.kind ?? TaskKind.TRAIN,
          ...(args.transform ? { transform: args.transform } : {}),
          ...(args.calibrateTo ? { calibrateTo: args.calibrateTo } : {}),
          stageAs: { store, roundId },
          signal,
        });
        // A step cut short by shutdown must not count as a step nobody answered: the job stops here and resumes
        // from its last checkpoint after the restart.
        interrupted(signal);
        if (!completeServerSide || offline.length === 0) return { ...res, roundId, serverSide: [] };
        const completed = await this.completeServerSide(args.model.values, res, offline, args.source!, roundId);
        for (const id of completed.serverSide) wait.serverSide.add(id);
        return { ...completed, roundId };
      },
      stage: (roundId, clientId, update) => store.stageUpdate(roundId, clientId, update),
      newRoundId: () => newId(),
      progress: (step, total, message) => {
        last = { step, total, message };
        progress(step, total, message);
      },
      resume,
      checkpoint: async (done, cost) => {
        await flush();
        await this.saveCheckpoint(job.jobId, done, cost, 'method');
      },
      signal,
    };
    return { ctx, flush };
  }

  /**
   * Waits while fewer than the quorum (min(minClients, n)) of `clientIds` are connected, as long as the job's wait
   * budget (JobOfflineSettings.waitMs, over the whole job) lasts, reporting who is missing through `show` at the start
   * and whenever one of them connects. Returns the clients connected at the end.
   */
  private async awaitClients(
    clientIds: string[],
    wait: { spentMs: number },
    signal: AbortSignal,
    show: (w: JobWaiting) => void,
  ): Promise<{ connected: Set<string>; waited: boolean }> {
    const { registry, config } = this.deps;
    const connectedNow = async () => {
      const here = new Set(await this.clients.connected());
      return new Set(clientIds.filter((id) => here.has(id)));
    };
    const needed = Math.min(config.minClients, clientIds.length);
    let connected = await connectedNow();
    if (connected.size >= needed || wait.spentMs >= this.offline.waitMs || clientIds.length === 0) return { connected, waited: false };
    const since = Date.now();
    const until = since + (this.offline.waitMs - wait.spentMs);
    const wanted = new Set(clientIds);
    const describe = (): JobWaiting => {
      const missing = clientIds.filter((id) => !connected.has(id));
      return { clientIds: missing.slice(0, 50), missing: missing.length, connected: connected.size, of: clientIds.length, needed, since, until, policy: this.offline.policy };
    };
    show(describe());
    await new Promise<void>((resolve) => {
      let finished = false;
      const done = () => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        clearInterval(poll);
        registry.off('joined', changed);
        registry.off('left', changed);
        signal.removeEventListener('abort', done);
        resolve();
      };
      // Sessions of this process are heard at once; those of other replicas (a cluster's presence) by polling.
      const recheck = async () => {
        const before = connected.size;
        connected = await connectedNow().catch(() => connected);
        if (finished) return;
        if (connected.size >= needed) return done();
        if (connected.size !== before) show(describe());
      };
      const changed = (s: { clientId: string }) => {
        if (wanted.has(s.clientId)) void recheck();
      };
      const timer = setTimeout(done, until - since);
      const poll = setInterval(() => void recheck(), CLIENT_POLL_MS);
      registry.on('joined', changed);
      registry.on('left', changed);
      signal.addEventListener('abort', done);
    });
    wait.spentMs += Date.now() - since;
    return { connected: await connectedNow(), waited: true };
  }

  /**
   * Completes a calibration step with the offline clients' updates stored in the round it replays (FedAccum-style,
   * uncalibrated), folded into the example-weighted mean with the calibrated answers: the new model is
   * M + (n_live * (M_live - M) + sum_k n_k u_k) / (n_live + sum_k n_k). Those without a stored update stay missing.
   */
  private async completeServerSide(
    model: Float32Array,
    res: Awaited<ReturnType<typeof federatedStep>>,
    offline: string[],
    source: RoundRecord,
    roundId: string,
  ): Promise<Awaited<ReturnType<typeof federatedStep>> & { serverSide: string[] }> {
    const { store } = this.deps;
    const layout = (await store.meta()).layout;
    const n = model.length;
    const live = res.participants.reduce((a, p) => a + p.numExamples, 0);
    const sum = new Float64Array(n);
    if (res.weights) for (let i = 0; i < n; i++) sum[i] = live * (res.weights[i]! - model[i]!);
    let total = live;
    const participants = [...res.participants];
    const missing = res.missing.filter((m) => !offline.includes(m.clientId));
    const serverSide: string[] = [];
    for (const clientId of offline) {
      const p = source.participants.find((q) => q.clientId === clientId);
      const u = p?.hasUpdate ? await store.readUpdate(source.roundId, clientId) : null;
      if (!p || !u) {
        missing.push({ clientId, reason: 'offline', detail: 'offline after the wait, and no stored update to complete its step from' });
        continue;
      }
      for (let i = 0; i < n; i++) sum[i] = sum[i]! + p.numExamples * u[i]!;
      total += p.numExamples;
      await store.stageUpdate(roundId, clientId, u);
      participants.push({ clientId, numExamples: p.numExamples, norms: Array.from(layerNorms(layout, u)) });
      serverSide.push(clientId);
    }
    if (serverSide.length > 0) await store.syncStaged(roundId);
    if (total === 0) return { ...res, participants, missing, serverSide };
    const weights = new Float32Array(n);
    for (let i = 0; i < n; i++) weights[i] = model[i]! + sum[i]! / total;
    // The aggregate changed: the sensitivities the step computed for its live answers no longer hold.
    return { ...res, weights, participants: withSensitivities(participants, model, weights), missing, serverSide };
  }

  private async tune(
    job: JobRecord,
    rounds: ReplayedRound[],
    cost: WorkCost,
    weights: Float32Array,
    forgotten: Set<string>,
    n: number,
    signal: AbortSignal,
    setRecord: (r: JobRecord) => void,
    method: Pick<Checkpoint, 'kept' | 'startedFrom' | 'notes' | 'certificate'>,
  ): Promise<{ rounds: ReplayedRound[]; cost: WorkCost; weights: Float32Array }> {
    const { store, registry, dispatcher, strategy, config } = this.deps;
    const meta = await store.meta();
    const done = [...rounds];
    const already = done.filter((r) => r.sourceRound === 0).length;
    let model = weights;
    for (let i = already; i < n; i++) {
      const r = await store.updateJob(job.jobId, { progress: { step: i, total: n, message: `tuning round ${i + 1} of ${n}` } });
      setRecord(r);
      this.emit('progress', r);
      const candidates = (await this.clients.connected()).filter((id) => !forgotten.has(id));
      // A tuning round is round done.length + 1 of the lineage this job creates (at position lineageCount(), jobs run
      // one at a time): selected like any round, never keyed on the random job id, so a rerun selects the same clients.
      const key = roundSelectionKey(await store.lineageCount(), done.length + 1, 1);
      const selected = selectClients(candidates, config.clientsPerRound, config.seed, key);
      const roundId = newId();
      const startedAt = Date.now();
      const res = await this.step({
        clientIds: selected,
        model: { layout: meta.layout, values: model },
        modelVersion: `${job.jobId}/tune/${i + 1}`,
        topologyJson: meta.topologyJson,
        round: done.length + 1,
        hyper: config.hyper,
        seed: config.seed * 1_000_003 + 500_000 + i,
        deadlineMs: config.roundDeadlineMs,
        jobId: job.jobId,
        stageAs: { store, roundId },
        signal,
      });
      interrupted(signal);
      cost = addCost(cost, res.cost);
      model = res.weights ?? model;
      done.push({ sourceRound: 0, roundId, participants: res.participants, missing: res.missing, uncalibrated: [], metrics: res.metrics, startedAt, closedAt: Date.now(), weights: model });
      await this.saveCheckpoint(job.jobId, done, cost, 'tune', method);
    }
    return { rounds: done, cost, weights: model };
  }

  /** Persists the steps not persisted yet: each step's model once (its scratch file), each step's row once. */
  private async saveCheckpoint(jobId: string, done: ReplayedRound[], cost: WorkCost, phase: Checkpoint['phase'], method: Pick<Checkpoint, 'kept' | 'startedFrom' | 'notes' | 'certificate'> = {}): Promise<void> {
    const from = this.saved.get(jobId) ?? 0;
    for (let i = from; i < done.length; i++) {
      const { weights, ...rest } = done[i]!;
      const weightsFile = await this.scratch.writeWeights(jobId, i, weights);
      await this.deps.store.appendJobStep(jobId, { step: i, data: { ...rest, weightsFile } satisfies StepData }, { cost, phase, steps: i + 1, ...method } satisfies Checkpoint, rest.roundId);
      this.saved.set(jobId, i + 1);
      await this.deps.pause?.('job-step');
    }
  }

  private async restore(jobId: string, c: Checkpoint, size: number): Promise<{ rounds: ReplayedRound[]; cost: WorkCost }> {
    const steps = c.rounds ?? (await this.deps.store.jobSteps(jobId)).map((s) => s.data as StepData);
    const rounds: ReplayedRound[] = [];
    for (const { weightsFile, ...r } of steps) rounds.push({ ...r, weights: await this.scratch.readWeights(jobId, weightsFile, size) });
    return { rounds, cost: c.cost };
  }

  private report(
    job: JobRecord,
    method: UnlearningMethod,
    params: MethodParams,
    before: ModelVersion,
    after: ModelVersion,
    rounds: RoundRecord[],
    first: number,
    result: MethodResult | null,
    start: ModelVersion | null,
    tune: { rounds: ReplayedRound[]; cost: WorkCost } | null,
    purged: PurgeSummary,
    wait: { spentMs: number; serverSide: Set<string> },
    started: number,
    extraNotes: string[] = [],
  ): JobReport {
    const finishedAt = Date.now();
    const kept = result?.kept ?? 0;
    // SIFU keeps rounds past t0 (bounded, not exact): only those before t0 count as the exact prefix.
    const exactKept = Math.min(kept, Math.max(first, 0));
    const cost = tune?.cost ?? zeroCost();
    const notes = [...(result?.notes ?? [])];
    const applied = tune?.rounds ?? [];
    const updates: UpdateCounts = { exact: 0, estimated: 0, stored: 0 };
    for (const r of applied) {
      const server = r.uncalibrated.length + (r.estimated?.length ?? 0);
      updates.exact += r.participants.length - server;
      updates.estimated += r.estimated?.length ?? 0;
      updates.stored += r.uncalibrated.length;
    }
    notes.push(...extraNotes);
    if (first < 0) notes.unshift(`no contribution to remove: ${job.clientIds.join(', ')} took part in no round of the current model's history; the model was left as it was, and what was stored of them purged`);
    return {
      jobId: job.jobId,
      clientsForgotten: job.clientIds,
      requestedBy: job.requestedBy,
      method: method.name,
      exact: method.exact,
      params: resolveParams(method.name, params),
      contributionRemoved: first >= 0,
      modelBefore: { version: before.version, sha256: before.sha256, round: before.round },
      modelAfter: { version: after.version, sha256: after.sha256, round: after.round },
      t0: first >= 0 ? rounds[first]!.round : null,
      startModel: start ? { version: start.version, sha256: start.sha256, round: start.round } : null,
      roundsKeptExact: exactKept,
      exactPrefix: exactKept > 0 ? { fromRound: rounds[0]!.round, toRound: rounds[exactKept - 1]!.round } : null,
      roundsReplayed: applied.map((r, i) => ({
        sourceRound: r.sourceRound,
        round: kept + i + 1,
        calibrated: r.participants.map((p) => p.clientId).filter((id) => !r.uncalibrated.includes(id) && !r.estimated?.includes(id)),
        uncalibrated: r.uncalibrated,
        ...(r.estimated ? { estimated: r.estimated, keptEstimate: r.keptEstimate ?? [] } : {}),
        missing: r.missing,
      })),
      updates,
      tuneRounds: params.tuneRounds ?? 0,
      cost: { ...cost, bytesOnWire: cost.bytesIn + cost.bytesOut },
      wallTimeMs: finishedAt - started,
      purged,
      offline: { ...this.offline, waitedMs: wait.spentMs, completedServerSide: [...wait.serverSide] },
      offlinePolicy: describePolicy(this.offline),
      ...(result?.certificate ? { certificate: result.certificate } : {}),
      notes,
      startedAt: started,
      finishedAt,
    };
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });
}

function interrupted(signal: AbortSignal): void {
  if (signal.aborted) throw new Error('the coordinator is stopping; the job resumes from its last completed step');
}

function normaliseParams(p: MethodParams): MethodParams {
  const out: MethodParams = {};
  if (p.calibrationRatio !== undefined) {
    if (!(p.calibrationRatio > 0 && p.calibrationRatio <= 10)) throw new RangeError(`calibrationRatio must be in (0, 10], got ${p.calibrationRatio}`);
    out.calibrationRatio = p.calibrationRatio;
  }
  if (p.reuseFirstRound !== undefined) out.reuseFirstRound = Boolean(p.reuseFirstRound);
  if (p.tuneRounds !== undefined) {
    if (!Number.isInteger(p.tuneRounds) || p.tuneRounds < 0 || p.tuneRounds > 1000) throw new RangeError(`tuneRounds must be an integer in [0, 1000], got ${p.tuneRounds}`);
    out.tuneRounds = p.tuneRounds;
  }
  if (p.fullHistory !== undefined) out.fullHistory = Boolean(p.fullHistory);
  // SIFU's constants (unlearning/sifu.ts): bad input is refused at submission, not when the job runs.
  const open = (name: 'epsilon' | 'delta', v: number | undefined) => {
    if (v === undefined) return;
    if (typeof v !== 'number' || !(v > 0 && v < 1)) throw new RangeError(`${name} must be a number in (0, 1), got ${v}`);
    out[name] = v;
  };
  open('epsilon', p.epsilon);
  open('delta', p.delta);
  for (const name of ['sigma', 'lipschitz', 'smoothness'] as const) {
    const v = p[name];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !(v > 0 && v <= 1e6)) throw new RangeError(`${name} must be a number in (0, 1e6], got ${v}`);
    out[name] = v;
  }
  const ints: [keyof MethodParams & ('warmupRounds' | 'correctionPeriod' | 'finalTuningRounds' | 'lbfgsMemory'), number, number][] = [
    ['warmupRounds', 0, 100_000],
    ['correctionPeriod', 1, 100_000],
    ['finalTuningRounds', 0, 100_000],
    ['lbfgsMemory', 1, 64],
  ];
  for (const [k, lo, hi] of ints) {
    const v = p[k];
    if (v === undefined) continue;
    if (!Number.isInteger(v) || v < lo || v > hi) throw new RangeError(`${k} must be an integer in [${lo}, ${hi}], got ${v}`);
    out[k] = v;
  }
  if (p.abnormalityThreshold !== undefined) {
    if (!(p.abnormalityThreshold > 0 && Number.isFinite(p.abnormalityThreshold))) throw new RangeError(`abnormalityThreshold must be positive and finite, got ${p.abnormalityThreshold}`);
    out.abnormalityThreshold = p.abnormalityThreshold;
  }
  return out;
}

/** Progress text while a step waits for its clients. */
function waitingMessage(w: JobWaiting): string {
  const left = Math.max(0, Math.round((w.until - Date.now()) / 1000));
  const then = w.policy === 'fail' ? 'then the job fails with nothing changed' : 'then offline clients are completed from their stored updates';
  return `waiting for clients: ${w.connected} of ${w.of} connected, ${w.needed} needed (offline: ${preview(w.clientIds, w.missing)}); up to ${left} s more, ${then}`;
}

function preview(ids: string[], total = ids.length): string {
  const shown = ids.slice(0, 5).join(', ');
  return total > 5 ? `${shown} and ${total - 5} more` : shown;
}

function sameSet(a: readonly string[], b: readonly string[]): boolean {
  const s = new Set(a);
  return s.size === new Set(b).size && b.every((x) => s.has(x));
}

/** JSON with sorted keys, to compare parameter objects. */
function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o)
    .filter((k) => o[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
    .join(',')}}`;
}
