import { layerNorms, type FlatWeights } from '@fedunlearn/protocol';
import type { Aggregation, AggregationStrategy } from '../aggregation/strategy.js';
import { calibrateUpdate } from '../unlearning/calibration.js';
import type { HistoryStore, ParticipantInput } from '../history/store.js';
import { TaskKind, type Answer, type HyperParameters, type Missing, type TaskDispatcher } from './dispatcher.js';
import { boundsSensitivity, withSensitivities } from './sensitivity.js';

/** The cost of one piece of federated work, added up in reports. */
export interface WorkCost {
  /** Examples processed by clients (an epoch over n examples counts n). */
  clientSampleEpochs: number;
  bytesOut: number;
  bytesIn: number;
  tasks: number;
}

export function zeroCost(): WorkCost {
  return { clientSampleEpochs: 0, bytesOut: 0, bytesIn: 0, tasks: 0 };
}

export function addCost(a: WorkCost, b: WorkCost): WorkCost {
  return {
    clientSampleEpochs: a.clientSampleEpochs + b.clientSampleEpochs,
    bytesOut: a.bytesOut + b.bytesOut,
    bytesIn: a.bytesIn + b.bytesIn,
    tasks: a.tasks + b.tasks,
  };
}

/**
 * Staging writes in flight at once. Each holds one encoded update until it is written, so this bounds the memory a
 * step holds on top of the running sum, while letting consecutive writes overlap.
 */
export const MAX_STAGING_IN_FLIGHT = 8;
/** Where the coordinator's own time in one step went (milliseconds; the rest of a step is clients and sockets). */
export interface StepTiming {
  /** Encoding the model once and queueing every task on its socket. */
  sendMs: number;
  /** Decoding and validating the updates. */
  decodeMs: number;
  /** Per-layer norms, calibration transform and folding into the aggregate. */
  aggregateMs: number;
  /** Staging of the updates of a round that keeps them (blob files) that the step waited for: writes overlap the
   *  arrival of later answers, so this is the part it could not hide, plus the one fsync of them all at the end. */
  stageMs: number;
}

export interface StepResult {
  /** Null when nobody answered. */
  weights: Float32Array | null;
  participants: ParticipantInput[];
  missing: Missing[];
  metrics: Record<string, number>;
  cost: WorkCost;
  timing: StepTiming;
}

export interface StepArgs {
  clientIds: string[];
  model: FlatWeights;
  modelVersion: string;
  topologyJson: string;
  round: number;
  hyper: HyperParameters;
  seed: number;
  deadlineMs: number;
  jobId?: string;
  kind?: TaskKind;
  /** When set, each accepted update is durably staged under this round id before the step returns. */
  stageAs?: { store: HistoryStore; roundId: string };
  /** Rewrites each answer's delta before it is aggregated and staged (a closure: runs only where the step runs). */
  transform?(answer: Answer & { delta: Float32Array }): Float32Array;
  /**
   * FedEraser's calibration (unlearning/calibration.ts): each answer's delta is rescaled, per layer, to the stored norms
   * of its client. Data, not a closure, so that a replica of a cluster can calibrate its own clients' answers.
   */
  calibrateTo?: ReadonlyMap<string, ArrayLike<number>>;
  signal?: AbortSignal;
}

/** What a step's own clients gave before it is applied: the open aggregation and the participants' records. */
export interface FoldedStep {
  agg: Aggregation;
  participants: ParticipantInput[];
  missing: Missing[];
  cost: WorkCost;
  timing: StepTiming;
}

/** How a step reaches its clients: one process's dispatcher (federatedStep), or every replica of a cluster. */
export type StepRunner = (args: StepArgs) => Promise<StepResult>;

/**
 * One federated step: the clients train from `model`, their deltas are folded into a streaming aggregation as they
 * arrive, and the new model is the aggregate applied to `model`. Used by training rounds and by unlearning alike.
 */
export async function federatedStep(dispatcher: TaskDispatcher, strategy: AggregationStrategy, args: StepArgs): Promise<StepResult> {
  return finishStep(await foldStep(dispatcher, strategy, args), args.model.values, boundsSensitivity(strategy.name));
}

/**
 * The clients' half of a step: tasks sent, answers validated, calibrated, staged (durable when it returns) and
 * folded; not applied. A replica of a cluster sends the aggregation's partial to the leader, which merges and applies.
 */
