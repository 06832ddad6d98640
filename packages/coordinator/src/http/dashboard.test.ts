import { mkdtempSync, rmSync } from 'node:fs';
import { request, type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutOf } from '@fedunlearn/protocol';
import { Coordinator } from '../coordinator.js';
import { openSqliteHistory } from '../history/sqlite-store.js';
import { createLogger } from '../logger.js';

const TOKEN = 'dashboard-test-token';
const dirs: string[] = [];
after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

async function coordinator(operatorToken?: string): Promise<{ coord: Coordinator; url: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-dashboard-'));
  dirs.push(dir);
  const layout = layoutOf([{ name: 'dense/kernel', shape: [4, 2] }]);
  const coord = await Coordinator.create({
    store: openSqliteHistory(dir),
    dataDir: dir,
    model: { topologyJson: '{}', initial: { layout, values: new Float32Array(layout.totalSize) } },
    federation: { clientsPerRound: 2, minClients: 1, roundDeadlineMs: 1000, seed: 1, hyper: { learningRate: 0.1, batchSize: 8, localEpochs: 1 }, maxRoundAttempts: 1, waitForClientsMs: 100 },
    historyInterval: 1,
    logger: createLogger({ level: 'silent' }),
    ...(operatorToken ? { operatorToken } : {}),
  });
  const { url } = await coord.listen(0);
  return { coord, url };
}

/** A raw GET, so that the path reaches the server exactly as written (fetch would normalise `..`). */
function rawGet(url: string, path: string): Promise<{ status: number; type: string | undefined; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = request({ host: u.hostname, port: u.port, path, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

type Sse = { event: string; data: unknown };

/** Reads server-sent events from a fetch body; read(until) returns the events that arrived until `until` holds. */
function sseReader(body: ReadableStream<Uint8Array>) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  return async (until: (events: Sse[]) => boolean): Promise<Sse[]> => {
    const events: Sse[] = [];
    while (!until(events)) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const event = /^event: (.*)$/m.exec(frame)?.[1];
        const data = /^data: (.*)$/m.exec(frame)?.[1];
        if (event && data) events.push({ event, data: JSON.parse(data) });
      }
    }
    return events;
  };
}

test('the dashboard serves its known files with their content types, and nothing else', async () => {
  const { coord, url } = await coordinator(TOKEN);
  try {
    const root = await fetch(`${url}/`, { redirect: 'manual' });
    assert.equal(root.status, 302);
    assert.equal(root.headers.get('location'), '/dashboard/');
    const page = await rawGet(url, '/dashboard/');
    assert.equal(page.status, 200);
    // Its own files only, never inside a frame (the browser test checks that the page runs under it).
    const csp = page.headers['content-security-policy'] as string;
    assert.match(csp, /frame-ancestors 'none'/);
    assert.match(csp, /script-src 'self'(;|$)/);
    assert.match(csp, /style-src 'self'(;|$)/);
    assert.equal(page.headers['x-frame-options'], 'DENY');
    assert.match(page.type ?? '', /^text\/html/);
    assert.match(page.body, /<script type="module" src="app.js">/);
    for (const [path, type, marker] of [
      ['/dashboard/app.js', /^text\/javascript/, '/v1/events'],
      ['/dashboard/style.css', /^text\/css/, '--bg'],
      ['/dashboard/vendor/chart.umd.js', /^text\/javascript/, 'Chart'],
    ] as const) {
      const r = await rawGet(url, path);
      assert.equal(r.status, 200, path);
      assert.match(r.type ?? '', type, path);
      assert.ok(r.body.includes(marker), `${path} is the real file`);
    }
    // Static files need no token (they hold no data); the data does.
    for (const path of ['/dashboard/../package.json', '/dashboard/%2e%2e/package.json', '/dashboard/..%2fpackage.json', '/dashboard/vendor/../../package.json', '/dashboard/app.js.map', '/dashboard/dashboard.test.js']) {
      const r = await rawGet(url, path);
      assert.equal(r.status, 404, `${path} is refused`);
      assert.ok(!r.body.includes('"dependencies"'), `${path} leaks nothing`);
    }
  } finally {
    await coord.stop();
  }
});

test('GET /v1/events needs the operator token, starts with a snapshot, streams jobs, and lets go of its listeners', { timeout: 20_000 }, async () => {
  const { coord, url } = await coordinator(TOKEN);
  try {
    assert.equal((await fetch(`${url}/v1/events`)).status, 401);
    const head = await fetch(`${url}/v1/events`, { method: 'HEAD', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(head.status, 404, 'HEAD opens no stream');
    const wrong = await fetch(`${url}/v1/events`, { headers: { authorization: 'Bearer nope' } });
    assert.equal(wrong.status, 401);
    assert.equal(((await wrong.json()) as { error: { code: string } }).error.code, 'UNAUTHENTICATED');

    const listeners = () => coord.listenerCount('job') + coord.listenerCount('jobProgress') + coord.listenerCount('round') + coord.registry.listenerCount('joined') + coord.registry.listenerCount('left');
    const baseline = listeners();
    const abort = new AbortController();
    const res = await fetch(`${url}/v1/events`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: abort.signal });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    const read = sseReader(res.body!);
    const first = await read((e) => e.length >= 1);
    assert.equal(first[0]!.event, 'snapshot');
    const snap = first[0]!.data as { head: { version: string }; clients: { count: number; ids: string[] } };
    assert.equal(snap.head.version, (await coord.store.head()).version);
    assert.deepEqual(snap.clients, { count: 0, ids: [], forgotten: [] });
    assert.equal(listeners(), baseline + 5);

    // A real job submission (the client must be known to the store) reaches the stream.
    await coord.store.upsertClient({ clientId: 'leaver', numExamples: 10, seenAt: Date.now() });
    // Forgetting the only client would be refused (FORGET_REFUSED): another one stays.
    await coord.store.upsertClient({ clientId: 'stayer', numExamples: 10, seenAt: Date.now() });
    const job = await coord.forget({ clientIds: ['leaver'], requestedBy: 'operator:test' });
    const next = await read((e) => e.some((x) => x.event === 'job'));
    const ev = next.find((x) => x.event === 'job')!.data as { jobId: string; state: string; checkpoint?: unknown; report: unknown };
    assert.equal(ev.jobId, job.jobId);
    assert.equal(ev.state, 'queued');
    assert.ok(!('checkpoint' in ev), 'the internal checkpoint stays internal');
    assert.equal(ev.report, null);

    abort.abort();
    const until = Date.now() + 5000;
    while (listeners() !== baseline && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    assert.equal(listeners(), baseline, 'a closed stream removes its listeners');
  } finally {
    await coord.stop();
  }
});

test('an open event stream does not keep the coordinator from stopping', { timeout: 20_000 }, async () => {
  const { coord, url } = await coordinator();
  // Without an operator token given, the coordinator made one of its own: the stream needs it like the rest of /v1.
  assert.equal((await fetch(`${url}/v1/events`)).status, 401);
  const res = await fetch(`${url}/v1/events`, { headers: { authorization: `Bearer ${coord.operatorToken}` } });
  assert.equal(res.status, 200);
  const read = sseReader(res.body!);
  await read((e) => e.length >= 1);
  await coord.stop(); // would hang here (until the test's timeout) if the stream held the server open
  const rest = await read(() => false);
  assert.deepEqual(rest, [], 'the stream ended cleanly');
});
