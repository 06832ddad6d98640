import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FederatedClient } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type RoundOutcome } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import {
  encodeTensor,
  ErrorCode,
  errorCodeName,
  fedunlearn,
  layerView,
  layoutOf,
} from '@fedunlearn/protocol';
import { RawPeer } from './raw-peer.js';
import { connectClients, federation, mnistScenario, tempDir, waitUntil } from './support.js';

// What an operator scrapes and reads: a real coordinator with real SDK clients (and one raw peer sending a poisoned
// update) on real sockets, its Prometheus metrics compared with what the federation's history says happened, its
// OpenAPI document compared with the routes the server really has, and its JSON responses compared with the records
// they are made from (fastify serialises with the response schemas, which would silently drop unlisted fields).

const TOKEN = 'operator-token-for-tests';
const WAIT_MS = 20_000;
const auth = { authorization: `Bearer ${TOKEN}` };

let tmp: ReturnType<typeof tempDir>;
let coordinator: Coordinator;
let url: string;
let clients: FederatedClient[] = [];
const outcomes: RoundOutcome[] = [];

/** Samples of a Prometheus text exposition, keyed `name{a="x"}` as printed; checks every line's syntax on the way. */
function parseExposition(text: string): { samples: Map<string, number>; help: Map<string, string>; types: Map<string, string> } {
  const samples = new Map<string, number>();
  const help = new Map<string, string>();
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const h = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
    if (h) {
      help.set(h[1]!, h[2]!);
      continue;
    }
    const t = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (t) {
      types.set(t[1]!, t[2]!);
      continue;
    }
    const s = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})?) (-?[0-9.e+-]+|[Nn]a[Nn]|[+-]?Inf)$/.exec(line);
    assert.ok(s, `not a valid exposition line: ${JSON.stringify(line)}`);
    // prom-client prints NaN as "Nan"; Prometheus parses values with Go's case-insensitive ParseFloat.
    samples.set(s[1]!, /^nan$/i.test(s[2]!) ? NaN : Number(s[2]));
  }
  return { samples, help, types };
}

async function scrape(headers: Record<string, string> = {}): Promise<ReturnType<typeof parseExposition>> {
  const res = await fetch(`${url}/metrics`, { headers });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return parseExposition(await res.text());
}

async function getJson<T = unknown>(path: string, headers: Record<string, string> = auth): Promise<{ status: number; body: T }> {
  const res = await fetch(`${url}${path}`, { headers });
  return { status: res.status, body: (await res.json()) as T };
}

/** What JSON.stringify makes of a record, i.e. what the API returned before it had response schemas. */
const plain = (v: unknown): unknown => JSON.parse(JSON.stringify(v));

/** Every (method, path) the server routes, read from fastify's own route tree; paths in OpenAPI form (`{id}`). */
function registeredRoutes(c: Coordinator): Set<string> {
  const out = new Set<string>();
  const stack: string[] = [];
  for (const line of c.http.printRoutes({ commonPrefix: false }).split('\n')) {
    // Nodes without a handler of their own (a shared prefix such as `/dashboard/`) carry no methods but still prefix
    // their children.
    const m = /^([│ ]*)[├└]── (\S+)(?: \(([A-Z, ]+)\))?$/.exec(line);
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    const parent = stack[depth - 1] ?? '';
    // fastify prints a wildcard child (`/dashboard/*`) as `*` under `dashboard`, without the separator.
    const path = parent + (m[2] === '*' && !parent.endsWith('/') ? '/*' : m[2]!);
    stack.push(path);
    const openapiPath = path.replace(/:([A-Za-z0-9_]+)/g, '{$1}').replace(/\*$/, '{*}');
    for (const method of m[3]?.split(', ') ?? []) if (method !== 'HEAD') out.add(`${method} ${openapiPath}`);
  }
  return out;
}

