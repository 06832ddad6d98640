import { EventEmitter } from 'node:events';
import { nanoid } from 'nanoid';
import type { AggregationStrategy } from '../aggregation/strategy.js';
import { onSchedule, type HistoryStore, type JobRecord, type ModelVersion, type PurgeSummary, type RoundRecord } from '../history/store.js';
import type { Logger } from '../logger.js';
import { TaskKind, type Missing, type TaskDispatcher } from '../rounds/dispatcher.js';
import { addCost, federatedStep, zeroCost, type WorkCost } from '../rounds/federated-step.js';
import type { FederationConfig, ModelCache } from '../rounds/round-engine.js';
import { roundSelectionKey, selectClients } from '../rounds/selection.js';
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

interface Checkpoint {
  rounds: (Omit<ReplayedRound, 'weights'> & { weightsFile: string })[];
  cost: WorkCost;
  phase: 'method' | 'tune';
}

export const OFFLINE_POLICY =
  'clients that are offline or miss the deadline are left out of that step, and the example weights are renormalised over those who answered; a step nobody answers is skipped';

export interface EngineEvents {
  progress: [JobRecord];
  finished: [JobRecord];
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

  /** Clients of finished forget jobs: they never take part in training again. */
  forgottenClients(): Set<string> {
    const out = new Set<string>();
    for (const j of this.deps.store.listJobs({ state: 'done' })) for (const c of j.clientIds) out.add(c);
    return out;
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
      const resume = checkpoint ? this.restore(checkpoint, current.weights.layout.totalSize) : null;
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
      const after = store.commitUnlearning({
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
      });
      const purged = await store.purgeClients([...forgotten], { eraseModels: this.deps.eraseModels });
      current.version = after.version;
      current.weights = { layout: current.weights.layout, values: tune.weights };
      const report = this.report(record, method, params, before, after, tune.rounds, tune.cost, purged, [...result.notes], started);
      this.scratch.remove(job.jobId);
      record = store.updateJob(job.jobId, {
        state: 'done',
        progress: { step: record.progress.total, total: record.progress.total, message: 'done' },
        checkpoint: null,
        report,
      });
      log.info({ jobId: job.jobId, method: method.name, before: before.version, after: after.version, ms: report.wallTimeMs }, 'forget job done');
    } catch (e) {
      if (signal.aborted) throw e; // shutting down: the job stays running and resumes after a restart
      log.error({ jobId: job.jobId, err: e }, 'forget job failed');
      record = store.updateJob(job.jobId, { state: 'failed', error: (e as Error).message, checkpoint: null });
      this.scratch.remove(job.jobId);
    }
    this.emit('finished', record);
    return record;
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
      // A tuning round is round done.length + 1 of the lineage this job creates (at position lineageCount(), jobs run
      // one at a time): selected like any round, never keyed on the random job id, so a rerun selects the same clients.
      const key = roundSelectionKey(store.lineageCount(), done.length + 1, 1);
      const selected = selectClients(candidates, config.clientsPerRound, config.seed, key);
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

  private async saveCheckpoint(jobId: string, done: ReplayedRound[], cost: WorkCost, phase: Checkpoint['phase']): Promise<void> {
    const prev = (this.deps.store.getJob(jobId)?.checkpoint as Checkpoint | null)?.rounds ?? [];
    const rounds = done.map(({ weights, ...rest }, i) => ({
      ...rest,
      // Steps only ever append, so a step's model is written once, by the first checkpoint that holds it.
      weightsFile: prev[i]?.weightsFile ?? this.scratch.writeWeights(jobId, i, weights),
    }));
    this.deps.store.updateJob(jobId, { checkpoint: { rounds, cost, phase } satisfies Checkpoint });
  }

  private restore(c: Checkpoint, size: number): { rounds: ReplayedRound[]; cost: WorkCost } {
    return {
      rounds: c.rounds.map(({ weightsFile, ...r }) => ({ ...r, weights: this.scratch.readWeights(weightsFile, size) })),
      cost: c.cost,
    };
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
