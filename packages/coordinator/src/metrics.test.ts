import { test } from 'node:test';
import assert from 'node:assert/strict';
import { register as globalRegistry } from 'prom-client';
import type { HistoryStats, JobRecord } from './history/store.js';
import { CoordinatorMetrics, type MetricsSources } from './metrics.js';

/** Samples of a Prometheus text exposition, keyed `name{a="x",b="y"}` as printed (labels in printed order). */
function samples(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    out.set(m[1]!, Number(m[2]));
  }
  return out;
}

/** Sources whose values a test changes between scrapes. */
function sources(): MetricsSources & {
  state: { clients: number; stats: HistoryStats; jobs: JobRecord[]; transport: ReturnType<MetricsSources['transport']>; uploads: ReturnType<MetricsSources['uploads']> };
} {
  const state = {
    clients: 0,
    stats: { modelBytes: 0, updateBytes: 0, updateBytesByDtype: {}, updates: 0, rounds: 0, models: 0, modelsErased: 0, modelsPruned: 0 } as HistoryStats,
    jobs: [] as JobRecord[],
    transport: { connections: 0, refused: {} as Record<string, number>, bytesIn: 0, bytesOut: 0 },
    uploads: { heldUpdateBytes: 0, peakHeldUpdateBytes: 0, grantedUploadBytes: 0, uploadsWaiting: 0, uploadGrants: 0 },
  };
  return {
    state,
    connectedClients: () => state.clients,
    historyStats: () => state.stats,
    jobs: () => state.jobs,
    transport: () => state.transport,
    uploads: () => state.uploads,
  };
}

function job(jobId: string, state: JobRecord['state'], method = 'federaser'): JobRecord {
  return { jobId, kind: 'forget', state, clientIds: ['a'], requestedBy: 'operator', method, params: {}, progress: { step: 0, total: 0 }, checkpoint: null, report: null, error: null, createdAt: 0, updatedAt: 0 };
}

test('peer resources: open event streams are counted under resource="event_streams", as they are now', async () => {
  let open = 3;
  const m = new CoordinatorMetrics({ ...sources(), eventStreams: () => open }, { processMetrics: false });
  assert.equal(samples((await m.scrape()).body).get('fedunlearn_peer_resources{resource="event_streams"}'), 3);
  open = 1;
  assert.equal(samples((await m.scrape()).body).get('fedunlearn_peer_resources{resource="event_streams"}'), 1);
});

test('events counted through the observer methods appear with their labels', async () => {
  const m = new CoordinatorMetrics(sources(), { processMetrics: false });
  m.roundCompleted(1500);
  m.roundCompleted(250);
  for (let i = 0; i < 7; i++) m.updateAccepted();
  m.updateRejected('NON_FINITE_VALUES');
  m.updateRejected('NON_FINITE_VALUES');
  m.updateRejected('SHAPE_MISMATCH');
  m.participantMissing('deadline');
  m.forgetRequested('client');
  m.forgetRequested('operator');
  m.forgetRequested('operator');
  const s = samples((await m.scrape()).body);
  assert.equal(s.get('fedunlearn_rounds_completed_total'), 2);
  assert.equal(s.get('fedunlearn_round_duration_seconds_count'), 2);
  assert.equal(s.get('fedunlearn_round_duration_seconds_sum'), 1.75);
  assert.equal(s.get('fedunlearn_round_duration_seconds_bucket{le="0.25"}'), 1);
  assert.equal(s.get('fedunlearn_round_duration_seconds_bucket{le="2.5"}'), 2);
  assert.equal(s.get('fedunlearn_updates_accepted_total'), 7);
  assert.equal(s.get('fedunlearn_updates_rejected_total{reason="NON_FINITE_VALUES"}'), 2);
  assert.equal(s.get('fedunlearn_updates_rejected_total{reason="SHAPE_MISMATCH"}'), 1);
  assert.equal(s.get('fedunlearn_missing_participants_total{reason="deadline"}'), 1);
  assert.equal(s.get('fedunlearn_forget_requests_total{source="client"}'), 1);
  assert.equal(s.get('fedunlearn_forget_requests_total{source="operator"}'), 2);
});

