import { newId } from '../ids.js';
import type { WeightLayout } from '@fedunlearn/protocol';
import type { Server } from 'socket.io';
import type { AggregationStrategy } from '../aggregation/strategy.js';
import type { HistoryStore, ParticipantInput } from '../history/store.js';
import type { Logger } from '../logger.js';
import type { HyperParameters, Missing, TaskDispatcher, TaskKind } from '../rounds/dispatcher.js';
import { boundsSensitivity } from '../rounds/sensitivity.js';
import { finishStep, foldStep, type StepArgs, type StepResult, type StepTiming, type WorkCost } from '../rounds/federated-step.js';
import type { Presence } from './presence.js';

const STEP = 'fedunlearn:step';
const STEP_RESULT = 'fedunlearn:step-result';
/** Beyond a step's deadline, how long the leader waits for a replica's result: a granted upload may still arrive
 *  (the dispatcher's upload timeout, 60 s by default) and be staged. */
const RESULT_GRACE_MS = 75_000;
/** How often the leader checks that a replica it waits for is still alive (its presence key). */
const ALIVE_CHECK_MS = 2_000;

/** What the leader asks one replica: run a step for these of its clients. Small but for `weights` (job steps only). */
interface StepRequest {
  stepId: string;
  /** The replica that runs it; the others ignore the message. */
  replica: string;
  leader: string;
  clientIds: string[];
  modelVersion: string;
  /** The model as little-endian float32 when it is not a stored version (a job's intermediate step); else the
   *  replica reads `modelVersion` from the store (once: cached). */
  weights: Uint8Array | null;
  topologyJson: string;
  round: number;
  hyper: HyperParameters;
  seed: number;
  deadlineUnixMs: number;
  jobId: string | null;
  kind: TaskKind | null;
  /** Stage every accepted update under this round id in the shared store (the leader commits them). */
  stageRoundId: string | null;
  calibrateTo: [string, number[]][] | null;
}

/** A replica's answer: its clients' partial aggregate (8 bytes per parameter) and their records. */
interface StepReply {
  stepId: string;
  replica: string;
  leader: string;
  error: string | null;
  partial: Uint8Array | null;
  participants: { clientId: string; numExamples: number; norms: number[]; metrics?: Record<string, number> }[];
  missing: Missing[];
  cost: WorkCost;
  timing: StepTiming;
}

export interface ClusterStepsDeps {
  io: Server;
  replicaId: string;
  presence: Presence;
  store: HistoryStore;
  dispatcher: TaskDispatcher;
  strategy: AggregationStrategy;
  log: Logger;
  /** Bytes of step messages this replica sent and received through Redis (the bench's cluster section reads them). */
  onBusBytes?: (bytes: number) => void;
}

/**
 * A federated step over every replica of a cluster (issue 14, §2): the leader groups the selected clients by the
 * replica they are connected to (cluster/presence.ts), runs its own clients' part here, and sends each other replica one
 * step message through the socket.io Redis adapter; that replica's dispatcher sends the tasks, validates the answers,
 * stages the updates in the shared store and folds them (foldStep), and sends back one partial aggregate. The leader
 * merges the partials (`Aggregation.merge`, exact for the mergeable strategies) and applies them. Update bytes never
 * cross Redis: per step, O(replicas x model size).
 *
 * A replica that dies or does not answer within the step's deadline (plus the upload grace) counts as having none of
 * its clients answer ('failed'); the round then commits with the others or misses its quorum, as on one process.
 */
export class ClusterSteps {
  private readonly waiting = new Map<string, (reply: StepReply) => void>();
  /** The last stored model read for a step (a round's model is read once per replica, not once per task). */
  private cached: { version: string; values: Float32Array } | null = null;

  constructor(private readonly deps: ClusterStepsDeps) {
    deps.io.on(STEP, (req: StepRequest) => {
      if (req.replica !== deps.replicaId) return;
      deps.onBusBytes?.(byteSize(req));
      void this.serve(req);
    });
    deps.io.on(STEP_RESULT, (reply: StepReply) => {
      if (reply.leader !== deps.replicaId) return;
      deps.onBusBytes?.(byteSize(reply));
      this.waiting.get(reply.stepId)?.(reply);
    });
  }

