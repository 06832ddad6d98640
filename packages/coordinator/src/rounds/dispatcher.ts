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
import { UploadWindow } from './upload-window.js';

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

/** An answer whose handling goes on after onAnswer returned (its staging write): it counts as held until `until`. */
export interface AnswerHold {
  until: Promise<unknown>;
}

export interface DispatchOptions {
  deadlineMs: number;
  /** Called for each valid answer, one at a time, in arrival order; a throw rejects that answer. */
  onAnswer(answer: Answer): Promise<AnswerHold | void> | AnswerHold | void;
  signal?: AbortSignal;
}

/** Where a task's large answer stands in the upload flow control. */
interface Upload {
  bytes: number;
  /** queued: waiting for its grant; granted: may be sent; arriving: its chunked stream was admitted. */
  state: 'queued' | 'granted' | 'arriving';
  /** Reserved when the task was sent (Task.upload_granted_bytes): no request needed, the task's deadline applies
   *  (until the client asks anyway: then it is an ordinary granted request). */
  withTask?: boolean;
  timer?: ReturnType<typeof setTimeout>;
}

/** Room left in a grant sent with a task, over the task's weights, for the answer's own fields (ids, metrics, timings). */
const ANSWER_OVERHEAD_BYTES = 64 * 1024;

interface Pending {
  taskId: string;
  clientId: string;
  kind: TaskKind;
  spec: TaskSpec;
  /** Ends the task as missing at its deadline, until the client asks to upload (it trained in time). */
  deadlineTimer: ReturnType<typeof setTimeout>;
  upload?: Upload;
  /** Norms of the answers accepted in this task's dispatch so far (shared by its tasks). */
  norms: number[];
  settle(outcome: { answer?: Answer; missing?: Missing; decodeMs?: number }): void;
}

/** Counts the dispatcher reports for metrics and tests; never reset. */
export interface DispatcherCounters {
  accepted: number;
  rejected: Record<string, number>;
  /** Bytes of accepted answers received and not yet folded and staged (the wire size of each), and the most ever. */
  heldUpdateBytes: number;
  peakHeldUpdateBytes: number;
  /** Upload grants issued, and requests waiting for theirs now. */
  uploadGrants: number;
  /** ...of which sent with their task (Task.upload_granted_bytes), without a request. */
  uploadGrantsWithTask: number;
  uploadsWaiting: number;
  /** Bytes granted and not yet released (arriving, or held): what the window bounds. */
  grantedUploadBytes: number;
}

/**
 * Upload flow control (see UploadRequest in the proto): answers larger than `grantAboveBytes` are sent only once
 * granted, and grants keep the bytes arriving or held under `windowBytes` (one grant is always possible).
 */
export interface UploadFlowOptions {
  windowBytes: number;
  /** Answers whose encoded envelope is larger need a grant; 0 turns the flow control off. */
  grantAboveBytes: number;
  /** How long a granted upload may take to arrive before the task ends missing ('deadline'). */
  uploadTimeoutMs: number;
  /** The largest message the transport accepts: a request for more is refused. */
  maxMessageBytes: number;
}

/**
 * Bounds on what one update may do to the aggregate (UPDATE_NORM_TOO_LARGE, TOO_MANY_EXAMPLES above them). With them
 * every term of FedAvg's weighted sum is at most maxExamples x maxNorm (1e10 by default), so a float32 sum of any
 * realistic round cannot overflow (3.4e38) and one client cannot move the model by more than its bounded share.
 */
export interface UpdateBounds {
  /** Largest L2 norm of a delta accepted, absolute. Default 1e4 (an MNIST round's deltas are around 1-10). */
  maxNorm: number;
  /** Relative bound: a delta's norm may be at most this many times the median norm accepted so far in its dispatch
   *  (with those of the last dispatch of the same kind and job until it has three; no relative bound before three
   *  norms are known); 0 turns it off. Default 10. */
  medianFactor: number;
  /** Most examples an update may claim, on top of what its client declared at hello. Default 1e6. */
  maxExamples: number;
}

export const DEFAULT_UPDATE_BOUNDS: Readonly<UpdateBounds> = { maxNorm: 1e4, medianFactor: 10, maxExamples: 1_000_000 };
/** Norms needed before their median bounds the next update. */
const MEDIAN_MIN_SAMPLES = 3;