before(async () => {
  tmp = tempDir('operator-api');
  const scenario = mnistScenario(3, 20);
  coordinator = await Coordinator.create({
    enrolment: 'open',
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    // Everyone connected is asked, so that the raw peer gets a task in the first round.
    federation: federation({ clientsPerRound: 4, minClients: 2, roundDeadlineMs: WAIT_MS }),
    historyInterval: 1,
    operatorToken: TOKEN,
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  ({ url } = await coordinator.listen(0));
  clients = await connectClients(url, scenario.parts, 'op');

  // Round 1: three honest clients and a raw peer whose update carries a NaN.
  const { peer: raw, answer } = await RawPeer.introduce(url, 'raw-nan', 'secret-of-raw-nan');
  assert.equal(answer.body, 'welcome');
  const round1 = coordinator.runRounds(1);
  const task = (await raw.next('task')).task as fedunlearn.v1.Task;
  const layout = layoutOf((task.weights ?? []).map((t) => ({ name: t.name ?? '', shape: (t.shape ?? []).map(Number) })));
  const poisoned = new Float32Array(layout.totalSize);
  poisoned[7] = NaN;
  raw.send({ update: { taskId: task.taskId, numExamples: 50, delta: layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, poisoned, i))) } });
  const refusal = (await raw.next('error')).error as fedunlearn.v1.Error;
  assert.equal(errorCodeName(refusal.code), errorCodeName(ErrorCode.NON_FINITE_VALUES));
  outcomes.push(...(await round1));
  raw.close();
  await waitUntil(() => coordinator.registry.size === 3, WAIT_MS, 'the raw peer to leave');
  // Round 2: the honest clients only.
  outcomes.push(...(await coordinator.runRounds(1)));
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await coordinator?.stop();
  tmp?.cleanup();
});

test('the rounds the history holds are the rounds /metrics counts', async () => {
  const { samples, help, types } = await scrape();
  const rounds = await coordinator.store.listRounds();
  assert.equal(rounds.length, 2);
  assert.equal(samples.get('fedunlearn_rounds_completed_total'), rounds.length);
  assert.equal(samples.get('fedunlearn_round_duration_seconds_count'), rounds.length);
  const durations = outcomes.reduce((s, o) => s + o.durationMs / 1000, 0);
  assert.ok(Math.abs(samples.get('fedunlearn_round_duration_seconds_sum')! - durations) < 1e-6);

  const participants = rounds.reduce((n, r) => n + r.participants.length, 0);
  assert.equal(participants, 6, 'three honest clients in each of two rounds');
  assert.equal(samples.get('fedunlearn_updates_accepted_total'), participants);
  assert.equal(samples.get('fedunlearn_updates_rejected_total{reason="NON_FINITE_VALUES"}'), 1);
  assert.equal(samples.get('fedunlearn_missing_participants_total{reason="rejected"}'), 1);
  assert.equal(outcomes[0]!.missing.length, 1, 'the poisoned update is the one missing answer of round 1');

  assert.equal(samples.get('fedunlearn_connected_clients'), coordinator.registry.size);
  assert.equal(samples.get('fedunlearn_connections_total'), 4);
  const stats = await coordinator.store.stats();
  assert.equal(samples.get('fedunlearn_history_bytes{kind="model"}'), stats.modelBytes);
  assert.equal(samples.get('fedunlearn_history_bytes{kind="update_fp32"}'), stats.updateBytesByDtype.fp32);
  // The wire carried at least the tasks and updates the rounds counted, plus handshakes and the refused update.
  const wireOut = samples.get('fedunlearn_wire_bytes_total{direction="out"}')!;
  const wireIn = samples.get('fedunlearn_wire_bytes_total{direction="in"}')!;
  assert.ok(wireOut > outcomes.reduce((n, o) => n + o.cost.bytesOut, 0), `bytes out ${wireOut}`);
  assert.ok(wireIn > outcomes.reduce((n, o) => n + o.cost.bytesIn, 0), `bytes in ${wireIn}`);

  for (const name of ['fedunlearn_rounds_completed_total', 'fedunlearn_updates_rejected_total', 'fedunlearn_jobs', 'fedunlearn_process_resident_memory_bytes']) {
    assert.ok(help.get(name), `${name} has HELP`);
    assert.ok(types.get(name), `${name} has TYPE`);
  }
});

