// 'events' is Node's own module in Node and the npm port of it in browser bundles.
import { EventEmitter } from 'events';
import { nanoid } from 'nanoid';
import { io, type Socket } from 'socket.io-client';
import {
  answerChallenge,
  Channel,
  decodeWeights,
  DEFAULT_FRAMING,
  encodeTensor,
  ErrorCode,
  errorCodeName,
  fedunlearn,
  layerView,
  layoutOf,
  needsUploadRequest,
  PROTOCOL_VERSION,
  type FramingLimits,
  type WeightLayout,
} from '@fedunlearn/protocol';
import { initBackend, type BackendChoice, type BackendName } from './backend.js';
import { explainConnectError } from './connect-error.js';
import { assertDataset, datasetMismatch, type LocalDataset, type ModelSignature } from './dataset.js';
import { warnIfPlaintext } from './plaintext-warning.js';
import { Trainer, type ModelFactory } from './trainer.js';

export const SDK_VERSION = '0.1.0';

const { TaskKind, JobState } = fedunlearn.v1;

export interface FederatedClientOptions {
  /** The coordinator, e.g. http://localhost:8080. */
  url: string;
  clientId: string;
  /** The credential this client enrolled with (or was issued). Never sent: the client proves it holds it by answering
   *  the coordinator's challenge (an HMAC over a fresh nonce, see the proto's Challenge). A secret the client chooses
   *  itself (open enrolment) must have at least 8 characters. */
  secret: string;
  /** Local training data; a function is called for every task, so an app may serve fresh data. */
  data: LocalDataset | (() => LocalDataset);
  /** Builds the model from the coordinator's topology; defaults to tfjs's own deserialisation. */
  modelFactory?: ModelFactory;
  /**
   * A trainer shared with other clients of this process (many virtual clients in one simulation worker): their tasks
   * then run one after another on one cached model instead of interleaving on one copy each. The owner disposes it.
   */
  trainer?: Trainer;
  /** Backends to try, best first; default tensorflow (tfjs-node), wasm, cpu in Node and webgl, wasm, cpu in a browser. */
  backends?: BackendName[];
  /**
   * Browser: URL of the folder holding tfjs-backend-wasm's .wasm files (trailing slash); default the folder the SDK's
   * module was loaded from (where the prebuilt bundle keeps them). Node finds them itself.
   */
  wasmPaths?: string;
  /**
   * Reconnection back-off: exponential delay with ±50 % jitter, for dropped connections and for hellos the
   * coordinator refused as RATE_LIMITED (a reconnect storm, a locked-out id); other refusals are final.
   */
  reconnect?: { delayMs?: number; maxDelayMs?: number; attempts?: number };
  /** TLS: the CA (PEM) that signed a self-signed coordinator's certificate. */
  ca?: string | string[];
  /** TLS: false accepts any certificate (testing only); default true. */
  rejectUnauthorized?: boolean;
  framing?: FramingLimits;
}

export interface TaskInfo {
  taskId: string;
  kind: 'train' | 'calibrate' | 'evaluate';
  round: number;
  jobId: string;
  metrics: Record<string, number>;
  trainMs: number;
}

/** Progress and result of a forget job, as the coordinator reports it. */
export interface JobUpdate {
  jobId: string;
  state: 'queued' | 'running' | 'done' | 'failed';
  step: number;
  totalSteps: number;
  message: string;
  modelVersionBefore: string;
  modelVersionAfter: string;
  sha256Before: string;
  sha256After: string;
  /** The job's report (certificate), once done. */
  report: unknown;
}

export interface ClientEvents {
  connected: [{ sessionId: string; backend: BackendName }];
  disconnected: [string];
  /** A reconnection attempt is starting (1 for the first after a loss); the delay before it was jittered. */
  reconnecting: [number];
  task: [TaskInfo];
  job: [JobUpdate];
  /** An error the coordinator sent (a refused update, a refused hello, ...). */
  serverError: [{ code: string; message: string; ref: string }];
  /**
   * Another connection proved this client's credential and the coordinator closed this session for it (code
   * SESSION_REPLACED). The client does not reconnect by itself after this: the other session holds the same
   * credential, and reconnecting would displace it in turn, back and forth. Call connect() to take the id back.
   */
  displaced: [{ code: 'SESSION_REPLACED'; message: string }];
  error: [Error];
}

/**
 * A device's membership in a federation: connects (and reconnects with back-off), introduces itself, trains on its
 * own data when asked, answers calibration and evaluation work, and can ask to be forgotten.
 */
