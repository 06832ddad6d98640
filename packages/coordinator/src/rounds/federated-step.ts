import { layerNorms, type FlatWeights } from '@fedunlearn/protocol';
import type { AggregationStrategy } from '../aggregation/strategy.js';
import type { HistoryStore, ParticipantInput } from '../history/store.js';
import { TaskKind, type Answer, type HyperParameters, type Missing, type TaskDispatcher } from './dispatcher.js';

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

/** Where the coordinator's own time in one step went (milliseconds; the rest of a step is clients and sockets). */
export interface StepTiming {
  /** Encoding the model once and queueing every task on its socket. */
  sendMs: number;
  /** Decoding and validating the updates. */
  decodeMs: number;
  /** Per-layer norms, calibration transform and folding into the aggregate. */
  aggregateMs: number;
  /** Durably staging the updates of a round that keeps them (fsynced blob files). */
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
  /** Rewrites each answer's delta before it is aggregated and staged (FedEraser's calibration). */
  transform?(answer: Answer & { delta: Float32Array }): Float32Array;
  signal?: AbortSignal;
}

/**
 * One federated step: the clients train from `model`, their deltas are folded into a streaming aggregation as they
 * arrive, and the new model is the aggregate applied to `model`. Used by training rounds and by unlearning alike.
 */
export async function federatedStep(dispatcher: TaskDispatcher, strategy: AggregationStrategy, args: StepArgs): Promise<StepResult> {
  const layout = args.model.layout;
  const agg = strategy.begin(layout);
  const participants: ParticipantInput[] = [];
  const sums: Record<string, number> = {};
  let samples = 0;
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
        const delta = args.transform ? args.transform(a as Answer & { delta: Float32Array }) : a.delta;
        if (args.stageAs) {
          const s0 = performance.now();
          await args.stageAs.store.stageUpdate(args.stageAs.roundId, a.clientId, delta);
          stageMs += performance.now() - s0;
        }
        agg.add(delta, a.numExamples);
        participants.push({ clientId: a.clientId, numExamples: a.numExamples, norms: Array.from(layerNorms(layout, delta)), metrics: a.metrics });
        for (const [k, v] of Object.entries(a.metrics)) sums[k] = (sums[k] ?? 0) + v * a.numExamples;
        samples += a.metrics.samples ?? 0;
        aggregateMs += performance.now() - t0 - (stageMs - stagedBefore);
      },
    },
  );
  const metrics: Record<string, number> = {};
  if (agg.count > 0) {
    for (const [k, v] of Object.entries(sums)) if (k !== 'samples' && k !== 'steps') metrics[k] = v / agg.totalExamples;
  }
  const applyStart = performance.now();
  const weights = agg.count > 0 ? agg.apply(args.model.values) : null;
  aggregateMs += performance.now() - applyStart;
  return {
    weights,
    participants,
    missing: res.missing,
    metrics,
    cost: { clientSampleEpochs: samples, bytesOut: res.bytesOut, bytesIn: res.bytesIn, tasks: args.clientIds.length },
    timing: { sendMs: res.sendMs, decodeMs: res.decodeMs, aggregateMs, stageMs },
  };
}
