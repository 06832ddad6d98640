import { decodeWeights, ErrorCode, fedunlearn, l2Norm, ProtocolError, type WeightLayout } from '@fedunlearn/protocol';

const TaskKind = fedunlearn.v1.TaskKind;

/**
 * The metrics a client may report with an update, and what each means (the SDK sends these). Anything else is refused
 * (METRIC_NOT_ALLOWED): round metrics are the example-weighted means of these, so a client-chosen key would land among
 * the fields the coordinator records about a round itself (e.g. `sourceRound`, which says which round a replayed round
 * recomputes and decides what FedEraser replays under norms-only retention).
 */
export const CLIENT_METRIC_KEYS: Readonly<Record<string, string>> = {
  loss: 'mean training (or evaluation) loss over the local examples',
  accuracy: 'fraction of local examples classified correctly, in [0, 1]',
  steps: 'optimizer steps taken (>= 0)',
  samples: 'examples processed, an epoch over n examples counting n (>= 0)',
};

/** What the dispatcher knows about the task an update claims to answer. */
export interface OpenTask {
  clientId: string;
  kind: fedunlearn.v1.TaskKind;
  layout: WeightLayout;
  /** The most examples the update may claim (what the client declared at hello, capped); default unbounded. */
  maxExamples?: number;
  /** The largest L2 norm of the delta accepted (UPDATE_NORM_TOO_LARGE above); default unbounded. */
  maxNorm?: number;
}

export interface ValidUpdate {
  /** Null for EVALUATE, which returns metrics only. */
  delta: Float32Array | null;
  /** The delta's L2 norm, accumulated in float64 (0 for EVALUATE). */
  norm: number;
  numExamples: number;
  metrics: Record<string, number>;
}

export type UpdateVerdict =
  | { ok: true; update: ValidUpdate }
  /** `closesTask`: the owner sent a bad answer, so its task ends (a corrected retry is stale); other refusals leave it open. */
  | { ok: false; error: ProtocolError; closesTask: boolean };

/**
 * Decides whether an Update is accepted, as a pure function of the update, its sender and the task it names:
 * `task` is the open task with that id (undefined if none), `closed` whether the id belonged to a task that was
 * answered or expired. Every refusal carries the task id as its ref. `target`, when given, receives the decoded delta
 * (the dispatcher recycles buffers); the caller owns it whatever the verdict.
 */
export function validateUpdate(update: fedunlearn.v1.IUpdate, senderId: string, task: OpenTask | undefined, closed: boolean, target?: Float32Array): UpdateVerdict {
  const taskId = update.taskId ?? '';
  const refuse = (code: ErrorCode, message: string, closesTask = false): UpdateVerdict => ({ ok: false, error: new ProtocolError(code, message, taskId), closesTask });
  if (!task) {
    return closed ? refuse(ErrorCode.STALE_TASK, `task ${taskId} is closed (answered, expired or replaced)`) : refuse(ErrorCode.UNKNOWN_TASK, `no task ${taskId}`);
  }
  if (task.clientId !== senderId) return refuse(ErrorCode.PERMISSION_DENIED, `task ${taskId} was not given to ${senderId}`);
  const numExamples = update.numExamples ?? 0;
  if (!(numExamples > 0)) return refuse(ErrorCode.INVALID_ARGUMENT, `numExamples must be positive, got ${numExamples}`);
  // FedAvg weighs an update by its example count: a client may not claim more than it declared when it joined.
  if (task.maxExamples !== undefined && numExamples > task.maxExamples) {
    return refuse(ErrorCode.TOO_MANY_EXAMPLES, `numExamples ${numExamples} is above the ${task.maxExamples} this client may claim (declared at hello, capped)`, true);
  }
  const metrics: Record<string, number> = {};
  const entries = Object.entries(update.metrics ?? {});
  for (const [k, v] of entries) {
    if (!Object.hasOwn(CLIENT_METRIC_KEYS, k)) {
      return refuse(ErrorCode.METRIC_NOT_ALLOWED, `metric ${JSON.stringify(k.slice(0, 64))} is not accepted from clients (allowed: ${Object.keys(CLIENT_METRIC_KEYS).join(', ')})`, true);
    }
    // A diverging client's NaN loss is dropped, as before: it says nothing to average.
    if (!Number.isFinite(v)) continue;
    if ((k === 'accuracy' && (v < 0 || v > 1)) || ((k === 'steps' || k === 'samples') && v < 0)) {
      return refuse(ErrorCode.INVALID_ARGUMENT, `metric ${k} = ${v} is out of range (${CLIENT_METRIC_KEYS[k]})`, true);
    }
    metrics[k] = v;
  }
  let delta: Float32Array | null = null;
  let norm = 0;
  if (task.kind !== TaskKind.EVALUATE) {
    try {
      delta = decodeWeights(update.delta ?? [], task.layout, target);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return refuse(e.code, e.message, true);
    }
    norm = l2Norm(delta);
    // Finite float32 values can still make the aggregate overflow (3e38 weighted by 2 examples) or wreck the model
    // (1e37 committed round after round): the norm bound keeps every term of the weighted sum small.
    if (task.maxNorm !== undefined && !(norm <= task.maxNorm)) {
      return refuse(ErrorCode.UPDATE_NORM_TOO_LARGE, `update norm ${norm.toPrecision(4)} is above the bound ${task.maxNorm.toPrecision(4)}`, true);
    }
  }
  return { ok: true, update: { delta, norm, numExamples, metrics } };
}

