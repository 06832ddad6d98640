import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type SecurityLimits } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { RawPeer, rawHello } from './raw-peer.js';
import { waitUntil } from './support.js';

// Issued credentials, refusals, revocation, lockout and rate limits, against a real coordinator over real sockets.
// Enrolment is closed (the service's default): only ids the operator issued get in.

const TOKEN = 'auth-e2e-operator-token';
const WAIT_MS = 15_000;
/** Small limits, so that each one can be reached in a test. */
const LIMITS: Partial<SecurityLimits> = {
  handshakeBurst: 20,
  handshakeRefillPerSecond: 10,
  authMaxFailures: 3,
  authMaxFailuresPerClient: 6,
  authFailureWindowMs: 60_000,
  authLockoutMs: 1_500,
  authMaxLockoutMs: 3_000,
  forgetRequestsPerHour: 2,
  operatorMutationsPerMinute: 40,
};

const model = builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 1 });
const dirs: string[] = [];
const clients: FederatedClient[] = [];
let coordinator: Coordinator;
let url: string;

function tinyDataset(count = 8): LocalDataset {
  return { x: new Float32Array(count * 784).fill(0.5), y: Int32Array.from({ length: count }, (_, i) => i % 10), inputShape: [784], numClasses: 10, count };
}

async function start(extra: { tls?: { cert: string; key: string } } = {}): Promise<{ coordinator: Coordinator; url: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-auth-'));
  dirs.push(dir);
  const c = await Coordinator.create({
    store: openSqliteHistory(dir),
    dataDir: dir,
    model,
    federation: {
      clientsPerRound: 2,
      minClients: 2,
      roundDeadlineMs: 20_000,
      seed: 1,
      hyper: { learningRate: 0.1, batchSize: 8, localEpochs: 1 },
      maxRoundAttempts: 1,
      waitForClientsMs: 10_000,
    },
    historyInterval: 1,
    operatorToken: TOKEN,
    limits: LIMITS,
    logger: createLogger({ level: 'silent' }),
    ...extra,
  });
  return { coordinator: c, url: (await c.listen(0)).url };
}

function client(clientId: string, secret: string, over: Partial<ConstructorParameters<typeof FederatedClient>[0]> = {}): FederatedClient {
  const c = new FederatedClient({ url, clientId, secret, data: tinyDataset(), backends: ['cpu'], reconnect: { delayMs: 100, maxDelayMs: 400, attempts: 0 }, ...over });
  clients.push(c);
  return c;
}