export class FederatedClient extends EventEmitter<ClientEvents> {
  private socket: Socket | null = null;
  private channel: Channel | null = null;
  private backend: BackendChoice | null = null;
  private trainer: Trainer | null = null;
  private work: Promise<void> = Promise.resolve();
  private welcomed: { resolve(): void; reject(e: Error): void } | null = null;
  private readonly receipts = new Map<string, { resolve(jobId: string): void; reject(e: Error): void }>();
  private readonly jobs = new Map<string, JobUpdate>();
  private closed = false;
  /** A hello is out and neither welcomed nor refused. */
  private helloPending = false;
  /** Counts hellos: a challenge answered after its connection was lost is not sent on the next one. */
  private connection = 0;
  /** Consecutive hellos refused because the coordinator was busy; sets the back-off before the next. */
  private busyRefusals = 0;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** Answers larger than this wait for an upload grant (the Welcome says; 0: none do). */
  private grantAboveBytes = 0;
  /** Upload requests waiting for their grant, by task id: resolved true when granted, false when refused or lost. */
  private readonly grantWaits = new Map<string, (granted: boolean) => void>();
  sessionId = '';
  /** The federation's model as the last Welcome described it; null before it, or from a coordinator that does not say. */
  federationModel: ModelSignature | null = null;

  constructor(private readonly opts: FederatedClientOptions) {
    super();
    warnIfPlaintext(opts.url);
  }

  get backendName(): BackendName | null {
    return this.backend?.name ?? null;
  }