test('responses keep every field of the records they are made from', async () => {
  const status = await getJson<Record<string, unknown>>('/v1/status');
  assert.equal(status.status, 200);
  assert.deepEqual(Object.keys(status.body).sort(), ['connectedClients', 'jobs', 'model', 'trainingStopped', 'uptimeMs']);
  assert.deepEqual(status.body.model, plain(await coordinator.store.head()));
  assert.equal(status.body.connectedClients, 3);

  const listed = await getJson<{ clients: Record<string, unknown>[] }>('/v1/clients');
  const expected = (await coordinator.store.listClients()).map(({ secretHash: _hidden, ...c }) => ({ ...c, connected: coordinator.registry.get(c.clientId) !== undefined, backend: coordinator.registry.get(c.clientId)?.backend ?? null }));
  assert.deepEqual(listed.body.clients, plain(expected));
  assert.ok(listed.body.clients.every((c) => !('secretHash' in c)));

  assert.deepEqual((await getJson('/v1/rounds')).body, plain({ rounds: (await coordinator.store.listRounds()) }));
  assert.deepEqual((await getJson('/v1/rounds/2')).body, plain(await coordinator.store.getRound(2)));
  assert.deepEqual((await getJson('/v1/models')).body, plain({ head: (await coordinator.store.head()).version, models: (await coordinator.store.listModels()) }));
  assert.deepEqual((await getJson('/v1/history/stats')).body, plain(await coordinator.store.stats()));

  const weights = await fetch(`${url}/v1/models/${(await coordinator.store.head()).version}/weights`, { headers: auth });
  assert.equal(weights.headers.get('content-type'), 'application/octet-stream');
  const bytes = new Float32Array(await weights.arrayBuffer());
  assert.deepEqual(bytes, coordinator.model().weights, 'weights are sent as raw bytes, not serialised');

  const bad = await getJson<{ error: { code: string; message: string } }>('/v1/rounds/zero');
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.code, 'INVALID_ARGUMENT');
  const missing = await getJson<{ error: { code: string } }>('/v1/rounds/99');
  assert.deepEqual([missing.status, missing.body.error.code], [404, 'NOT_FOUND']);
});

test('a forget job shows in /v1/jobs with every field, and in the job metrics', async () => {
  const created = await fetch(`${url}/v1/jobs`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ clientIds: ['op-2'], method: 'replay' }) });
  assert.equal(created.status, 202);
  const job = (await created.json()) as { jobId: string };
  const { checkpoint: _c, ...queued } = (await coordinator.store.getJob(job.jobId))!;
  assert.deepEqual(job, plain(queued));
  let s = (await scrape()).samples;
  assert.equal(s.get('fedunlearn_jobs{state="queued"}'), 1);
  assert.equal(s.get('fedunlearn_forget_requests_total{source="operator"}'), 1);

  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const jobs = await getJson<{ jobs: unknown[] }>('/v1/jobs');
  assert.deepEqual(jobs.body, plain({ jobs: (await coordinator.store.listJobs()).map(({ checkpoint: _x, ...j }) => j) }));
  const one = await getJson(`/v1/jobs/${job.jobId}`);
  assert.deepEqual(one.body, (jobs.body.jobs as unknown[])[0]);
  const report = await getJson(`/v1/jobs/${job.jobId}/report`);
  assert.deepEqual(report.body, plain(done!.report));

  // op-2 trained in the earlier rounds: the models it shaped lost their weights, and say so; the head did not.
  const erased = (done!.report as { purged: { modelsErased: string[] } }).purged.modelsErased;
  const shaped = (await coordinator.store.listModels()).filter((m) => m.erasedAt !== null).map((m) => m.version);
  assert.ok(erased.length > 0);
  assert.deepEqual(erased, shaped);
  const gone = await fetch(`${url}/v1/models/${erased.at(-1)}/weights`, { headers: auth });
  assert.equal(gone.status, 410);
  assert.equal(((await gone.json()) as { error: { code: string } }).error.code, 'MODEL_ERASED');
  assert.equal((await fetch(`${url}/v1/models/${(await coordinator.store.head()).version}/weights`, { headers: auth })).status, 200);

  s = (await scrape()).samples;
  assert.equal(s.get('fedunlearn_history_models{state="erased"}'), erased.length);
  assert.equal(s.get('fedunlearn_jobs{state="done"}'), 1);
  assert.equal(s.get('fedunlearn_jobs{state="queued"}'), 0);
  assert.equal(s.get('fedunlearn_job_duration_seconds_count{state="done",method="replay"}'), 1);

  // A client asking for itself over its session counts as a client request (the job stays queued: nothing runs it).
  const clientJob = await clients[1]!.forget('operator-api test');
  assert.equal((await coordinator.store.getJob(clientJob))?.requestedBy, 'client:op-1');
  s = (await scrape()).samples;
  assert.equal(s.get('fedunlearn_forget_requests_total{source="client"}'), 1);
  assert.equal(s.get('fedunlearn_forget_requests_total{source="operator"}'), 1);
  assert.equal(s.get('fedunlearn_jobs{state="queued"}'), 1);
});