async function api(method: string, path: string, opts: { token?: string | null; body?: unknown; base?: string } = {}): Promise<{ status: number; body: any }> {
  const token = opts.token === undefined ? TOKEN : opts.token;
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch((opts.base ?? url) + path, { method, headers, ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function issue(clientId?: string): Promise<{ clientId: string; secret: string }> {
  const r = await api('POST', '/v1/clients', { body: clientId ? { clientId } : {} });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body;
}

async function helloOutcome(clientId: string, secret: string, base = url, localAddress?: string): Promise<string> {
  const p = await RawPeer.connect(base, localAddress ? { localAddress } : {});
  try {
    p.hello(clientId, secret, 8);
    return await p.outcome();
  } finally {
    p.close();
  }
}

before(async () => {
  ({ coordinator, url } = await start());
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await coordinator?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Wrong tokens of exactly the real one's length, differing in the first, a middle and the last character: they go
 *  the whole way through the constant-time comparison instead of being told apart by their length. */
const SAME_LENGTH_WRONG = [0, TOKEN.length >> 1, TOKEN.length - 1].map((i) => `${TOKEN.slice(0, i)}${TOKEN[i] === 'x' ? 'y' : 'x'}${TOKEN.slice(i + 1)}`);

test('operator routes, the credential ones included, refuse a missing or wrong token', async () => {
  for (const wrong of SAME_LENGTH_WRONG) {
    assert.equal(wrong.length, TOKEN.length);
    assert.notEqual(wrong, TOKEN);
  }
  for (const [method, path, body] of [
    ['GET', '/v1/clients', undefined],
    ['POST', '/v1/clients', {}],
    ['DELETE', '/v1/clients/anyone', undefined],
    ['POST', '/v1/clients/anyone/secret', {}],
    ['POST', '/v1/jobs', { clientIds: ['anyone'] }],
  ] as const) {
    for (const token of [null, ...SAME_LENGTH_WRONG, `${TOKEN}x`, TOKEN.slice(0, -1)]) {
      const r = await api(method, path, { token, ...(body ? { body } : {}) });
      assert.equal(r.status, 401, `${method} ${path} with token ${token}`);
      assert.equal(r.body.error.code, 'UNAUTHENTICATED');
    }
  }
  assert.equal((await coordinator.store.listClients()).length, 0, 'a refused request created nothing');
});

test('an issued credential gets in; only its hash is stored; the id is unique', async () => {
  const cred = await issue('device-a');
  assert.equal(cred.clientId, 'device-a');
  assert.match(cred.secret, /^[A-Za-z0-9_-]{43}$/);
  const generated = await issue();
  assert.match(generated.clientId, /^[A-Za-z0-9_-]{21}$/);
  assert.notEqual(generated.secret, cred.secret);

  const stored = (await coordinator.store.getClient('device-a'))!;
  assert.match(stored.secretHash!, /^sha256\$[0-9a-f]{64}$/, 'an issued 256-bit secret is kept as its sha256');
  assert.equal(stored.secretHash!.includes(cred.secret), false);
  const listed = await api('GET', '/v1/clients');
  assert.equal(JSON.stringify(listed.body).includes(cred.secret), false);
  assert.equal(JSON.stringify(listed.body).includes('scrypt'), false, 'the hash is not served either');

  const dup = await api('POST', '/v1/clients', { body: { clientId: 'device-a' } });
  assert.equal(dup.status, 409);
  const bad = await api('POST', '/v1/clients', { body: { clientId: 'has spaces' } });
  assert.equal(bad.status, 400);

  const a = client('device-a', cred.secret);
  await a.connect(WAIT_MS);
  assert.ok(coordinator.registry.get('device-a'));
});

test('an unknown id and a forged secret are refused, and neither gets a session', async () => {
  await assert.rejects(client('nobody', 'some-secret-of-mine').connect(WAIT_MS), /UNKNOWN_CLIENT/);
  await assert.rejects(client('device-a', 'not-the-issued-secret-at-all').connect(WAIT_MS), /UNAUTHENTICATED/);
  assert.equal(await helloOutcome('nobody', 'x'.repeat(43)), 'UNKNOWN_CLIENT');
  assert.equal(coordinator.registry.get('nobody'), undefined);
  // The forged hello did not displace the real device's session.
  assert.ok(coordinator.registry.get('device-a'));
  assert.equal((await coordinator.store.getClient('nobody')), null, 'closed enrolment records nobody on a hello');
});

test('a message sent while the hello is being verified is refused, not routed: the peer gets no session', async () => {
  const cred = await issue('device-eager');
  const p = await RawPeer.connect(url);
  try {
    p.hello('device-eager', cred.secret, 8);
    // scrypt takes tens of milliseconds on the thread pool: this arrives before the verdict.
    p.send({ forgetRequest: { requestId: 'too-early', reason: '' } });
    assert.equal(await p.outcome(), 'UNAUTHENTICATED');
    await waitUntil(() => p.closed, WAIT_MS, 'the eager peer to be disconnected');
  } finally {
    p.close();
  }
  assert.ok(!p.queued.includes('welcome'), 'no welcome came after the refusal either');
  assert.equal(coordinator.registry.get('device-eager'), undefined);
  assert.equal((await coordinator.store.listJobs()).length, 0, 'the early forget request did nothing');
  // The credential itself is fine. (The refused hello's verification may still be running: one at a time per id, so
  // the SDK may be told RATE_LIMITED once and retry.)
  await client('device-eager', cred.secret, { reconnect: { delayMs: 100, maxDelayMs: 400, attempts: 10 } }).connect(WAIT_MS);
  assert.ok(coordinator.registry.get('device-eager'));
});

test('a revoked client is disconnected and refused; a rotation issues a new secret and voids the old one', async () => {
  const cred = await issue('device-r');
  const r = client('device-r', cred.secret);
  const errors: string[] = [];
  r.on('serverError', (e) => errors.push(e.code));
  let disconnected = false;
  r.on('disconnected', () => (disconnected = true));
  await r.connect(WAIT_MS);

  assert.equal((await api('DELETE', '/v1/clients/device-r')).status, 204);
  await waitUntil(() => disconnected && !coordinator.registry.get('device-r'), WAIT_MS, 'the revoked session to close');
  assert.deepEqual(errors, ['PERMISSION_DENIED']);
  assert.equal((await coordinator.store.getClient('device-r'))!.revoked, true);
  assert.equal(await helloOutcome('device-r', cred.secret), 'PERMISSION_DENIED');
  assert.equal((await api('DELETE', '/v1/clients/never-issued')).status, 404);

  const rotated = await api('POST', '/v1/clients/device-r/secret', { body: {} });
  assert.equal(rotated.status, 200);
  assert.notEqual(rotated.body.secret, cred.secret);
  assert.equal(await helloOutcome('device-r', cred.secret), 'UNAUTHENTICATED');
  assert.equal(await helloOutcome('device-r', rotated.body.secret), 'welcome');
});

test('repeated wrong secrets lock the id for a while, even against the right secret; the SDK waits it out', async () => {
  const cred = await issue('device-l');
  for (let i = 0; i < 3; i++) assert.equal(await helloOutcome('device-l', `guess-number-${i}`), 'UNAUTHENTICATED');
  assert.equal(await helloOutcome('device-l', cred.secret), 'RATE_LIMITED', 'locked: the right secret is not even checked');
  assert.equal(await helloOutcome('device-l', 'guess-number-3'), 'RATE_LIMITED');
  // The lockout holds for this id from this address: a stranger guessing cannot lock the real device out from elsewhere.
  assert.equal(await helloOutcome('device-l', 'guess-number-4', url, '127.0.0.2'), 'UNAUTHENTICATED', 'another address is not locked');
  assert.equal(await helloOutcome('device-l', cred.secret, url, '127.0.0.3'), 'welcome');
  // Other ids are not affected.
  const other = await issue('device-m');
  assert.equal(await helloOutcome('device-m', other.secret), 'welcome');

  // The SDK treats RATE_LIMITED as "later": it backs off and gets in once the lockout has passed.
  const l = client('device-l', cred.secret, { reconnect: { delayMs: 300, maxDelayMs: 1_000, attempts: 20 } });
  const seen: string[] = [];
  l.on('serverError', (e) => seen.push(e.code));
  await l.connect(WAIT_MS);
  assert.ok(seen.includes('RATE_LIMITED'), `errors seen before the welcome: ${seen.join(', ')}`);
  assert.ok(coordinator.registry.get('device-l'));
});

test('wrong secrets spread over many addresses lock the id everywhere once they pass the per-client cap', async () => {
  const cred = await issue('device-s');
  // Two guesses from each of three addresses: under the per-address limit (3) everywhere, six for the id in all.
  for (const from of ['127.0.0.4', '127.0.0.5', '127.0.0.6']) {
    for (let i = 0; i < 2; i++) assert.equal(await helloOutcome('device-s', `guess-${from}-${i}`, url, from), 'UNAUTHENTICATED');
  }
  assert.equal(await helloOutcome('device-s', cred.secret, url, '127.0.0.7'), 'RATE_LIMITED', 'locked for every address');
});

test('a handshake flood from one address is cut off with RATE_LIMITED, and a real client still gets in after', async () => {
  const cred = await issue('device-f');
  const peers = await Promise.all(Array.from({ length: 60 }, () => RawPeer.connect(url)));
  try {
    for (const p of peers) p.send({ hello: rawHello('flooder', 8) });
    const outcomes = await Promise.all(peers.map((p) => p.outcome()));
    const limited = outcomes.filter((o) => o === 'RATE_LIMITED').length;
    const admitted = outcomes.filter((o) => o === 'UNKNOWN_CLIENT').length;
    assert.equal(limited + admitted, peers.length, outcomes.join(','));
    // The bucket held at most 20 tokens, plus whatever 10/s refilled while the flood was being opened.
    assert.ok(limited >= 1 && admitted >= 1, `limited ${limited}, admitted ${admitted}`);
    await waitUntil(() => peers.every((p) => p.closed), WAIT_MS, 'the refused peers to be disconnected');
  } finally {
    for (const p of peers) p.close();
  }
  // Straight after the flood the bucket is empty; the SDK backs off and retries until a token is there.
  const f = client('device-f', cred.secret, { reconnect: { delayMs: 200, maxDelayMs: 1_000, attempts: 20 } });
  await f.connect(WAIT_MS);
  assert.ok(coordinator.registry.get('device-f'));
  assert.ok((coordinator.transport.counters.refused.RATE_LIMITED ?? 0) >= 1);
});

test('a client may have one forget job in progress and a few requests per hour; more are RATE_LIMITED', async () => {
  const a = clients.find((c) => c.sessionId && coordinator.registry.get('device-a')?.sessionId === c.sessionId)!;
  const first = await a.forget('first');
  const second = await a.forget('again');
  assert.equal(second, first, 'the job in progress is returned, not a second one');
  await assert.rejects(a.forget('third'), /RATE_LIMITED/);
  const jobs = (await coordinator.store.listJobs()).filter((j) => j.requestedBy === 'client:device-a');
  assert.equal(jobs.length, 1);
  // Another client has its own allowance. (The flood test drained this address's handshake bucket, so it may have to retry.)
  const m = client('device-m2', (await issue('device-m2')).secret, { reconnect: { delayMs: 200, maxDelayMs: 1_000, attempts: 20 } });
  await m.connect(WAIT_MS);
  assert.equal(typeof (await m.forget('me too')), 'string');
});

test('mutating operator routes are rate limited; reads are not', async () => {
  let limited: { status: number; body: any } | null = null;
  for (let i = 0; i < LIMITS.operatorMutationsPerMinute! + 1 && !limited; i++) {
    const r = await api('POST', '/v1/clients', { body: { clientId: 'not valid!' } });
    if (r.status === 429) limited = r;
    else assert.equal(r.status, 400);
  }
  assert.ok(limited, 'no 429 within the per-minute allowance');
  assert.equal(limited.body.error.code, 'RATE_LIMITED');
  assert.equal((await api('GET', '/v1/status')).status, 200);
});

test('TLS: the service runs over HTTPS with a self-signed certificate; a client given the CA trains a round', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-auth-tls-'));
  dirs.push(dir);
  const key = join(dir, 'key.pem');
  const cert = join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
  const ca = readFileSync(cert, 'utf8');
  const tls = await start({ tls: { cert: ca, key: readFileSync(key, 'utf8') } });
  try {
    assert.match(tls.url, /^https:\/\//);
    // Node's fetch does not trust the self-signed certificate, and plain HTTP is not spoken on the TLS port.
    await assert.rejects(fetch(`${tls.url}/healthz`));
    await assert.rejects(fetch(tls.url.replace('https://', 'http://') + '/healthz'));

    const ids = ['tls-a', 'tls-b'];
    const secrets = await Promise.all(ids.map((id) => tls.coordinator.issueClient(id)));
    const untrusting = new FederatedClient({ url: tls.url, clientId: 'tls-a', secret: secrets[0]!.secret, data: tinyDataset(), backends: ['cpu'], reconnect: { attempts: 0 } });
    clients.push(untrusting);
    await assert.rejects(untrusting.connect(WAIT_MS), /certificate|self[- ]signed/i);
    await untrusting.close();

    const devices = secrets.map((s) => new FederatedClient({ url: tls.url, clientId: s.clientId, secret: s.secret, data: tinyDataset(), backends: ['cpu'], ca, reconnect: { attempts: 0 } }));
    clients.push(...devices);
    await Promise.all(devices.map((d) => d.connect(WAIT_MS)));
    const [round] = await tls.coordinator.runRounds(1);
    assert.equal(round!.round, 1);
    assert.equal((await tls.coordinator.store.head()).round, 1);
    await Promise.all(devices.map((d) => d.close()));
  } finally {
    await tls.coordinator.stop();
  }
});
