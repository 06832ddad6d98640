import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { HistoryStats, JobRecord } from './history/store.js';
import { ROUND_FAILURE_REASONS, type RoundFailureReason } from './round-failure.js';
import type { Missing } from './rounds/dispatcher.js';

/** Where a forget request came from: a client asking for itself over its session, or the operator API/CLI. */
export type ForgetSource = 'client' | 'operator';

/** What the task dispatcher reports as answers arrive; injected, so that the dispatcher knows nothing of Prometheus. */
export interface DispatchObserver {
  updateAccepted(): void;
  /** `reason`: the ErrorCode name sent back to the client, or the dispatcher's own reason (e.g. CALLBACK_REJECTED). */
  updateRejected(reason: string): void;
  /** A selected client whose task ended without an accepted answer. */
  participantMissing(reason: Missing['reason']): void;
}

/** What the metrics read from the coordinator's parts when Prometheus scrapes, instead of mirroring their state. */
export interface MetricsSources {
  connectedClients(): number;
  historyStats(): HistoryStats | Promise<HistoryStats>;
  jobs(): JobRecord[] | Promise<JobRecord[]>;
  /** The socket server's totals since it started (refusals by reason, bytes including live sessions). */
  transport(): { connections: number; refused: Record<string, number>; bytesIn: number; bytesOut: number };
  /** What peers hold on the transport now (connections, handshakes, partial chunk streams); optional. */
  held?(): { openConnections: number; handshaking: number; partialStreams: number; partialStreamBytes: number };
  /** Event streams (GET /v1/events) open now on the operator API; optional. */
  eventStreams?(): number;
  /** A cluster replica: whether it leads, and the bytes of step and event messages it sent and received through
   *  Redis since it started; optional (absent on one process). */
  cluster?(): { leader: boolean; busBytes: number } | null;
  /** The dispatcher's upload flow control: update bytes held now and at most, grants. */
  uploads(): { heldUpdateBytes: number; peakHeldUpdateBytes: number; grantedUploadBytes: number; uploadsWaiting: number; uploadGrants: number };
}

export interface MetricsOptions {
  /** Node process metrics (CPU, memory, event loop, GC) in the same registry; default true. */
  processMetrics?: boolean;
}

const PREFIX = 'fedunlearn_';
const JOB_STATES: readonly JobRecord['state'][] = ['queued', 'running', 'done', 'failed'];
/** Rounds span a fraction of a second (small models, local clients) to the deadline (minutes). */
const ROUND_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
/** Forget jobs replay many rounds: seconds to hours. */
const JOB_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200];

/**
 * The coordinator's Prometheus metrics, in a registry of its own (never prom-client's global one, so that two
 * coordinators in one process, as in tests and simulations, never share a series). Events are counted where they
 * happen through the observer methods; state (clients, jobs, history size, transport totals) is read at scrape time.
 */
export class CoordinatorMetrics implements DispatchObserver {
  readonly registry = new Registry();
  private readonly roundsCompleted: Counter;
  private readonly roundDuration: Histogram;
  private readonly roundsFailed: Counter<'reason'>;
  private readonly accepted: Counter;
  private readonly rejected: Counter<'reason'>;
  private readonly missing: Counter<'reason'>;
  private readonly forgetRequests: Counter<'source'>;
  private readonly jobDuration: Histogram<'state' | 'method'>;
  /** When each job was first seen running, for its duration (a resumed job counts from its resumption). */
  private readonly jobStarts = new Map<string, number>();

