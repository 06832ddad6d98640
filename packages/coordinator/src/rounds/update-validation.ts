import { decodeWeights, ErrorCode, fedunlearn, ProtocolError, type WeightLayout } from '@fedunlearn/protocol';

const TaskKind = fedunlearn.v1.TaskKind;

/** What the dispatcher knows about the task an update claims to answer. */
export interface OpenTask {
  clientId: string;
  kind: fedunlearn.v1.TaskKind;
  layout: WeightLayout;
}

export interface ValidUpdate {
  /** Null for EVALUATE, which returns metrics only. */
  delta: Float32Array | null;
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
  let delta: Float32Array | null = null;
  if (task.kind !== TaskKind.EVALUATE) {
    try {
      delta = decodeWeights(update.delta ?? [], task.layout, target);
    } catch (e) {
      if (!(e instanceof ProtocolError)) throw e;
      return refuse(e.code, e.message, true);
    }
  }
  const metrics: Record<string, number> = {};
  for (const [k, v] of Object.entries(update.metrics ?? {})) if (Number.isFinite(v)) metrics[k] = v;
  return { ok: true, update: { delta, numExamples, metrics } };
}