test('state is read from the sources at every scrape', async () => {
  const src = sources();
  const m = new CoordinatorMetrics(src, { processMetrics: false });
  src.state.clients = 3;
  src.state.stats = { modelBytes: 4000, updateBytes: 900, updateBytesByDtype: { fp32: 800, int8: 100 }, updates: 3, rounds: 2, models: 3, modelsErased: 0, modelsPruned: 0 };
  src.state.jobs = [job('j1', 'done'), job('j2', 'done'), job('j3', 'queued')];
  src.state.transport = { connections: 5, refused: { UNAUTHENTICATED: 2, HELLO_TIMEOUT: 1 }, bytesIn: 12345, bytesOut: 67890 };
  let s = samples((await m.scrape()).body);
  assert.equal(s.get('fedunlearn_connected_clients'), 3);
  assert.equal(s.get('fedunlearn_history_bytes{kind="model"}'), 4000);
  assert.equal(s.get('fedunlearn_history_bytes{kind="update_fp32"}'), 800);
  assert.equal(s.get('fedunlearn_history_bytes{kind="update_int8"}'), 100);
  assert.equal(s.get('fedunlearn_jobs{state="done"}'), 2);
  assert.equal(s.get('fedunlearn_jobs{state="queued"}'), 1);
  assert.equal(s.get('fedunlearn_jobs{state="running"}'), 0, 'every state has a series, zero included');
  assert.equal(s.get('fedunlearn_connections_total'), 5);
  assert.equal(s.get('fedunlearn_refused_total{reason="UNAUTHENTICATED"}'), 2);
  assert.equal(s.get('fedunlearn_refused_total{reason="HELLO_TIMEOUT"}'), 1);
  assert.equal(s.get('fedunlearn_wire_bytes_total{direction="in"}'), 12345);
  assert.equal(s.get('fedunlearn_wire_bytes_total{direction="out"}'), 67890);
  src.state.uploads = { heldUpdateBytes: 3_000_000, peakHeldUpdateBytes: 9_000_000, grantedUploadBytes: 4_000_000, uploadsWaiting: 7, uploadGrants: 12 };
  s = samples((await m.scrape()).body);
  assert.equal(s.get('fedunlearn_update_bytes_held{stat="now"}'), 3_000_000);
  assert.equal(s.get('fedunlearn_update_bytes_held{stat="peak"}'), 9_000_000);
  assert.equal(s.get('fedunlearn_upload_granted_bytes'), 4_000_000);
  assert.equal(s.get('fedunlearn_upload_requests_waiting'), 7);
  assert.equal(s.get('fedunlearn_upload_grants_total'), 12);
  assert.equal(s.get('fedunlearn_peer_resources{resource="event_streams"}'), undefined, 'no source, no series');

  // The next scrape shows the new state, not the old one plus the new one.
  src.state.clients = 1;
  src.state.stats = { modelBytes: 5000, updateBytes: 0, updateBytesByDtype: {}, updates: 0, rounds: 2, models: 4, modelsErased: 1, modelsPruned: 0 };
  src.state.transport = { connections: 6, refused: { UNAUTHENTICATED: 2, HELLO_TIMEOUT: 1 }, bytesIn: 20000, bytesOut: 70000 };
  s = samples((await m.scrape()).body);
  assert.equal(s.get('fedunlearn_connected_clients'), 1);
  assert.equal(s.get('fedunlearn_history_bytes{kind="model"}'), 5000);
  assert.equal(s.get('fedunlearn_history_models{state="kept"}'), 3);
  assert.equal(s.get('fedunlearn_history_models{state="erased"}'), 1);
  assert.equal(s.get('fedunlearn_history_models{state="pruned"}'), 0);
  assert.equal(s.has('fedunlearn_history_bytes{kind="update_fp32"}'), false, 'a purged encoding leaves no stale series');
  assert.equal(s.get('fedunlearn_connections_total'), 6);
  assert.equal(s.get('fedunlearn_wire_bytes_total{direction="in"}'), 20000);
});

test('a job lasts from the first update seen running to done or failed', async () => {
  const m = new CoordinatorMetrics(sources(), { processMetrics: false });
  m.jobUpdated(job('j1', 'queued'), 1_000);
  m.jobUpdated(job('j1', 'running'), 2_000);
  m.jobUpdated(job('j1', 'running'), 5_000); // progress does not restart the clock
  m.jobUpdated(job('j1', 'done'), 32_000);
  m.jobUpdated(job('j2', 'running', 'retrain'), 40_000);
  m.jobUpdated(job('j2', 'failed', 'retrain'), 41_500);
  m.jobUpdated(job('j3', 'done'), 50_000); // never seen running (finished before this process): not observed
  const s = samples((await m.scrape()).body);
  assert.equal(s.get('fedunlearn_job_duration_seconds_count{state="done",method="federaser"}'), 1);
  assert.equal(s.get('fedunlearn_job_duration_seconds_sum{state="done",method="federaser"}'), 30);
  assert.equal(s.get('fedunlearn_job_duration_seconds_sum{state="failed",method="retrain"}'), 1.5);
});

test('each instance owns its registry: nothing in the global one, nothing shared', async () => {
  const a = new CoordinatorMetrics(sources());
  const b = new CoordinatorMetrics(sources());
  a.updateAccepted();
  const sa = samples((await a.scrape()).body);
  const sb = samples((await b.scrape()).body);
  assert.equal(sa.get('fedunlearn_updates_accepted_total'), 1);
  assert.equal(sb.get('fedunlearn_updates_accepted_total'), 0);
  assert.ok(sa.has('fedunlearn_process_resident_memory_bytes'), 'process metrics, prefixed');
  assert.equal(globalRegistry.getMetricsAsArray().length, 0);
  const { contentType, body } = await a.scrape();
  assert.match(contentType, /^text\/plain; version=0\.0\.4/);
  for (const name of ['fedunlearn_rounds_completed_total', 'fedunlearn_updates_rejected_total', 'fedunlearn_wire_bytes_total']) {
    assert.match(body, new RegExp(`^# HELP ${name} \\S`, 'm'), `${name} has HELP text`);
  }
});
