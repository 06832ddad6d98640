import { request } from 'node:http';
import { Writable } from 'node:stream';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutOf } from '@fedunlearn/protocol';
import { FederatedClient } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { tempDir } from './support.js';

/**
 * The operator API is never open by accident (issue 12, section 1), over real HTTP: a coordinator given no token makes
 * one, so every route that carries federation data or changes state refuses anonymous callers; a browser tab on
 * another site cannot change state with the requests it may send without a preflight, even when the API was opened
 * on purpose; a Host the operator does not serve under (DNS rebinding) is refused; the dashboard sends its CSP; and
 * plaintext beyond this machine is warned about, by the coordinator and by the SDK.
 */

const cleanups: (() => unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function start(extra: Partial<Parameters<typeof Coordinator.create>[0]> = {}, host = '127.0.0.1'): Promise<{ coord: Coordinator; url: string; port: number; logs: () => string }> {
  const tmp = tempDir('guard');
  cleanups.push(() => tmp.cleanup());
  const layout = layoutOf([{ name: 'dense/kernel', shape: [4, 2] }]);
  let lines = '';
  const destination = new Writable({ write: (chunk, _enc, cb) => ((lines += String(chunk)), cb()) });
  const coord = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: { topologyJson: '{}', initial: { layout, values: new Float32Array(layout.totalSize) } },
    federation: { clientsPerRound: 2, minClients: 1, roundDeadlineMs: 1000, seed: 1, hyper: { learningRate: 0.1, batchSize: 8, localEpochs: 1 }, maxRoundAttempts: 1, waitForClientsMs: 100 },
    historyInterval: 1,
    logger: createLogger({ level: 'warn', format: 'json', destination }),
    ...extra,
  });
  const { port } = await coord.listen(0, host);
  cleanups.push(() => coord.stop());
  return { coord, url: `http://127.0.0.1:${port}`, port, logs: () => lines };
}

/** A request exactly as written (fetch forbids setting Host and normalises paths). */
function raw(port: number, opts: { method?: string; path: string; headers?: Record<string, string>; body?: string }): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    // setHost false: a request without a Host header is sent without one.
    const req = request({ host: '127.0.0.1', port, path: opts.path, method: opts.method ?? 'GET', headers: opts.headers ?? {}, setHost: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

const errorCode = (body: string) => (JSON.parse(body) as { error: { code: string } }).error.code;

test('a coordinator given no token makes one: every route that carries federation data or changes state refuses anonymous callers', async () => {
  const { coord, url, port } = await start();
  assert.match(coord.operatorToken ?? '', /^[A-Za-z0-9_-]{43}$/);
  // Every operator route the server itself documents, with its path parameters filled in.
  const doc = (await (await fetch(`${url}/v1/openapi.json`)).json()) as { paths: Record<string, Record<string, { security?: unknown[] }>> };
  const routes: [string, string][] = [];
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(ops)) if (op.security) routes.push([method.toUpperCase(), path.replace(/\{[^}]+\}/g, (p) => (p === '{round}' ? '1' : 'some-id'))]);
  }
  for (const need of ['GET /v1/status', 'GET /v1/clients', 'POST /v1/clients', 'DELETE /v1/clients/some-id', 'POST /v1/clients/some-id/secret', 'GET /v1/models/some-id/weights', 'POST /v1/jobs', 'GET /v1/events']) {
    assert.ok(routes.some(([m, p]) => `${m} ${p}` === need), `${need} is documented as an operator route`);
  }
  for (const [method, path] of routes) {
    const body = method === 'POST' ? JSON.stringify(path === '/v1/jobs' ? { clientIds: ['some-id'] } : {}) : undefined;
    const r = await raw(port, { method, path, headers: { host: `127.0.0.1:${port}`, ...(body ? { 'content-type': 'application/json' } : {}) }, ...(body ? { body } : {}) });
    assert.equal(r.status, 401, `${method} ${path} anonymous: ${r.body}`);
    assert.equal(errorCode(r.body), 'UNAUTHENTICATED');
  }
  assert.equal((await coord.store.listClients()).length, 0, 'nothing was issued');
  const ok = await fetch(`${url}/v1/status`, { headers: { authorization: `Bearer ${coord.operatorToken}` } });
  assert.equal(ok.status, 200);
});