export async function foldStep(dispatcher: TaskDispatcher, strategy: AggregationStrategy, args: StepArgs): Promise<FoldedStep> {
  const layout = args.model.layout;
  const agg = strategy.begin(layout);
  const participants: ParticipantInput[] = [];
  // Staging runs beside the arrival of the next answers instead of before them: every staging is awaited before the
  // step returns, so the updates are still durable before the round can commit.
  const staging = new Set<Promise<void>>();
  let stagingError: unknown = null;
  let aggregateMs = 0;
  let stageMs = 0;
  const res = await dispatcher.dispatch(
    args.clientIds,
    {
      kind: args.kind ?? TaskKind.TRAIN,
      round: args.round,
      modelVersion: args.modelVersion,
      topologyJson: args.topologyJson,
      weights: args.model,
      hyper: args.hyper,
      seed: args.seed,
      ...(args.jobId ? { jobId: args.jobId } : {}),
    },
    {
      deadlineMs: args.deadlineMs,
      ...(args.signal ? { signal: args.signal } : {}),
      onAnswer: async (a) => {
        if (!a.delta) throw new Error('a training answer carries no delta');
        const t0 = performance.now();
        const stagedBefore = stageMs;
        let staged: Promise<void> | undefined;
        let delta = args.transform ? args.transform(a as Answer & { delta: Float32Array }) : a.delta;
        if (args.calibrateTo) {
          const norms = args.calibrateTo.get(a.clientId);
          if (!norms) throw new Error(`no stored norms to calibrate ${a.clientId}'s update to`);
          calibrateUpdate(layout, delta, norms, delta);
        }
        if (args.stageAs) {
          if (stagingError) throw stagingError;
          const s0 = performance.now();
          while (staging.size >= MAX_STAGING_IN_FLIGHT) await Promise.race(staging);
          // stageUpdate encodes the update before it first awaits: the delta is free for the sum once it returns.
          const p: Promise<void> = args.stageAs.store.stageUpdate(args.stageAs.roundId, a.clientId, delta).then(
            () => void staging.delete(p),
            (e: unknown) => {
              staging.delete(p);
              stagingError ??= e;
            },
          );
          staging.add(p);
          staged = p;
          stageMs += performance.now() - s0;
        }
        agg.add(delta, a.numExamples);
        participants.push({ clientId: a.clientId, numExamples: a.numExamples, norms: Array.from(layerNorms(layout, delta)), metrics: a.metrics });
        aggregateMs += performance.now() - t0 - (stageMs - stagedBefore);
        // The staging write still holds the encoded update: the dispatcher counts it as held (and keeps its upload
        // grant) until it is written.
        return staged ? { until: staged } : undefined;
      },
    },
  );
  const drain = performance.now();
  await Promise.all(staging);
  // The staged files were written without fsync; they become durable here, together, before the step can commit.
  if (args.stageAs && !stagingError && res.answered.length > 0) {
    await args.stageAs.store.syncStaged(args.stageAs.roundId).catch((e: unknown) => {
      stagingError ??= e;
    });
  }
  stageMs += performance.now() - drain;
  if (stagingError) {
    // An update already in the sum could not be made durable: this step cannot be committed as it stands.
    await args.stageAs?.store.discardStaged(args.stageAs.roundId).catch(() => undefined);
    throw stagingError;
  }
  return {
    agg,
    participants,
    missing: res.missing,
    cost: { clientSampleEpochs: 0, bytesOut: res.bytesOut, bytesIn: res.bytesIn, tasks: args.clientIds.length },
    timing: { sendMs: res.sendMs, decodeMs: res.decodeMs, aggregateMs, stageMs },
  };
}

/**
 * Applies a folded step (its aggregation possibly merged with other replicas' partials, its participants theirs too)
 * to `base`: the new model, the participants in id order and their example-weighted metrics; with `sensitivity`
 * (the strategy is a weighted mean: `boundsSensitivity`), each participant's SIFU removal sensitivity.
 */
export function finishStep(folded: FoldedStep, base: Float32Array, sensitivity: boolean): StepResult {
  const { agg, participants } = folded;
  // Answers arrive in whatever order the clients finish: the record, and every float sum over it, follow the
  // clients' ids instead, so the same run gives the same round record and the same metrics.
  participants.sort((a, b) => (a.clientId < b.clientId ? -1 : a.clientId > b.clientId ? 1 : 0));
  const sums: Record<string, number> = {};
  let samples = 0;
  for (const p of participants) {
    for (const [k, v] of Object.entries(p.metrics ?? {})) sums[k] = (sums[k] ?? 0) + v * p.numExamples;
    samples += p.metrics?.samples ?? 0;
  }
  const metrics: Record<string, number> = {};
  if (agg.count > 0) {
    for (const [k, v] of Object.entries(sums)) if (k !== 'samples' && k !== 'steps') metrics[k] = v / agg.totalExamples;
  }
  const applyStart = performance.now();
  const weights = agg.count > 0 ? agg.apply(base) : null;
  const aggregateMs = folded.timing.aggregateMs + performance.now() - applyStart;
  return {
    weights,
    // SIFU's per-client removal sensitivity, from the norms already kept and the step just applied (rounds/sensitivity.ts).
    participants: weights && sensitivity ? withSensitivities(participants, base, weights) : participants,
    missing: folded.missing,
    metrics,
    cost: { ...folded.cost, clientSampleEpochs: samples },
    timing: { ...folded.timing, aggregateMs },
  };
}