  constructor(sources: MetricsSources, opts: MetricsOptions = {}) {
    const registers = [this.registry];
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: PREFIX });

    this.roundsCompleted = new Counter({ name: `${PREFIX}rounds_completed_total`, help: 'Training rounds committed.', registers });
    this.roundsFailed = new Counter({
      name: `${PREFIX}rounds_failed_total`,
      help: 'Training rounds of the round loop that failed, by reason: quorum (too few answers), disk_full, store, invalid_model, internal.',
      labelNames: ['reason'],
      registers,
    });
    // Every reason present from the start, so that a rate() over it has a zero to start from.
    for (const reason of ROUND_FAILURE_REASONS) this.roundsFailed.inc({ reason }, 0);
    this.roundDuration = new Histogram({
      name: `${PREFIX}round_duration_seconds`,
      help: 'Wall time of committed training rounds, from start (first attempt) to commit.',
      buckets: ROUND_BUCKETS,
      registers,
    });
    this.accepted = new Counter({ name: `${PREFIX}updates_accepted_total`, help: 'Client answers (updates, evaluations) accepted into a round or job step.', registers });
    this.rejected = new Counter({
      name: `${PREFIX}updates_rejected_total`,
      help: 'Client updates refused, by reason (the ErrorCode sent back, or CALLBACK_REJECTED when aggregation refused it).',
      labelNames: ['reason'],
      registers,
    });
    this.missing = new Counter({
      name: `${PREFIX}missing_participants_total`,
      help: 'Selected clients whose task ended without an accepted answer, by reason (offline, disconnected, deadline, rejected, failed).',
      labelNames: ['reason'],
      registers,
    });
    this.forgetRequests = new Counter({
      name: `${PREFIX}forget_requests_total`,
      help: 'Forget jobs queued, by who asked (client: over its own session; operator: API or CLI).',
      labelNames: ['source'],
      registers,
    });
    this.jobDuration = new Histogram({
      name: `${PREFIX}job_duration_seconds`,
      help: 'Wall time of finished forget jobs, from start of run to done or failed.',
      labelNames: ['state', 'method'],
      buckets: JOB_BUCKETS,
      registers,
    });

    new Gauge({
      name: `${PREFIX}connected_clients`,
      help: 'Authenticated client sessions connected now.',
      registers,
      collect() {
        this.set(sources.connectedClients());
      },
    });
    new Gauge({
      name: `${PREFIX}cluster_leader`,
      help: 'A cluster replica: 1 while it holds the leader lease, 0 otherwise (absent on one process).',
      registers,
      collect() {
        const c = sources.cluster?.();
        if (c) this.set(c.leader ? 1 : 0);
      },
    });
    new Gauge({
      name: `${PREFIX}cluster_bus_bytes`,
      help: 'A cluster replica: bytes of step messages, partial aggregates and relayed events it sent and received through Redis since it started (update bytes never travel there).',
      registers,
      collect() {
        const c = sources.cluster?.();
        if (c) this.set(c.busBytes);
      },
    });
    new Gauge({
      name: `${PREFIX}jobs`,
      help: 'Forget jobs in the history, by state.',
      labelNames: ['state'],
      registers,
      async collect() {
        const counts = new Map<string, number>(JOB_STATES.map((s) => [s, 0]));
        for (const j of await sources.jobs()) counts.set(j.state, (counts.get(j.state) ?? 0) + 1);
        for (const [state, n] of counts) this.set({ state }, n);
      },
    });
    new Gauge({
      name: `${PREFIX}purges_incomplete`,
      help: 'Done forget jobs whose purged bytes are still on disk (a reader blocks the WAL checkpoint; retried until it completes).',
      registers,
      async collect() {
        this.set((await sources.jobs()).filter((j) => j.state === 'done' && (j.report as { purged?: { complete?: boolean } } | null)?.purged?.complete === false).length);
      },
    });
    new Gauge({
      name: `${PREFIX}history_bytes`,
      help: 'Bytes of blobs in the history, by kind: model, or update_<dtype> for client updates by stored encoding.',
      labelNames: ['kind'],
      registers,
      async collect() {
        const s = await sources.historyStats();
        this.reset();
        this.set({ kind: 'model' }, s.modelBytes);
        for (const [dtype, bytes] of Object.entries(s.updateBytesByDtype)) this.set({ kind: `update_${dtype}` }, bytes);
      },
    });
    new Gauge({
      name: `${PREFIX}history_models`,
      help: 'Model versions in the history: kept, erased because a forgotten client had contributed to them, or pruned by the model retention policy.',
      labelNames: ['state'],
      registers,
      async collect() {
        const s = await sources.historyStats();
        this.set({ state: 'kept' }, s.models - s.modelsErased - s.modelsPruned);
        this.set({ state: 'erased' }, s.modelsErased);
        this.set({ state: 'pruned' }, s.modelsPruned);
      },
    });
    // Totals the socket server already keeps: a counter that takes their value at scrape time is still monotonic,
    // since they only grow.
    new Counter({
      name: `${PREFIX}connections_total`,
      help: 'Socket connections opened by clients (authenticated or not).',
      registers,
      collect() {
        this.reset();
        this.inc(sources.transport().connections);
      },
    });
    new Counter({
      name: `${PREFIX}refused_total`,
      help: 'Connections, handshakes and messages the transport refused, by reason (ErrorCode name or HELLO_TIMEOUT).',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(sources.transport().refused)) this.inc({ reason }, n);
      },
    });
    new Counter({
      name: `${PREFIX}wire_bytes_total`,
      help: 'Bytes of protocol frames on client sockets, by direction (in: from clients; out: to clients).',
      labelNames: ['direction'],
      registers,
      collect() {
        const t = sources.transport();
        this.reset();
        this.inc({ direction: 'in' }, t.bytesIn);
        this.inc({ direction: 'out' }, t.bytesOut);
      },
    });
    new Gauge({
      name: `${PREFIX}peer_resources`,
      help: 'What client connections hold on the coordinator now, by resource: open_connections, handshaking (hello or challenge pending, bounded by the hello timeout), partial_streams and partial_stream_bytes (chunked messages still arriving, bounded per connection and dropped after the stream idle timeout); event_streams (GET /v1/events streams open, bounded per address and in total).',
      labelNames: ['resource'],
      registers,
      collect() {
        const streams = sources.eventStreams?.();
        if (streams !== undefined) this.set({ resource: 'event_streams' }, streams);
        const h = sources.held?.();
        if (!h) return;
        this.set({ resource: 'open_connections' }, h.openConnections);
        this.set({ resource: 'handshaking' }, h.handshaking);
        this.set({ resource: 'partial_streams' }, h.partialStreams);
        this.set({ resource: 'partial_stream_bytes' }, h.partialStreamBytes);
      },
    });
    new Gauge({
      name: `${PREFIX}update_bytes_held`,
      help: 'Bytes of client updates received and not yet folded and staged (wire size), by stat: now, or peak since start. The upload window bounds it.',
      labelNames: ['stat'],
      registers,
      collect() {
        const u = sources.uploads();
        this.set({ stat: 'now' }, u.heldUpdateBytes);
        this.set({ stat: 'peak' }, u.peakHeldUpdateBytes);
      },
    });
    new Gauge({
      name: `${PREFIX}upload_granted_bytes`,
      help: 'Bytes of upload grants not yet released (arriving, or received and not yet folded and staged).',
      registers,
      collect() {
        this.set(sources.uploads().grantedUploadBytes);
      },
    });
    new Gauge({
      name: `${PREFIX}upload_requests_waiting`,
      help: 'Clients that finished a task and wait for an upload grant.',
      registers,
      collect() {
        this.set(sources.uploads().uploadsWaiting);
      },
    });
    new Counter({
      name: `${PREFIX}upload_grants_total`,
      help: 'Upload grants issued.',
      registers,
      collect() {
        this.reset();
        this.inc(sources.uploads().uploadGrants);
      },
    });
  }

  /** The Prometheus text exposition and its content type. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  roundCompleted(durationMs: number): void {
    this.roundsCompleted.inc();
    this.roundDuration.observe(durationMs / 1000);
  }

  roundFailed(reason: RoundFailureReason): void {
    this.roundsFailed.inc({ reason });
  }

  updateAccepted(): void {
    this.accepted.inc();
  }

  updateRejected(reason: string): void {
    this.rejected.inc({ reason });
  }

  participantMissing(reason: Missing['reason']): void {
    this.missing.inc({ reason });
  }

  forgetRequested(source: ForgetSource): void {
    this.forgetRequests.inc({ source });
  }

  /** Feed every job update (progress and finish) here: a job's duration runs from the first update seen running. */
  jobUpdated(job: JobRecord, now = Date.now()): void {
    if (job.state === 'running') {
      if (!this.jobStarts.has(job.jobId)) this.jobStarts.set(job.jobId, now);
      return;
    }
    if (job.state !== 'done' && job.state !== 'failed') return;
    const started = this.jobStarts.get(job.jobId);
    if (started === undefined) return;
    this.jobStarts.delete(job.jobId);
    this.jobDuration.observe({ state: job.state, method: job.method }, (now - started) / 1000);
  }
}
