import { EventEmitter } from 'node:events';
import { nanoid } from 'nanoid';
import type { AggregationStrategy } from '../aggregation/strategy.js';
import { onSchedule, type HistoryStore, type JobRecord, type ModelVersion, type PurgeSummary, type RoundRecord } from '../history/store.js';
import type { Logger } from '../logger.js';
import { TaskKind, type Missing, type TaskDispatcher } from '../rounds/dispatcher.js';
import { addCost, federatedStep, zeroCost, type WorkCost } from '../rounds/federated-step.js';
import type { FederationConfig, ModelCache } from '../rounds/round-engine.js';
import { selectClients } from '../rounds/selection.js';
import type { ClientRegistry } from '../transport/client-registry.js';
import { FedEraser } from './federaser.js';
import { METHOD_NAMES, type MethodContext, type MethodName, type MethodParams, type ReplayedRound, type UnlearningMethod } from './method.js';
import { ServerReplay } from './replay.js';
import { Retrain } from './retrain.js';
import { JobScratch } from './scratch.js';

export interface ForgetJobInput {
  clientIds: string[];
  method?: MethodName;
  params?: MethodParams;
  /** `client:<id>` for a client's own request, `operator:<name>` for the API. */
  requestedBy: string;
}

/** The certificate of one forget job. */
export interface JobReport {
  jobId: string;
  clientsForgotten: string[];
  requestedBy: string;
  method: MethodName;
  exact: boolean;
  params: MethodParams;
  modelBefore: { version: string; sha256: string; round: number };
  modelAfter: { version: string; sha256: string; round: number };
  roundsReplayed: {
    sourceRound: number;
    round: number;
    calibrated: string[];
    uncalibrated: string[];
    missing: Missing[];
  }[];
  tuneRounds: number;
  cost: WorkCost & { bytesOnWire: number };
  wallTimeMs: number;
  purged: PurgeSummary;
  offlinePolicy: string;
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
}

/** One persisted step: the replayed round without its weights, which are in the job's scratch file. */
type StepData = Omit<ReplayedRound, 'weights'> & { weightsFile: string };

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