test("a browser tab on another site cannot change state with a no-cors request, even when the API was opened on purpose", async () => {
  const { coord, port, logs } = await start({ operatorAuth: 'none' });
  assert.equal(coord.operatorToken, null);
  assert.match(logs(), /THE OPERATOR API IS OPEN/);
  const issued = await coord.issueClient('victim');
  const hashBefore = (await coord.store.getClient('victim'))!.secretHash;
  const self = `http://127.0.0.1:${port}`;
  const host = `127.0.0.1:${port}`;
  // What `fetch(url, { method: 'POST', mode: 'no-cors', body: '...' })` from https://evil.example sends.
  const attempts: { name: string; headers: Record<string, string>; body?: string; method?: string; status: number; code: string }[] = [
    { name: 'text/plain body, foreign Origin', headers: { host, origin: 'https://evil.example', 'content-type': 'text/plain;charset=UTF-8' }, body: '{}', status: 403, code: 'CROSS_ORIGIN' },
    { name: 'text/plain body, no Origin', headers: { host, 'content-type': 'text/plain;charset=UTF-8' }, body: '{}', status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
    { name: 'form body, no Origin', headers: { host, 'content-type': 'application/x-www-form-urlencoded' }, body: 'a=b', status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
    { name: 'no body at all', headers: { host }, status: 415, code: 'UNSUPPORTED_MEDIA_TYPE' },
    { name: 'JSON from a foreign Origin', headers: { host, origin: 'https://evil.example', 'content-type': 'application/json' }, body: '{}', status: 403, code: 'CROSS_ORIGIN' },
    { name: 'JSON from a sandboxed frame', headers: { host, origin: 'null', 'content-type': 'application/json' }, body: '{}', status: 403, code: 'CROSS_ORIGIN' },
  ];
  for (const a of attempts) {
    const r = await raw(port, { method: 'POST', path: '/v1/clients/victim/secret', headers: a.headers, ...(a.body !== undefined ? { body: a.body } : {}) });
    assert.equal(r.status, a.status, `${a.name}: ${r.body}`);
    assert.equal(errorCode(r.body), a.code, a.name);
  }
  const del = await raw(port, { method: 'DELETE', path: '/v1/clients/victim', headers: { host, origin: 'https://evil.example' } });
  assert.equal(del.status, 403);
  const job = await raw(port, { method: 'POST', path: '/v1/jobs', headers: { host, 'content-type': 'text/plain' }, body: JSON.stringify({ clientIds: ['victim'] }) });
  assert.equal(job.status, 415);
  assert.equal((await coord.store.getClient('victim'))!.secretHash, hashBefore, 'the secret was not rotated');
  assert.equal((await coord.store.getClient('victim'))!.revoked, false);
  assert.deepEqual((await coord.store.listJobs()), []);
  // The page's own origin (the dashboard) still can.
  const own = await raw(port, { method: 'POST', path: '/v1/clients/victim/secret', headers: { host, origin: self, 'content-type': 'application/json' }, body: '{}' });
  assert.equal(own.status, 200, own.body);
  assert.notEqual(JSON.parse(own.body).secret, issued.secret);
});

test('a Host the operator does not serve under is refused (DNS rebinding); loopback names, the listen address and allowedHosts are served', async () => {
  const { coord, port } = await start({ allowedHosts: ['coordinator.example'] });
  const auth = `Bearer ${coord.operatorToken}`;
  for (const path of ['/v1/status', '/v1/clients', '/dashboard/', '/metrics', '/v1/openapi.json']) {
    const r = await raw(port, { path, headers: { host: `attacker.example:${port}`, authorization: auth } });
    assert.equal(r.status, 403, `${path}: ${r.body}`);
    assert.equal(errorCode(r.body), 'HOST_NOT_ALLOWED');
  }
  // Node's server itself answers 400 to an HTTP/1.1 request without one.
  assert.ok([400, 403].includes((await raw(port, { path: '/v1/status', headers: { authorization: auth } })).status), 'no Host at all');
  for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, 'localhost', `coordinator.example:${port}`, `COORDINATOR.example`]) {
    const r = await raw(port, { path: '/v1/status', headers: { host, authorization: auth } });
    assert.equal(r.status, 200, `${host}: ${r.body}`);
  }
  // Probes reach /healthz by whatever name they have; it holds no federation data.
  assert.equal((await raw(port, { path: '/healthz', headers: { host: 'attacker.example' } })).status, 200);
});

test('the dashboard sends a Content-Security-Policy with frame-ancestors', async () => {
  const { port } = await start();
  const r = await raw(port, { path: '/dashboard/', headers: { host: `localhost:${port}` } });
  assert.equal(r.status, 200);
  const csp = String(r.headers['content-security-policy']);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.match(csp, /default-src 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
});

test('plaintext beyond this machine is warned about: the coordinator listening on 0.0.0.0 without TLS, and the SDK given an http:// URL of another host', async () => {
  const { logs } = await start({}, '0.0.0.0');
  assert.match(logs(), /listening beyond this machine without TLS/);
  const { logs: quiet } = await start();
  assert.doesNotMatch(quiet(), /without TLS/);

  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);
  process.on('warning', onWarning);
  try {
    const data = { x: new Float32Array(4), y: Int32Array.from([0]), inputShape: [4], numClasses: 2, count: 1 };
    new FederatedClient({ url: 'http://127.0.0.1:9', clientId: 'a', secret: 'secret-a1', data });
    new FederatedClient({ url: 'https://192.0.2.7:8080', clientId: 'b', secret: 'secret-b1', data });
    new FederatedClient({ url: 'http://192.0.2.7:8080', clientId: 'c', secret: 'secret-c1', data });
    new FederatedClient({ url: 'http://192.0.2.7:8080', clientId: 'd', secret: 'secret-d1', data });
    await new Promise((r) => setImmediate(r));
  } finally {
    process.off('warning', onWarning);
  }
  const plaintext = warnings.filter((w) => (w as Error & { code?: string }).code === 'FEDUNLEARN_PLAINTEXT');
  assert.equal(plaintext.length, 1, 'one line, for the remote http:// origin only');
  assert.match(plaintext[0]!.message, /http:\/\/192\.0\.2\.7:8080 .*without TLS/);
});