  /** The leader's side: one step over the clients of every replica (a StepRunner). */
  async run(args: StepArgs): Promise<StepResult> {
    const { replicaId, presence, store, dispatcher, strategy } = this.deps;
    const where = await presence.locate();
    const groups = new Map<string, string[]>();
    for (const id of args.clientIds) {
      // A client no replica holds is asked here: the dispatcher records it as offline, as on one process.
      const r = where.get(id) ?? replicaId;
      let g = groups.get(r);
      if (!g) groups.set(r, (g = []));
      g.push(id);
    }
    const local = groups.get(replicaId) ?? [];
    groups.delete(replicaId);
    if (groups.size > 0 && args.transform) throw new Error('a step with a transform closure cannot run on other replicas: give calibrateTo');
    const stored = groups.size > 0 ? await store.getModel(args.modelVersion) : null;
    const weights = stored && stored.prunedAt == null && stored.erasedAt == null ? null : toBytes(args.model.values);
    const deadlineUnixMs = Date.now() + args.deadlineMs;
    const remote = [...groups].map(([replica, clientIds]) =>
      this.ask(replica, clientIds, {
        modelVersion: args.modelVersion,
        weights,
        topologyJson: args.topologyJson,
        round: args.round,
        hyper: args.hyper,
        seed: args.seed,
        deadlineUnixMs,
        jobId: args.jobId ?? null,
        kind: args.kind ?? null,
        stageRoundId: args.stageAs?.roundId ?? null,
        calibrateTo: args.calibrateTo ? [...args.calibrateTo].filter(([id]) => clientIds.includes(id)).map(([id, n]) => [id, Array.from(n)]) : null,
      }, args.deadlineMs, args.signal),
    );
    const folded = await foldStep(dispatcher, strategy, { ...args, clientIds: local });
    for (const reply of await Promise.all(remote)) {
      if (reply.error !== null || !reply.partial) {
        this.deps.log.warn({ replica: reply.replica, error: reply.error }, 'a replica did not complete its part of a step');
        continue;
      }
      folded.agg.merge!(strategy.decodePartial!(reply.partial, args.model.layout));
      for (const p of reply.participants) folded.participants.push(p);
      folded.missing.push(...reply.missing);
      folded.cost = addCosts(folded.cost, reply.cost);
    }
    return finishStep(folded, args.model.values, boundsSensitivity(strategy.name));
  }