export const OFFLINE_POLICY =
  'clients that are offline or miss the deadline are left out of that step, and the example weights are renormalised over those who answered; a step nobody answers is skipped';

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

  constructor(
    private readonly deps: {
      store: HistoryStore;
      registry: ClientRegistry;
      dispatcher: TaskDispatcher;
      strategy: AggregationStrategy;
      config: FederationConfig;
      scratchDir: string;
      /** Erase the weights of the model versions the forgotten clients contributed to (CoordinatorOptions.modelsAfterForget). */
      eraseModels: boolean;
      log: Logger;
      purgeRetry?: PurgeRetry;
      /** Test hook: resolves when the job may go on (the crash tests never resolve it and kill the process). */
      pause?: (point: JobPausePoint) => Promise<void>;
    },
  ) {
    super();
    this.methods = new Map<MethodName, UnlearningMethod>([
      ['federaser', new FedEraser()],
      ['replay', new ServerReplay()],
      ['retrain', new Retrain('retrain')],
      ['rollback', new Retrain('rollback')],
    ]);
    this.scratch = new JobScratch(deps.scratchDir);
  }

  /** Validates and persists a forget request as a queued job. */
  submit(input: ForgetJobInput): JobRecord {
    const method = input.method ?? 'federaser';
    if (!METHOD_NAMES.includes(method)) throw new RangeError(`unknown method '${method}' (allowed: ${METHOD_NAMES.join(', ')})`);
    const clientIds = [...new Set(input.clientIds)];
    if (clientIds.length === 0) throw new RangeError('a forget job needs at least one client id');
    const params = normaliseParams(input.params ?? {});
    // Known now, so refused now (it used to fail after replaying every step with nothing to apply).
    if (method === 'replay' && this.deps.store.meta().config.retention === 'norms') {
      throw new RangeError("method 'replay' re-applies stored updates, and this federation keeps norms only (retention 'norms'): use 'federaser', 'retrain' or 'rollback'");
    }
    const job = this.deps.store.createJob({
      jobId: nanoid(),
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
    return job;
  }

  /** Jobs to run, oldest first: interrupted ones (running) before queued ones. */
  pending(): JobRecord[] {
    const { store } = this.deps;
    return [...store.listJobs({ state: 'running' }), ...store.listJobs({ state: 'queued' })].sort((a, b) => a.createdAt - b.createdAt);
  }

  /**
   * After a (re)start: removes the scratch of jobs that ended (a crash may have come between a job's commit and the
   * removal) and resumes the background retry of purges a reader kept from completing.
   */
  recover(): void {
    this.scratch.sweep(new Set(this.pending().map((j) => j.jobId)));
    if (this.incompletePurges().length > 0) this.schedulePurgeRetry();
  }

  /** Stops the background purge retry (the coordinator is stopping; a restart resumes it). */
  close(): void {
    if (this.purgeTimer) clearTimeout(this.purgeTimer);
    this.purgeTimer = null;
  }

  /** Done jobs whose report says the purge has not reached the disk yet. */
  incompletePurges(): JobRecord[] {
    return this.deps.store.listJobs({ state: 'done' }).filter((j) => (j.report as JobReport | null)?.purged?.complete === false);
  }

  async run(job: JobRecord, current: ModelCache, signal: AbortSignal): Promise<JobRecord> {
    const { store, log } = this.deps;
    const started = Date.now();
    const method = this.methods.get(job.method as MethodName)!;
    const params = job.params as MethodParams;
    const forgotten = new Set(job.clientIds);
    const before = store.head();
    let record = store.updateJob(job.jobId, { state: 'running', progress: { step: 0, total: 0, message: 'starting' } });
    this.emit('progress', record);
    try {
      const checkpoint = job.checkpoint as Checkpoint | null;
      const resume = checkpoint ? await this.restore(job.jobId, checkpoint, current.weights.layout.totalSize) : null;
      this.saved.set(job.jobId, resume?.rounds.length ?? 0);
      const rounds = store.listRounds();
      const ctx = this.context(record, forgotten, rounds, signal, resume && checkpoint?.phase === 'method' ? resume : null, (r) => (record = r));
      const result = resume && checkpoint?.phase === 'tune' ? { weights: resume.rounds.at(-1)!.weights, rounds: resume.rounds, cost: resume.cost, notes: [] as string[] } : await method.run(ctx, params);
      const answered = result.rounds.reduce((n, r) => n + r.participants.length, 0);
      if (result.rounds.length > 0 && answered === 0) {
        // Committing would publish a model nobody recomputed (the initial one); refuse rather than mislead.
        throw new Error('no remaining client answered any step of the replay; the job cannot produce a model');
      }
      const tune = await this.tune(record, result.rounds, result.cost, result.weights, forgotten, params.tuneRounds ?? 0, signal, (r) => (record = r));
      const intermediate = tune.rounds.slice(0, -1).map((r, i) => ({ round: i + 1, weights: r.weights }));
      await this.deps.pause?.('job-commit');
      interrupted(signal);
      const notes = [...result.notes];
      // The new head, the purge of the forgotten clients' rows, their tombstones and the job's end commit in ONE
      // transaction: a crash at any point either leaves the job running (it resumes and commits) or finds it done,
      // its clients forgotten. Nothing can leave a new head without the purge, or a purge without `done`.
      const finished = await store.finishUnlearning({
        jobId: job.jobId,
        weights: tune.weights,
        rounds: tune.rounds.map((r, i) => ({
          round: i + 1,
          roundId: r.roundId,
          // Every method replays from the model the lineage started with; recording it lets a later job on the new
          // lineage replay it in turn (with '' its first round had no known start, and a second job could not run).
          modelBefore: i === 0 && result.rounds.length > 0 ? (rounds[0]?.modelBefore ?? '') : '',
          participants: r.participants,
          missing: r.missing,
          metrics: { ...r.metrics, sourceRound: r.sourceRound },
          startedAt: r.startedAt,
          closedAt: r.closedAt,
        })),
        intermediateModels: intermediate,
        purge: { clientIds: [...forgotten], eraseModels: this.deps.eraseModels },
        finish: (after, purged) => ({
          state: 'done',
          progress: { step: record.progress.total, total: record.progress.total, message: 'done' },
          report: this.report(record, method, params, before, after, tune.rounds, tune.cost, purged, [...notes, PURGE_INCOMPLETE_NOTE], started),
        }),
      });
      current.version = finished.model.version;
      current.weights = { layout: current.weights.layout, values: tune.weights };
      record = finished.job;
      this.saved.delete(job.jobId);
      // Idempotent, and a crash before it leaves a directory the next start's sweep removes.
      await this.scratch.remove(job.jobId);
      await this.deps.pause?.('job-done');
      record = await this.settlePurge(record, finished.purged.complete, signal);
      log.info({ jobId: job.jobId, method: method.name, before: before.version, after: finished.model.version, ms: (record.report as JobReport).wallTimeMs }, 'forget job done');
    } catch (e) {
      if (signal.aborted && store.getJob(job.jobId)?.state !== 'done') throw e; // shutting down: the job stays running and resumes after a restart
      if (store.getJob(job.jobId)?.state === 'done') {
        // The job committed; what failed came after (the purge's checkpoint); its report says the purge is incomplete.
        log.error({ jobId: job.jobId, err: e }, 'forget job done, but its purge did not complete');
        record = store.getJob(job.jobId)!;
      } else {
        log.error({ jobId: job.jobId, err: e }, 'forget job failed');
        record = store.updateJob(job.jobId, { state: 'failed', error: (e as Error).message, checkpoint: null });
        store.clearJobSteps(job.jobId);
        await this.scratch.remove(job.jobId);
      }
      this.saved.delete(job.jobId);
    }
    this.emit('finished', record);
    return record;
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
      complete = store.completePurge();
    }
    if (complete) return this.markPurged(record);
    this.deps.log.warn({ jobId: record.jobId }, 'purge incomplete: a reader holds an old snapshot of the history; retrying in the background');
    this.schedulePurgeRetry();
    return record;
  }

  private markPurged(record: JobRecord): JobRecord {
    const report = record.report as JobReport;
    return this.deps.store.updateJob(record.jobId, {
      report: { ...report, purged: { ...report.purged, complete: true }, notes: report.notes.filter((n) => n !== PURGE_INCOMPLETE_NOTE) } satisfies JobReport,
    });
  }

  private schedulePurgeRetry(): void {
    if (this.purgeTimer) return;
    const every = (this.deps.purgeRetry ?? DEFAULT_PURGE_RETRY).everyMs;
    const tick = () => {
      this.purgeTimer = null;
      try {
        const waiting = this.incompletePurges();
        if (waiting.length === 0) return;
        if (!this.deps.store.completePurge()) {
          this.purgeTimer = setTimeout(tick, every);
          this.purgeTimer.unref();
          return;
        }
        for (const j of waiting) {
          const r = this.markPurged(j);
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
    forgotten: Set<string>,
    rounds: RoundRecord[],
    signal: AbortSignal,
    resume: { rounds: ReplayedRound[]; cost: WorkCost } | null,
    setRecord: (r: JobRecord) => void,
  ): MethodContext {
    const { store, registry, dispatcher, strategy, config } = this.deps;
    const meta = store.meta();
    // Under 'norms' no round keeps its full updates, yet the per-layer norms FedEraser needs are there on every round:
    // the replay points are then the scheduled training rounds, and every round of a lineage an earlier job replayed.
    const storedRounds = rounds.filter((r) =>
      meta.config.retention === 'norms' ? Number.isFinite(r.metrics.sourceRound) || onSchedule(meta.config, r.round) : r.updatesStored,
    );
    return {
      forgotten,
      rounds,
      storedRounds,
      layout: meta.layout,
      topologyJson: meta.topologyJson,
      hyper: config.hyper,
      seed: config.seed,
      readModel: (v) => store.readModel(v),
      readUpdate: (roundId, clientId) => store.readUpdate(roundId, clientId),
      step: async (args) => {
        // A step whose clients are all away (the fleet still reconnecting after a restart) waits, bounded like a
        // round, for one of them instead of replaying the round with nobody; those still away are missing.
        const wanted = new Set(args.clientIds);
        if (wanted.size > 0) await registry.waitFor(1, config.waitForClientsMs, signal, (id) => wanted.has(id));
        interrupted(signal);
        const roundId = nanoid();
        const res = await federatedStep(dispatcher, strategy, {
          clientIds: args.clientIds,
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
          stageAs: { store, roundId },
          signal,
        });
        // A step cut short by shutdown must not count as a step nobody answered: the job stops here and resumes
        // from its last checkpoint after the restart.
        interrupted(signal);
        return { ...res, roundId };
      },
      stage: (roundId, clientId, update) => store.stageUpdate(roundId, clientId, update),
      newRoundId: () => nanoid(),
      progress: (step, total, message) => {
        const r = store.updateJob(job.jobId, { progress: { step, total, message } });
        setRecord(r);
        this.emit('progress', r);
      },
      resume,
      checkpoint: async (done, cost) => this.saveCheckpoint(job.jobId, done, cost, 'method'),
      signal,
    };
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
  ): Promise<{ rounds: ReplayedRound[]; cost: WorkCost; weights: Float32Array }> {
    const { store, registry, dispatcher, strategy, config } = this.deps;
    const meta = store.meta();
    const done = [...rounds];
    const already = done.filter((r) => r.sourceRound === 0).length;
    let model = weights;
    for (let i = already; i < n; i++) {
      const r = store.updateJob(job.jobId, { progress: { step: i, total: n, message: `tuning round ${i + 1} of ${n}` } });
      setRecord(r);
      this.emit('progress', r);
      const candidates = registry.connected().map((s) => s.clientId).filter((id) => !forgotten.has(id));
      const selected = selectClients(candidates, config.clientsPerRound, config.seed, `${job.jobId}/tune/${i}`);
      const roundId = nanoid();
      const startedAt = Date.now();
      const res = await federatedStep(dispatcher, strategy, {
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
      await this.saveCheckpoint(job.jobId, done, cost, 'tune');
    }
    return { rounds: done, cost, weights: model };
  }

  /** Persists the steps not persisted yet: each step's model once (its scratch file), each step's row once. */
  private async saveCheckpoint(jobId: string, done: ReplayedRound[], cost: WorkCost, phase: Checkpoint['phase']): Promise<void> {
    const from = this.saved.get(jobId) ?? 0;
    for (let i = from; i < done.length; i++) {
      const { weights, ...rest } = done[i]!;
      const weightsFile = await this.scratch.writeWeights(jobId, i, weights);
      await this.deps.store.appendJobStep(jobId, { step: i, data: { ...rest, weightsFile } satisfies StepData }, { cost, phase, steps: i + 1 } satisfies Checkpoint, rest.roundId);
      this.saved.set(jobId, i + 1);
      await this.deps.pause?.('job-step');
    }
  }

  private async restore(jobId: string, c: Checkpoint, size: number): Promise<{ rounds: ReplayedRound[]; cost: WorkCost }> {
    const steps = c.rounds ?? this.deps.store.jobSteps(jobId).map((s) => s.data as StepData);
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
    rounds: ReplayedRound[],
    cost: WorkCost,
    purged: PurgeSummary,
    notes: string[],
    started: number,
  ): JobReport {
    const finishedAt = Date.now();
    return {
      jobId: job.jobId,
      clientsForgotten: job.clientIds,
      requestedBy: job.requestedBy,
      method: method.name,
      exact: method.exact,
      params,
      modelBefore: { version: before.version, sha256: before.sha256, round: before.round },
      modelAfter: { version: after.version, sha256: after.sha256, round: after.round },
      roundsReplayed: rounds.map((r, i) => ({
        sourceRound: r.sourceRound,
        round: i + 1,
        calibrated: r.participants.map((p) => p.clientId).filter((id) => !r.uncalibrated.includes(id)),
        uncalibrated: r.uncalibrated,
        missing: r.missing,
      })),
      tuneRounds: params.tuneRounds ?? 0,
      cost: { ...cost, bytesOnWire: cost.bytesIn + cost.bytesOut },
      wallTimeMs: finishedAt - started,
      purged,
      offlinePolicy: OFFLINE_POLICY,
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
  return out;
}