/** 128 MB: 3 updates of a 10M-parameter model, 32 of a 1M-parameter one. */
export const DEFAULT_UPLOAD_WINDOW_BYTES = 128 * 1024 * 1024;
/** Below this an answer travels unannounced (EVALUATE metrics, models of a few thousand parameters); anything larger
 *  rides a grant, sent with its task while the window has room (no round trip) or asked for once trained, so that a
 *  thousand clients of a small model cannot pile their updates up either. With task-borne grants this costs the ingest
 *  bench nothing measurable (0.22-0.25 of raw socket.io against 0.22 with grants from 1 MiB, side by side). */
export const DEFAULT_GRANT_ABOVE_BYTES = 64 * 1024;
export const DEFAULT_UPLOAD_TIMEOUT_MS = 60_000;

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
  readonly counters: DispatcherCounters = { accepted: 0, rejected: {}, heldUpdateBytes: 0, peakHeldUpdateBytes: 0, uploadGrants: 0, uploadGrantsWithTask: 0, uploadsWaiting: 0, grantedUploadBytes: 0 };
  private readonly buffers = new DecodeBuffers(2);
  private readonly window: UploadWindow | null;
  /** Accepted norms of the last dispatch of each kind (per job: a retraining from the initial model must not be held
   *  to the norms of late training rounds): the relative bound's reference until a dispatch has its own. */
  private readonly lastNorms = new Map<string, number[]>();
  private readonly bounds: UpdateBounds;

  constructor(
    private readonly registry: ClientRegistry,
    private readonly observer?: DispatchObserver,
    private readonly uploads: UploadFlowOptions | null = null,
    bounds: Partial<UpdateBounds> = {},
  ) {
    this.bounds = { ...DEFAULT_UPDATE_BOUNDS, ...bounds };
    // Each term of the weighted sum is at most maxExamples x maxNorm; 1e30 leaves room for 1e8 of them under float32's
    // 3.4e38, so no configuration can let a round's sum overflow.
    if (!(this.bounds.maxNorm > 0) || !(this.bounds.maxExamples >= 1) || this.bounds.maxNorm * this.bounds.maxExamples > 1e30) {
      throw new RangeError(`update bounds: maxNorm (${this.bounds.maxNorm}) x maxExamples (${this.bounds.maxExamples}) must be positive and at most 1e30, so that aggregation cannot overflow`);
    }
    this.window = uploads && uploads.grantAboveBytes > 0 ? new UploadWindow(uploads.windowBytes) : null;
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
    const norms: number[] = [];
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
      const pending: Pending = {
        taskId,
        clientId,
        kind: spec.kind,
        spec,
        deadlineTimer: setTimeout(() => pending.settle({ missing: { clientId, reason: 'deadline' } }), Math.max(0, deadline - Date.now())),
        norms,
        settle: (outcome) => {
          if (settled) return;
          settled = true;
          clearTimeout(pending.deadlineTimer);
          clearTimeout(pending.upload?.timer);
          this.pending.delete(taskId);
          this.closed.set(taskId, clientId);
          if (this.closed.size > 100_000) this.closed.delete(this.closed.keys().next().value as string);
          result.decodeMs += outcome.decodeMs ?? 0;
          if (outcome.missing) {
            if (pending.upload) this.releaseUpload(taskId);
            result.missing.push(outcome.missing);
            this.observer?.participantMissing(outcome.missing.reason);
            resolveWait();
            return;
          }
          const answer = outcome.answer!;
          this.hold(answer.bytesIn);
          let holdUntil: Promise<unknown> | undefined;
          chain = chain
            .then(() => opts.onAnswer(answer))
            .then(
              (handled) => {
                holdUntil = handled?.until;
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
              // Its bytes (and grant) are free once it is folded and its staging written: not before, or the window
              // would not bound the copies waiting on the disk.
              const release = () => {
                this.hold(-answer.bytesIn);
                if (pending.upload) this.releaseUpload(taskId);
              };
              if (holdUntil) void holdUntil.then(release, release);
              else release();
              resolveWait();
            });
        },
      };
      this.pending.set(taskId, pending);
      // While the window has room the answer's bytes are reserved now and the task says so: the client then uploads
      // without a request's round trip. The rest ask once trained.
      const answerBytes = wireWeights.byteLength + ANSWER_OVERHEAD_BYTES;
      const preGranted = this.window !== null && spec.kind !== TaskKind.EVALUATE && answerBytes > this.uploads!.grantAboveBytes && this.window.tryReserve(taskId, answerBytes);
      if (preGranted) {
        pending.upload = { bytes: answerBytes, state: 'granted', withTask: true };
        this.counters.uploadGrants++;
        this.counters.uploadGrantsWithTask++;
        this.syncUploadCounters();
      }
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
            uploadGrantedBytes: preGranted ? answerBytes : 0,
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
      if (norms.length > 0) this.lastNorms.set(normsKey(spec), norms);
    }
    return result;
  }

  /** Whether (and above which size) answers need an upload grant: the Welcome tells the client. */
  get grantAboveBytes(): number {
    return this.window ? this.uploads!.grantAboveBytes : 0;
  }

  /**
   * A client asks to send the answer to one of its tasks: granted (UploadGrant) in request order as the upload window
   * allows. Arriving before the task's deadline, it stops that deadline: the client trained in time, and waiting for
   * its grant must not make it miss the round. Refusals are sent back and change nothing.
   */
  receiveUploadRequest(session: ClientSession, req: fedunlearn.v1.IUploadRequest): void {
    const taskId = req.taskId ?? '';
    try {
      const p = this.pending.get(taskId);
      if (!p) {
        throw this.closed.has(taskId)
          ? new ProtocolError(ErrorCode.STALE_TASK, `task ${taskId} is closed (answered, expired or replaced)`, taskId)
          : new ProtocolError(ErrorCode.UNKNOWN_TASK, `no task ${taskId}`, taskId);
      }
      if (p.clientId !== session.clientId) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `task ${taskId} was not given to ${session.clientId}`, taskId);
      const bytes = Number(req.bytes ?? 0);
      if (p.upload?.withTask && p.upload.state === 'granted') {
        if (bytes > 0 && bytes <= p.upload.bytes) {
          // A client that does not read Task.upload_granted_bytes asks anyway: it is granted already, and from here
          // on it is held to the upload deadline like any granted request (a second request is then a duplicate).
          clearTimeout(p.deadlineTimer);
          p.upload.withTask = false;
          this.sendGrant(session, p, p.upload);
          return;
        }
        // Larger than what was reserved with the task: it waits in line like any other request.
        this.window!.release(taskId);
        delete p.upload;
      }
      if (p.upload) throw new ProtocolError(ErrorCode.DUPLICATE_UPLOAD_REQUEST, `task ${taskId} already has an upload request`, taskId);
      if (!this.window) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, 'this coordinator grants no uploads: send the update', taskId);
      if (!(bytes > 0)) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, `an upload request must announce its size, got ${bytes} bytes`, taskId);
      if (bytes > this.uploads!.maxMessageBytes) {
        throw new ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, `an update of ${bytes} bytes exceeds the ${this.uploads!.maxMessageBytes}-byte cap`, taskId);
      }
      clearTimeout(p.deadlineTimer);
      const upload: Upload = { bytes, state: 'queued' };
      p.upload = upload;
      this.window.request(taskId, bytes, () => {
        upload.state = 'granted';
        this.counters.uploadGrants++;
        this.sendGrant(session, p, upload);
      });
      this.syncUploadCounters();
    } catch (e) {
      const err = e instanceof ProtocolError ? e : new ProtocolError(ErrorCode.INTERNAL, String(e), taskId);
      this.count(err.codeName);
      session.channel.sendError(err.code, err.message, err.ref);
    }
  }

  /** Tells the client its upload is granted and starts the clock: the Update must arrive within uploadTimeoutMs. */
  private sendGrant(session: ClientSession, p: Pending, upload: Upload): void {
    const timeoutMs = this.uploads!.uploadTimeoutMs;
    upload.timer = setTimeout(
      () => p.settle({ missing: { clientId: p.clientId, reason: 'deadline', detail: `the granted upload did not arrive within ${timeoutMs} ms` } }),
      timeoutMs,
    );
    try {
      session.channel.send({ uploadGrant: { taskId: p.taskId, uploadDeadlineUnixMs: Date.now() + timeoutMs } });
    } catch (e) {
      p.settle({ missing: { clientId: p.clientId, reason: 'failed', detail: `upload grant not sent: ${(e as Error).message}` } });
    }
  }

  /**
   * Whether a chunked message of `totalBytes` may start arriving from `clientId` (null: a connection not yet
   * welcomed). Above the grant size it must ride a grant of that client's that is not in use yet: so the messages
   * being reassembled are bounded by the upload window too. Throws UPLOAD_NOT_GRANTED otherwise.
   */
  admitStream(clientId: string | null, streamId: string, totalBytes: number): void {
    if (!this.window || totalBytes <= this.uploads!.grantAboveBytes) return;
    if (clientId !== null) {
      for (const p of this.pending.values()) {
        if (p.clientId === clientId && p.upload?.state === 'granted' && totalBytes <= p.upload.bytes) {
          p.upload.state = 'arriving';
          return;
        }
      }
    }
    throw new ProtocolError(
      ErrorCode.UPLOAD_NOT_GRANTED,
      `a message of ${totalBytes} bytes needs an upload grant first (UploadRequest, answers above ${this.uploads!.grantAboveBytes} bytes)`,
      streamId,
    );
  }

  /**
   * Handles an Update from an authenticated session. Errors are sent back to that client and counted. `chunked`: it
   * came as chunks, whose stream admitStream already held to a grant.
   */
  receiveUpdate(session: ClientSession, update: fedunlearn.v1.IUpdate, bytesIn: number, chunked = false): void {
    const taskId = update.taskId ?? '';
    const decodeStart = performance.now();
    try {
      const p = this.pending.get(taskId);
      if (this.window && !chunked && bytesIn > this.uploads!.grantAboveBytes && p && p.clientId === session.clientId && p.upload?.state !== 'granted') {
        throw new ProtocolError(ErrorCode.UPLOAD_NOT_GRANTED, `an update of ${bytesIn} bytes needs an upload grant first (UploadRequest)`, taskId);
      }
      const layout = p?.spec.weights.layout;
      const target = p && layout && p.kind !== TaskKind.EVALUATE ? this.buffers.take(layout.totalSize) : undefined;
      const open = p && layout && { clientId: p.clientId, kind: p.kind, layout, maxExamples: Math.min(session.numExamples, this.bounds.maxExamples), maxNorm: this.normBound(p) };
      const verdict = validateUpdate(update, session.clientId, open, this.closed.has(taskId), target);
      if (!verdict.ok) {
        if (target) this.buffers.give(target);
        // A bad update closes the task: the client is told why and counts as missing for this round.
        if (p && verdict.closesTask) p.settle({ missing: { clientId: p.clientId, reason: 'rejected', detail: verdict.error.message } });
        throw verdict.error;
      }
      const { delta, numExamples, metrics, norm } = verdict.update;
      if (delta) p!.norms.push(norm);
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

  /** The norm bound for an answer to `p`: the absolute bound, tightened by the median of its dispatch's norms. */
  private normBound(p: Pending): number {
    const { maxNorm, medianFactor } = this.bounds;
    if (!(medianFactor > 0)) return maxNorm;
    // A small round has few norms of its own: the last dispatch of the same kind fills in until there are three.
    const ref = p.norms.length >= MEDIAN_MIN_SAMPLES ? p.norms : [...p.norms, ...(this.lastNorms.get(normsKey(p.spec)) ?? [])];
    if (ref.length < MEDIAN_MIN_SAMPLES) return maxNorm;
    const m = median(ref);
    // Clients that send zero deltas (nothing learnt) must not make every real update look too large.
    return m > 0 ? Math.min(maxNorm, medianFactor * m) : maxNorm;
  }

  private releaseUpload(taskId: string): void {
    this.window?.release(taskId);
    this.syncUploadCounters();
  }

  private syncUploadCounters(): void {
    this.counters.uploadsWaiting = this.window?.waiting ?? 0;
    this.counters.grantedUploadBytes = this.window?.grantedBytes ?? 0;
  }

  private hold(bytes: number): void {
    this.counters.heldUpdateBytes += bytes;
    if (this.counters.heldUpdateBytes > this.counters.peakHeldUpdateBytes) this.counters.peakHeldUpdateBytes = this.counters.heldUpdateBytes;
  }

  private count(reason: string): void {
    this.counters.rejected[reason] = (this.counters.rejected[reason] ?? 0) + 1;
    this.observer?.updateRejected(reason);
  }
}

function normsKey(spec: TaskSpec): string {
  return `${spec.kind}:${spec.jobId ?? ''}`;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
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