  private ask(
    replica: string,
    clientIds: string[],
    body: Omit<StepRequest, 'stepId' | 'replica' | 'leader' | 'clientIds'>,
    deadlineMs: number,
    signal?: AbortSignal,
  ): Promise<StepReply> {
    const stepId = newId();
    const failed = (error: string): StepReply => ({
      stepId,
      replica,
      leader: this.deps.replicaId,
      error,
      partial: null,
      participants: [],
      missing: clientIds.map((clientId) => ({ clientId, reason: 'failed', detail: `replica ${replica}: ${error}` })),
      cost: { clientSampleEpochs: 0, bytesOut: 0, bytesIn: 0, tasks: clientIds.length },
      timing: { sendMs: 0, decodeMs: 0, aggregateMs: 0, stageMs: 0 },
    });
    return new Promise<StepReply>((resolve) => {
      let done = false;
      const finish = (r: StepReply) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        clearInterval(alive);
        this.waiting.delete(stepId);
        signal?.removeEventListener('abort', onAbort);
        // A replica's error counts its clients as missing, each with the reason.
        resolve(r.error !== null ? { ...failed(r.error), ...(r.missing.length ? { missing: r.missing } : {}) } : r);
      };
      const onAbort = () => finish(failed('aborted'));
      const timer = setTimeout(() => finish(failed(`no result within the step's deadline and ${RESULT_GRACE_MS} ms`)), deadlineMs + RESULT_GRACE_MS);
      const alive = setInterval(() => {
        void this.deps.presence.replicas().then(
          (rs) => {
            if (!rs.some((r) => r.replicaId === replica)) finish(failed('the replica left the cluster'));
          },
          () => undefined,
        );
      }, ALIVE_CHECK_MS);
      this.waiting.set(stepId, finish);
      signal?.addEventListener('abort', onAbort);
      const req: StepRequest = { stepId, replica, leader: this.deps.replicaId, clientIds, ...body };
      this.deps.onBusBytes?.(byteSize(req));
      this.deps.io.serverSideEmit(STEP, req);
    });
  }

  /** A replica's side: runs its part of the leader's step and sends the partial back. */
  private async serve(req: StepRequest): Promise<void> {
    const { store, dispatcher, strategy, replicaId, io, log } = this.deps;
    const base = { stepId: req.stepId, replica: replicaId, leader: req.leader };
    let reply: StepReply;
    try {
      const meta = await store.meta();
      const layout = meta.layout;
      const values = req.weights ? fromBytes(req.weights, layout) : await this.storedModel(req.modelVersion);
      const folded = await foldStep(dispatcher, strategy, {
        clientIds: req.clientIds,
        model: { layout, values },
        modelVersion: req.modelVersion,
        topologyJson: req.topologyJson,
        round: req.round,
        hyper: req.hyper,
        seed: req.seed,
        deadlineMs: Math.max(0, req.deadlineUnixMs - Date.now()),
        ...(req.jobId ? { jobId: req.jobId } : {}),
        ...(req.kind !== null ? { kind: req.kind } : {}),
        ...(req.stageRoundId ? { stageAs: { store, roundId: req.stageRoundId } } : {}),
        ...(req.calibrateTo ? { calibrateTo: new Map(req.calibrateTo) } : {}),
      });
      reply = {
        ...base,
        error: null,
        partial: folded.agg.partial!().encode(),
        participants: folded.participants.map((p) => ({ clientId: p.clientId, numExamples: p.numExamples, norms: Array.from(p.norms), ...(p.metrics ? { metrics: p.metrics } : {}) })),
        missing: folded.missing,
        cost: folded.cost,
        timing: folded.timing,
      };
    } catch (e) {
      log.warn({ err: e, stepId: req.stepId }, 'this replica could not run its part of a step');
      reply = { ...base, error: (e as Error).message ?? String(e), partial: null, participants: [], missing: [], cost: { clientSampleEpochs: 0, bytesOut: 0, bytesIn: 0, tasks: 0 }, timing: { sendMs: 0, decodeMs: 0, aggregateMs: 0, stageMs: 0 } };
    }
    this.deps.onBusBytes?.(byteSize(reply));
    io.serverSideEmit(STEP_RESULT, reply);
  }

  private async storedModel(version: string): Promise<Float32Array> {
    if (this.cached?.version === version) return this.cached.values;
    const values = await this.deps.store.readModel(version);
    this.cached = { version, values };
    return values;
  }
}

function addCosts(a: WorkCost, b: WorkCost): WorkCost {
  return { clientSampleEpochs: a.clientSampleEpochs + b.clientSampleEpochs, bytesOut: a.bytesOut + b.bytesOut, bytesIn: a.bytesIn + b.bytesIn, tasks: a.tasks + b.tasks };
}

function toBytes(values: Float32Array): Uint8Array {
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

/** Float32 values from bytes that travelled (copied: a received Buffer need not be 4-byte aligned). */
function fromBytes(bytes: Uint8Array, layout: WeightLayout): Float32Array {
  if (bytes.byteLength !== layout.totalSize * 4) throw new RangeError(`a step's model of ${bytes.byteLength} bytes, the layout needs ${layout.totalSize * 4}`);
  const out = new Float32Array(layout.totalSize);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

/** The bytes a message carries (its binary fields plus its JSON), for the cluster's bus counters. */
function byteSize(msg: object): number {
  let n = 0;
  // The holder's own value, not `v`: JSON.stringify hands the replacer a Buffer already turned into {type, data}.
  const json = JSON.stringify(msg, function (this: Record<string, unknown>, k: string, v: unknown) {
    const raw = this[k];
    if (raw instanceof Uint8Array) {
      n += raw.byteLength;
      return null;
    }
    return v;
  });
  return n + json.length;
}

export type { ParticipantInput };