  /**
   * Starts the backend and connects; resolves once the coordinator has welcomed this client. Rejects with the cause
   * when the coordinator cannot be reached (connection refused, DNS, TLS), refuses this client (UNAUTHENTICATED, ...)
   * or runs a model the local data cannot train (`dataset examples are [10], the federation's model takes [784]`).
   * Reconnect policy: a lost
   * connection and a hello refused as RATE_LIMITED are retried with back-off (`reconnect`); any other refusal of the
   * hello, and a session displaced by another connection of this id ('displaced', SESSION_REPLACED), are final until
   * connect() is called again.
   */
  async connect(timeoutMs = 30_000): Promise<void> {
    if (this.socket) {
      // Called again (after a displacement or a final refusal): the old connection is dropped for a fresh one.
      this.socket.removeAllListeners();
      this.socket.io.removeAllListeners();
      this.socket.disconnect();
      this.channel?.close();
    }
    this.backend = await initBackend(this.opts.backends, this.opts.wasmPaths !== undefined ? { wasmPaths: this.opts.wasmPaths } : {});
    this.trainer ??= this.opts.trainer ?? new Trainer({ tf: this.backend.tf, ...(this.opts.modelFactory ? { modelFactory: this.opts.modelFactory } : {}) });
    const r = this.opts.reconnect ?? {};
    const socket = io(this.opts.url, {
      transports: ['websocket'],
      reconnection: true,
      reconnectionDelay: r.delayMs ?? 500,
      reconnectionDelayMax: r.maxDelayMs ?? 10_000,
      reconnectionAttempts: r.attempts ?? Infinity,
      randomizationFactor: 0.5,
      ...(this.opts.ca !== undefined ? { ca: this.opts.ca } : {}),
      ...(this.opts.rejectUnauthorized !== undefined ? { rejectUnauthorized: this.opts.rejectUnauthorized } : {}),
    });
    this.socket = socket;
    this.channel = new Channel(socket, { message: (env) => this.onMessage(env) }, this.opts.framing ?? DEFAULT_FRAMING);
    socket.on('connect', () => this.hello());
    socket.on('disconnect', (reason) => {
      // The coordinator forgets a lost connection's tasks, and so its grants.
      this.settleGrantWaits(false);
      this.emit('disconnected', String(reason));
    });
    socket.io.on('reconnect_attempt', (attempt) => this.emit('reconnecting', attempt));
    // While connect() waits, a connection that cannot be opened for good (refused, DNS, TLS, not a coordinator)
    // fails it at once with its cause; a failure that may pass (a reset, a timeout) is retried by socket.io and named
    // if the timeout comes. After the first welcome socket.io keeps retrying with back-off whatever the cause.
    let lastFailure = '';
    socket.on('connect_error', (e) => {
      if (!this.welcomed) return;
      const { message, final } = explainConnectError(this.opts.url, e);
      lastFailure = message;
      if (!final) return;
      this.welcomed.reject(new Error(message));
      this.welcomed = null;
      socket.disconnect();
    });
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => {
        this.welcomed = null;
        reject(new Error(`no welcome from ${this.opts.url} within ${timeoutMs} ms${lastFailure ? ` (last attempt: ${lastFailure})` : ''}`));
      }, timeoutMs);
      this.welcomed = {
        resolve: () => {
          clearTimeout(t);
          resolve();
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      };
    });
  }

  /** Asks the coordinator to forget this client; resolves with the job id once the request is accepted. */
  forget(reason = ''): Promise<string> {
    const channel = this.requireChannel();
    const requestId = nanoid();
    return new Promise<string>((resolve, reject) => {
      this.receipts.set(requestId, { resolve, reject });
      channel.send({ forgetRequest: { requestId, reason } });
    });
  }

  /** Resolves with the job's final status (done or failed), following its progress events. */
  waitForJob(jobId: string): Promise<JobUpdate> {
    const known = this.jobs.get(jobId);
    if (known && (known.state === 'done' || known.state === 'failed')) return Promise.resolve(known);
    return new Promise((resolve) => {
      const on = (j: JobUpdate) => {
        if (j.jobId === jobId && (j.state === 'done' || j.state === 'failed')) {
          this.off('job', on);
          resolve(j);
        }
      };
      this.on('job', on);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.socket?.disconnect();
    this.channel?.close();
    await this.work.catch(() => undefined);
    if (this.trainer !== this.opts.trainer) this.trainer?.dispose();
    this.trainer = null;
  }

  /** Reconnects after socket.io's back-off for the number of busy refusals so far: exponential, capped, jittered ±50%. */
  private retryWhenLessBusy(): void {
    const r = this.opts.reconnect ?? {};
    if (this.busyRefusals >= (r.attempts ?? Infinity)) {
      // Retries are bounded like socket.io's own reconnection attempts.
      this.socket?.disconnect();
      this.welcomed?.reject(new Error(`RATE_LIMITED: still refused after ${this.busyRefusals} retries`));
      this.welcomed = null;
      return;
    }
    const attempt = ++this.busyRefusals;
    const delay = Math.min(r.maxDelayMs ?? 10_000, (r.delayMs ?? 500) * 2 ** Math.min(attempt - 1, 20) * (0.5 + Math.random()));
    this.socket?.disconnect();
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.closed) return;
      this.emit('reconnecting', attempt);
      this.socket?.connect();
    }, delay);
  }

  private settleGrantWaits(granted: boolean, taskId?: string): void {
    for (const [id, settle] of [...this.grantWaits]) {
      if (taskId !== undefined && id !== taskId) continue;
      this.grantWaits.delete(id);
      settle(granted);
    }
  }

  /** Asks to upload `bytes` for a task and waits for the grant; false if refused or the connection was lost. */
  private requestUpload(taskId: string, bytes: number): Promise<boolean> {
    return new Promise((resolve) => {
      this.grantWaits.set(taskId, resolve);
      this.channel!.send({ uploadRequest: { taskId, bytes } });
    });
  }

  private requireChannel(): Channel {
    if (!this.channel || !this.socket?.connected) throw new Error('not connected');
    return this.channel;
  }

  private data(): LocalDataset {
    const d = typeof this.opts.data === 'function' ? this.opts.data() : this.opts.data;
    assertDataset(d);
    return d;
  }

  private hello(): void {
    this.helloPending = true;
    this.connection++;
    this.channel?.send({
      hello: {
        clientId: this.opts.clientId,
        sdkVersion: SDK_VERSION,
        numExamples: this.data().count,
        backend: this.backend?.name ?? 'cpu',
        protocolVersion: PROTOCOL_VERSION,
      },
    });
  }

  /** Proves the secret for this connection's challenge; an answer computed for an earlier connection is dropped. */
  private async answer(challenge: fedunlearn.v1.Challenge): Promise<void> {
    const connection = this.connection;
    try {
      if (challenge.enrol && this.opts.secret.length < 8) throw new Error('a secret of at least 8 characters is required to enrol');
      const proof = await answerChallenge(challenge, this.opts.clientId, this.opts.secret);
      if (connection !== this.connection || !this.socket?.connected) return;
      this.channel?.send({ helloProof: proof });
    } catch (e) {
      this.helloPending = false;
      const err = new Error(`cannot answer the coordinator's challenge: ${(e as Error).message}`);
      this.welcomed?.reject(err);
      this.welcomed = null;
      this.socket?.disconnect();
      this.emit('error', err);
    }
  }

  private onMessage(env: fedunlearn.v1.Envelope): void {
    switch (env.body) {
      case 'challenge':
        void this.answer(env.challenge as fedunlearn.v1.Challenge);
        return;
      case 'welcome': {
        this.helloPending = false;
        this.busyRefusals = 0;
        // Data the federation's model cannot take would fail every task while the coordinator kept choosing this
        // client: refuse at connect instead, and leave.
        const model = modelOf(env.welcome!);
        this.federationModel = model;
        const mismatch = model && datasetMismatch(this.data(), model);
        if (mismatch) {
          this.socket?.disconnect();
          const err = new Error(`the local data cannot train the federation's model: ${mismatch}`);
          if (this.welcomed) this.welcomed.reject(err);
          else if (this.listenerCount('error') > 0) this.emit('error', err);
          this.welcomed = null;
          return;
        }
        this.sessionId = env.welcome!.sessionId ?? '';
        this.grantAboveBytes = Number(env.welcome!.uploadGrantAboveBytes ?? 0);
        this.channel?.adoptPeerFraming({
          chunkBytes: env.welcome!.chunkBytes ?? 0,
          maxMessageBytes: Number(env.welcome!.maxMessageBytes ?? 0),
          minChunkBytes: env.welcome!.minChunkBytes ?? 0,
          maxFrameBytes: Number(env.welcome!.maxFrameBytes ?? 0),
        });
        this.emit('connected', { sessionId: this.sessionId, backend: this.backend!.name });
        this.welcomed?.resolve();
        this.welcomed = null;
        return;
      }
      case 'task': {
        const task = env.task as fedunlearn.v1.Task;
        // One task at a time: tasks share the trainer's model.
        // The session the task belongs to: its answer is sent in that session only.
        const sessionId = this.sessionId;
        this.work = this.work.then(() => this.runTask(task, sessionId)).catch((e: unknown) => {
          this.emit('error', e as Error);
        });
        return;
      }
      case 'uploadGrant':
        this.settleGrantWaits(true, env.uploadGrant!.taskId ?? '');
        return;
      case 'forgetReceipt': {
        const r = env.forgetReceipt as fedunlearn.v1.ForgetReceipt;
        this.receipts.get(r.requestId)?.resolve(r.jobId);
        this.receipts.delete(r.requestId);
        return;
      }
      case 'jobStatus': {
        const s = env.jobStatus as fedunlearn.v1.JobStatus;
        const update: JobUpdate = {
          jobId: s.jobId,
          state: stateName(s.state),
          step: s.step,
          totalSteps: s.totalSteps,
          message: s.message,
          modelVersionBefore: s.modelVersionBefore,
          modelVersionAfter: s.modelVersionAfter,
          sha256Before: s.sha256Before,
          sha256After: s.sha256After,
          report: s.reportJson ? JSON.parse(s.reportJson) : null,
        };
        this.jobs.set(update.jobId, update);
        this.emit('job', update);
        return;
      }
      case 'error': {
        const e = env.error as fedunlearn.v1.Error;
        const info = { code: errorCodeName(e.code), message: e.message, ref: e.ref };
        if (!this.helloPending && e.code === ErrorCode.SESSION_REPLACED) {
          // socket.io does not reconnect after the server closed the socket, and neither does this client: see
          // 'displaced'.
          this.emit('serverError', info);
          this.emit('displaced', { code: 'SESSION_REPLACED', message: info.message });
          return;
        }
        if (this.helloPending && e.code === ErrorCode.RATE_LIMITED) {
          // The coordinator is admitting others (a reconnect storm): not a refusal of this client, so try again later.
          this.helloPending = false;
          this.emit('serverError', info);
          this.retryWhenLessBusy();
          return;
        }
        this.helloPending = false;
        if (this.welcomed) {
          this.welcomed.reject(new Error(`${info.code}: ${info.message}`));
          this.welcomed = null;
          this.socket?.disconnect();
        }
        // A refused upload request (the task expired, ...): its answer is not sent.
        if (e.ref) this.settleGrantWaits(false, e.ref);
        for (const [id, r] of this.receipts) {
          if (e.ref === id) {
            r.reject(new Error(`${info.code}: ${info.message}`));
            this.receipts.delete(id);
          }
        }
        this.emit('serverError', info);
        return;
      }
      default:
        return;
    }
  }

  private async runTask(task: fedunlearn.v1.Task, sessionId: string): Promise<void> {
    if (this.closed) return;
    // socket.io buffers what is emitted while disconnected and flushes it ahead of the next hello, which the
    // coordinator refuses as a first message: an answer to a task of a lost connection is dropped instead (the
    // coordinator already counted this client missing for it).
    const socket = this.socket!;
    const inner = this.channel!;
    // Connected is not enough: after a reconnect the socket is connected again while the new session is still proving
    // its credential, and anything but the proof then ends that handshake. An answer goes out in its own session only.
    const live = () => socket.connected && !this.helloPending && this.sessionId === sessionId;
    const channel = {
      send: (msg: fedunlearn.v1.IEnvelope) => (live() ? inner.send(msg) : 0),
      sendError: (code: ErrorCode, message: string, ref: string) => (live() ? inner.sendError(code, message, ref) : undefined),
    };
    const trainer = this.trainer!;
    const deadline = Number(task.deadlineUnixMs);
    if (deadline > 0 && Date.now() > deadline) return;
    const decodeStart = performance.now();
    const layout: WeightLayout = layoutOf(task.weights.map((t) => ({ name: t.name ?? '', shape: (t.shape ?? []).map(Number) })));
    let start: Float32Array;
    try {
      start = decodeWeights(task.weights, layout);
    } catch (e) {
      channel.sendError(ErrorCode.INVALID_ARGUMENT, `task weights: ${(e as Error).message}`, task.taskId);
      return;
    }
    const decodeMs = performance.now() - decodeStart;
    const data = this.data();
    const kind = task.kind === TaskKind.EVALUATE ? 'evaluate' : task.kind === TaskKind.CALIBRATE ? 'calibrate' : 'train';
    try {
      if (kind === 'evaluate') {
        const ev = await trainer.evaluate(task.topologyJson, start, data, task.hyper?.batchSize || undefined);
        const metrics = { loss: ev.loss, accuracy: ev.accuracy };
        channel.send({ update: { taskId: task.taskId, numExamples: data.count, metrics, timings: { decodeMs } } });
        this.emit('task', { taskId: task.taskId, kind, round: task.round, jobId: task.jobId, metrics, trainMs: 0 });
        return;
      }
      const h = task.hyper as fedunlearn.v1.HyperParameters;
      const out = await trainer.train(task.topologyJson, start, data, {
        learningRate: h.learningRate,
        batchSize: h.batchSize,
        epochs: h.localEpochs,
        seed: h.seed,
      });
      const encodeStart = performance.now();
      const delta = layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, out.delta, i)));
      const metrics = {
        loss: out.metrics.loss,
        accuracy: out.metrics.accuracy,
        steps: out.metrics.steps,
        samples: Math.round(out.metrics.sampleEpochs * out.numExamples),
      };
      if (!live()) return;
      const answer = inner.prepare({
        update: {
          taskId: task.taskId,
          delta,
          numExamples: out.numExamples,
          metrics,
          timings: { trainMs: out.trainMs, encodeMs: performance.now() - encodeStart, decodeMs },
        },
      });
      // A large answer waits for the coordinator's grant (upload flow control), so that it never holds more
      // arriving updates than it can fold and stage; a refusal means the task is over for this client.
      // A task may come with its grant (Task.upload_granted_bytes): then no request and no round trip.
      const needsGrant = needsUploadRequest(answer.bytes, this.grantAboveBytes, Number(task.uploadGrantedBytes ?? 0));
      if (needsGrant && (!live() || !(await this.requestUpload(task.taskId, answer.bytes)))) return;
      if (!live()) return;
      answer.send();
      this.emit('task', { taskId: task.taskId, kind, round: task.round, jobId: task.jobId, metrics, trainMs: out.trainMs });
    } catch (e) {
      channel.sendError(ErrorCode.TRAINING_FAILED, (e as Error).message, task.taskId);
      this.emit('error', e as Error);
    }
  }
}

/** The model signature a Welcome carries (fields 20-21), or null when the coordinator sent none. */
function modelOf(w: fedunlearn.v1.IWelcome): ModelSignature | null {
  const inputShape = (w.modelInputShape ?? []).map(Number);
  const numClasses = Number(w.modelNumClasses ?? 0);
  return inputShape.length > 0 && numClasses > 0 ? { inputShape, numClasses } : null;
}

function stateName(s: fedunlearn.v1.JobState): JobUpdate['state'] {
  switch (s) {
    case JobState.QUEUED:
      return 'queued';
    case JobState.RUNNING:
      return 'running';
    case JobState.DONE:
      return 'done';
    default:
      return 'failed';
  }
}
