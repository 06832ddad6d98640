import { nanoid } from 'nanoid';
import {
  encodeTaskWeights,
  encodeWeights,
  ErrorCode,
  fedunlearn,
  ProtocolError,
  type FlatWeights,
} from '@fedunlearn/protocol';
import type { DispatchObserver } from '../metrics.js';
import type { MissingClient } from '../history/store.js';
import type { ClientRegistry } from '../transport/client-registry.js';
import type { ClientSession } from '../transport/session.js';
import { validateUpdate } from './update-validation.js';

/** Task bytes a dispatch lets wait in socket buffers before it sends the next task (see dispatch()). */
export const MAX_UNFLUSHED_TASK_BYTES = 128 * 1024 * 1024;

export const TaskKind = fedunlearn.v1.TaskKind;
export type TaskKind = fedunlearn.v1.TaskKind;

export interface HyperParameters {
  learningRate: number;
  batchSize: number;
  /** May be fractional (calibration: r * E). */
  localEpochs: number;
}

/** What every client of one dispatch is asked to do. */
export interface TaskSpec {
  kind: TaskKind;
  round: number;
  modelVersion: string;
  topologyJson: string;
  weights: FlatWeights;
  hyper: HyperParameters;
  /** Per-dispatch seed; each client's task seed is derived from it and the client id. */
  seed: number;
  jobId?: string;
}

/**
 * One client's accepted answer. `delta` is null for EVALUATE. The delta is valid until onAnswer settles: the
 * dispatcher then decodes a later answer into the same buffer, so a callback that needs it longer must copy it.
 */
export interface Answer {
  clientId: string;
  taskId: string;
  delta: Float32Array | null;
  numExamples: number;
  metrics: Record<string, number>;
  bytesIn: number;
}

/** A selected client without an accepted answer; the round record keeps it (history/store.ts MissingClient). */
export type Missing = MissingClient;

export interface DispatchResult {
  answered: string[];
  missing: Missing[];
  bytesOut: number;
  bytesIn: number;
  /** Coordinator time spent encoding and queueing the tasks on the sockets. */
  sendMs: number;
  /** Coordinator time spent decoding and validating this dispatch's updates. */
  decodeMs: number;
}

export interface DispatchOptions {
  deadlineMs: number;
  /** Called for each valid answer, one at a time, in arrival order; a throw rejects that answer. */
  onAnswer(answer: Answer): Promise<void> | void;
  signal?: AbortSignal;
}

interface Pending {
  taskId: string;
  clientId: string;
  kind: TaskKind;
  spec: TaskSpec;
  settle(outcome: { answer?: Answer; missing?: Missing; decodeMs?: number }): void;
}

/** Counts the dispatcher reports for metrics and tests; never reset. */
export interface DispatcherCounters {
  accepted: number;
  rejected: Record<string, number>;
}

/**
 * Float32 buffers of one size, reused for decoding answers: a fresh 40 MB buffer per update cost more (first-touch
 * page faults) than decoding into it. Keeps at most `keep` idle buffers.
 */
class DecodeBuffers {
  private readonly idle: Float32Array[] = [];

  constructor(private readonly keep: number) {}

  take(size: number): Float32Array {
    const i = this.idle.findIndex((b) => b.length === size);
    if (i < 0) return new Float32Array(size);
    return this.idle.splice(i, 1)[0]!;
  }

  give(buf: Float32Array): void {
    this.idle.push(buf);
    if (this.idle.length > this.keep) this.idle.shift();
  }
}

/**
 * Sends tasks to clients and collects their answers: every task has a deadline, a client that disconnects is missing
 * at once, and an answer is accepted only from the client the task was given to, once, before the deadline, with a
 * delta of exactly the model's shape and finite values.
 */
export class TaskDispatcher {
  private readonly pending = new Map<string, Pending>();
  /** Task ids that were answered or expired, so that a late or replayed update is told it is stale. */
  private readonly closed = new Map<string, string>();
  readonly counters: DispatcherCounters = { accepted: 0, rejected: {} };
  private readonly buffers = new DecodeBuffers(2);

  constructor(
    private readonly registry: ClientRegistry,
    private readonly observer?: DispatchObserver,
  ) {
    registry.on('left', (session, reason) => {
      for (const p of this.pending.values()) {
        if (p.clientId === session.clientId) p.settle({ missing: { clientId: p.clientId, reason: 'disconnected', detail: reason } });
      }
    });
  }