test('/v1/openapi.json is an OpenAPI 3 document with every route the server has', async () => {
  const { status, body: doc } = await getJson<{
    openapi: string;
    info: { title: string; version: string };
    paths: Record<string, Record<string, { summary?: string; tags?: string[]; security?: unknown[]; responses: Record<string, { content?: Record<string, { schema: { $ref?: string } }> }> }>>;
    components: { schemas: Record<string, unknown>; securitySchemes: Record<string, { type: string; scheme: string }> };
  }>('/v1/openapi.json', {});
  assert.equal(status, 200, 'the document needs no token');
  assert.match(doc.openapi, /^3\.\d+\.\d+$/);
  assert.ok(doc.info.title && doc.info.version);
  assert.equal(doc.components.securitySchemes.operatorToken?.type, 'http');
  assert.equal(doc.components.securitySchemes.operatorToken?.scheme, 'bearer');

  const documented = new Set<string>();
  for (const [path, ops] of Object.entries(doc.paths)) for (const method of Object.keys(ops)) documented.add(`${method.toUpperCase()} ${path}`);
  const routes = registeredRoutes(coordinator);
  assert.ok(routes.size >= 15, `route tree parsed: ${[...routes].join(', ')}`);
  assert.deepEqual([...documented].sort(), [...routes].sort());

  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const where = `${method.toUpperCase()} ${path}`;
      assert.ok(op.summary, `${where} has a summary`);
      assert.ok(op.tags && op.tags.length > 0, `${where} has tags`);
      const statuses = Object.keys(op.responses);
      assert.ok(statuses.some((s) => s.startsWith('2')), `${where} describes its success`);
      // /healthz answers 503 with the health body (status degraded and the reason), not an error.
      for (const s of statuses.filter((x) => Number(x) >= 400 && !(path === '/healthz' && x === '503'))) {
        assert.equal(op.responses[s]!.content?.['application/json']?.schema.$ref, '#/components/schemas/Error', `${where} ${s} is the error shape`);
      }
      const operatorRoute = path.startsWith('/v1/') && path !== '/v1/openapi.json';
      assert.equal(op.security !== undefined, operatorRoute, `${where}: bearer security iff an operator route`);
      if (operatorRoute) assert.ok(statuses.includes('401'), `${where} documents 401`);
    }
  }
  assert.ok(doc.components.schemas.Error, 'the error shape is a shared component');
});

test('operator routes need the token; /metrics is open unless metricsAuth says otherwise', async () => {
  const missing = await getJson<{ error: { code: string; message: string } }>('/v1/status', {});
  assert.deepEqual(missing, { status: 401, body: { error: { code: 'UNAUTHENTICATED', message: 'operator token required' } } });
  // A token that was sent and is wrong is said to be refused, not missing.
  const denied = await getJson<{ error: { code: string; message: string } }>('/v1/jobs', { authorization: 'Bearer wrong-token' });
  assert.deepEqual(denied, { status: 401, body: { error: { code: 'UNAUTHENTICATED', message: 'operator token refused: it is not the one this coordinator was started with' } } });
  assert.equal((await fetch(`${url}/metrics`)).status, 200);

  // A hello with the wrong secret is refused by the transport, and counted by reason.
  const refusedBefore = (await scrape()).samples.get('fedunlearn_refused_total{reason="UNAUTHENTICATED"}') ?? 0;
  const { peer: impostor, answer } = await RawPeer.introduce(url, 'op-0', 'not-the-secret-of-op-0');
  assert.equal(errorCodeName((answer.error as fedunlearn.v1.Error).code), errorCodeName(ErrorCode.UNAUTHENTICATED));
  impostor.close();
  assert.equal((await scrape()).samples.get('fedunlearn_refused_total{reason="UNAUTHENTICATED"}'), refusedBefore + 1);

  const other = tempDir('operator-api-auth');
  const locked = await Coordinator.create({
    enrolment: 'open',
    store: openSqliteHistory(other.dir),
    dataDir: other.dir,
    model: builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 2 }),
    federation: federation(),
    historyInterval: 1,
    operatorToken: TOKEN,
    metricsAuth: true,
    logger: createLogger({ level: 'silent' }),
  });
  try {
    const { url: lockedUrl } = await locked.listen(0);
    const open = await fetch(`${lockedUrl}/metrics`);
    assert.equal(open.status, 401);
    assert.equal(((await open.json()) as { error: { code: string } }).error.code, 'UNAUTHENTICATED');
    const withToken = await fetch(`${lockedUrl}/metrics`, { headers: auth });
    assert.equal(withToken.status, 200);
    // A second coordinator in the same process has series of its own.
    const s = parseExposition(await withToken.text()).samples;
    assert.equal(s.get('fedunlearn_rounds_completed_total'), 0);
    assert.equal(s.get('fedunlearn_connected_clients'), 0);
  } finally {
    await locked.stop();
    other.cleanup();
  }
});