  async dispatch(clientIds: string[], spec: TaskSpec, opts: DispatchOptions): Promise<DispatchResult> {
    const result: DispatchResult = { answered: [], missing: [], bytesOut: 0, bytesIn: 0, sendMs: 0, decodeMs: 0 };
    const sendStart = performance.now();
    // Encoded once for every client of the dispatch; each task then only adds its own small fields.
    const wireWeights = encodeTaskWeights(encodeWeights(spec.weights));
    const deadline = Date.now() + opts.deadlineMs;
    // Answers are processed strictly one after another, so that aggregation and history writes never interleave.
    let chain: Promise<void> = Promise.resolve();
    const waits: Promise<void>[] = [];
    // Bytes handed to sockets but not yet to the OS. Each task's frames are its own copy (its chunk headers name its
    // task), so without a bound a round of 1,000 clients would queue 1,000 copies of the model at once.
    let unflushed = 0;
    const flushing = new Set<Promise<void>>();
    let deadlinePassed: Promise<void> | null = null;
    for (const clientId of clientIds) {
      while (unflushed >= MAX_UNFLUSHED_TASK_BYTES && !opts.signal?.aborted && Date.now() < deadline) {
        deadlinePassed ??= sleep(Math.max(0, deadline - Date.now()));
        await Promise.race([...flushing, deadlinePassed]);
      }
      if (opts.signal?.aborted || Date.now() >= deadline) {
        const detail = opts.signal?.aborted ? 'aborted' : 'task never sent: the sockets stayed full until the deadline';
        result.missing.push({ clientId, reason: 'deadline', detail });
        this.observer?.participantMissing('deadline');
        continue;
      }
      const session = this.registry.get(clientId);
      if (!session) {
        result.missing.push({ clientId, reason: 'offline' });
        this.observer?.participantMissing('offline');
        continue;
      }
      const taskId = nanoid();
      let resolveWait!: () => void;
      waits.push(new Promise<void>((r) => (resolveWait = r)));
      let settled = false;
      const timer = setTimeout(() => pending.settle({ missing: { clientId, reason: 'deadline' } }), Math.max(0, deadline - Date.now()));
      const pending: Pending = {
        taskId,
        clientId,
        kind: spec.kind,
        spec,
        settle: (outcome) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          this.pending.delete(taskId);
          this.closed.set(taskId, clientId);
          if (this.closed.size > 100_000) this.closed.delete(this.closed.keys().next().value as string);
          result.decodeMs += outcome.decodeMs ?? 0;
          if (outcome.missing) {
            result.missing.push(outcome.missing);
            this.observer?.participantMissing(outcome.missing.reason);
            resolveWait();
            return;
          }
          const answer = outcome.answer!;
          chain = chain
            .then(() => opts.onAnswer(answer))
            .then(
              () => {
                result.answered.push(clientId);
                result.bytesIn += answer.bytesIn;
                this.counters.accepted++;
                this.observer?.updateAccepted();
              },
              (err: unknown) => {
                this.count('CALLBACK_REJECTED');
                result.missing.push({ clientId, reason: 'rejected', detail: String((err as Error)?.message ?? err) });
                this.observer?.participantMissing('rejected');
              },
            )
            .finally(() => {
              if (answer.delta) this.buffers.give(answer.delta);
              resolveWait();
            });
        },
      };
      this.pending.set(taskId, pending);
      try {
        const sent = session.channel.send({
          task: {
            taskId,
            kind: spec.kind,
            round: spec.round,
            modelVersion: spec.modelVersion,
            topologyJson: spec.topologyJson,
            hyper: {
              learningRate: spec.hyper.learningRate,
              batchSize: spec.hyper.batchSize,
              localEpochs: spec.hyper.localEpochs,
              seed: taskSeed(spec.seed, clientId),
              optimizer: 'sgd',
            },
            deadlineUnixMs: deadline,
            jobId: spec.jobId ?? '',
          },
        }, wireWeights);
        result.bytesOut += sent;
        unflushed += sent;
        const flushed: Promise<void> = session.flushed().then(() => {
          unflushed -= sent;
          flushing.delete(flushed);
        });
        flushing.add(flushed);
      } catch (e) {
        pending.settle({ missing: { clientId, reason: 'failed', detail: (e as Error).message } });
      }
    }
    result.sendMs = performance.now() - sendStart;
    const onAbort = () => {
      for (const p of [...this.pending.values()]) if (p.spec === spec) p.settle({ missing: { clientId: p.clientId, reason: 'deadline', detail: 'aborted' } });
    };
    opts.signal?.addEventListener('abort', onAbort);
    // An abort that came before the listener would otherwise leave the tasks waiting for their deadline.
    if (opts.signal?.aborted) onAbort();
    try {
      await Promise.all(waits);
      await chain;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    return result;
  }

  /** Handles an Update from an authenticated session. Errors are sent back to that client and counted. */
  receiveUpdate(session: ClientSession, update: fedunlearn.v1.IUpdate, bytesIn: number): void {
    const taskId = update.taskId ?? '';
    const decodeStart = performance.now();
    try {
      const p = this.pending.get(taskId);
      const layout = p?.spec.weights.layout;
      const target = p && layout && p.kind !== TaskKind.EVALUATE ? this.buffers.take(layout.totalSize) : undefined;
      const verdict = validateUpdate(update, session.clientId, p && layout && { clientId: p.clientId, kind: p.kind, layout }, this.closed.has(taskId), target);
      if (!verdict.ok) {
        if (target) this.buffers.give(target);
        // A bad update closes the task: the client is told why and counts as missing for this round.
        if (p && verdict.closesTask) p.settle({ missing: { clientId: p.clientId, reason: 'rejected', detail: verdict.error.message } });
        throw verdict.error;
      }
      const { delta, numExamples, metrics } = verdict.update;
      p!.settle({ answer: { clientId: p!.clientId, taskId, delta, numExamples, metrics, bytesIn }, decodeMs: performance.now() - decodeStart });
    } catch (e) {
      const err = e instanceof ProtocolError ? e : new ProtocolError(ErrorCode.INTERNAL, String(e), taskId);
      this.count(err.codeName);
      session.channel.sendError(err.code, err.message, err.ref);
    }
  }

  /** A client reports it could not do a task (e.g. training failed on the device). */
  receiveFailure(session: ClientSession, taskId: string, message: string): void {
    const p = this.pending.get(taskId);
    if (p && p.clientId === session.clientId) p.settle({ missing: { clientId: p.clientId, reason: 'failed', detail: message } });
  }

  private count(reason: string): void {
    this.counters.rejected[reason] = (this.counters.rejected[reason] ?? 0) + 1;
    this.observer?.updateRejected(reason);
  }
}

/** A stable per-client seed, so that a task given again with the same dispatch seed is reproducible. */
export function taskSeed(seed: number, clientId: string): number {
  let h = (seed >>> 0) ^ 0x9e3779b9;
  for (let i = 0; i < clientId.length; i++) h = Math.imul(h ^ clientId.charCodeAt(i), 0x01000193) >>> 0;
  return h >>> 0;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
