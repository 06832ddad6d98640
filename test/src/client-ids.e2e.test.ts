import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutOf } from '@fedunlearn/protocol';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { RawPeer } from './raw-peer.js';
import { tempDir } from './support.js';

/**
 * Identifiers round-trip (issue 12, section 8): every client id that POST /v1/clients or `clients add` accepts works
 * in every route and command that takes an id (hello, list, rotate, revoke, forget, the job), and every other one is
 * refused when issued, over the id grammar's edge cases (transport/client-id.ts).
 */

const CLI = fileURLToPath(new URL('../../packages/coordinator/dist/cli.js', import.meta.url));
const tmp = tempDir('client-ids');
let coord: Coordinator;
let url: string;
let auth: Record<string, string>;

before(async () => {
  const layout = layoutOf([{ name: 'dense/kernel', shape: [4, 2] }]);
  coord = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: { topologyJson: '{}', initial: { layout, values: new Float32Array(layout.totalSize) } },
    federation: { clientsPerRound: 2, minClients: 1, roundDeadlineMs: 1000, seed: 1, hyper: { learningRate: 0.1, batchSize: 8, localEpochs: 1 }, maxRoundAttempts: 1, waitForClientsMs: 100 },
    historyInterval: 1,
    limits: { operatorMutationsPerMinute: 10_000, forgetRequestsPerHour: 1000 },
    logger: createLogger({ level: 'silent' }),
  });
  url = (await coord.listen(0)).url;
  auth = { authorization: `Bearer ${coord.operatorToken}` };
});
after(async () => {
  await coord?.stop();
  tmp.cleanup();
});

async function api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(url + path, { method, headers: { ...auth, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

const ACCEPTED = [
  'a',
  '0',
  'x'.repeat(128),
  'with.dots.in.it',
  '...',
  '.hidden',
  'trailing.',
  '-leading-dash',
  'trailing-',
  '_under_score_',
  'colon:separated:id',
  ':',
  '__proto__',
  'constructor',
  'hasOwnProperty',
  '1e3',
  'A-z_0.9:x',
];
const REFUSED = ['', '.', '..', 'x'.repeat(129), 'has space', 'slash/inside', 'back\\slash', '%41', 'a%2Fb', 'a+b', 'a?b', 'a#b', 'é', 'a\nb', 'tab\there', 'quote"d', "<script>"];

test('every id POST /v1/clients accepts works in every route that takes an id, both percent-encoded and as is', async () => {
  // A client that stays: forgetting every client of a federation is refused at submission (FORGET_REFUSED).
  assert.equal((await api('POST', '/v1/clients', { clientId: 'bystander' })).status, 201);
  for (const id of ACCEPTED) {
    const issued = await api('POST', '/v1/clients', { clientId: id });
    assert.equal(issued.status, 201, `${JSON.stringify(id)} issued: ${JSON.stringify(issued.body)}`);
    assert.equal(issued.body.clientId, id);
    const { peer, answer } = await RawPeer.introduce(url, id, issued.body.secret);
    assert.equal(answer.body, 'welcome', `${JSON.stringify(id)} hello: ${answer.error?.message}`);
    assert.equal(answer.welcome!.clientId, id);
    peer.close();
    const listed = await api('GET', '/v1/clients');
    assert.equal(listed.body.clients.filter((c: { clientId: string }) => c.clientId === id).length, 1, `${JSON.stringify(id)} listed once`);
    for (const seg of new Set([encodeURIComponent(id), id])) {
      const rotated = await api('POST', `/v1/clients/${seg}/secret`, {});
      assert.equal(rotated.status, 200, `rotate ${seg}: ${JSON.stringify(rotated.body)}`);
      assert.equal(rotated.body.clientId, id);
      const revoked = await api('DELETE', `/v1/clients/${seg}`);
      assert.equal(revoked.status, 204, `revoke ${seg}: ${JSON.stringify(revoked.body)}`);
      assert.equal((await coord.store.getClient(id))!.revoked, true, `${seg} revoked ${JSON.stringify(id)} itself`);
    }
    const job = await api('POST', '/v1/jobs', { clientIds: [id] });
    assert.equal(job.status, 202, `forget ${JSON.stringify(id)}: ${JSON.stringify(job.body)}`);
    const read = await api('GET', `/v1/jobs/${encodeURIComponent(job.body.jobId)}`);
    assert.deepEqual(read.body.clientIds, [id]);
  }
  assert.equal((await coord.store.listClients()).length, ACCEPTED.length + 1, 'no id was taken for another (the bystander besides)');
});

test('every other id is refused when issued, and nothing is stored', async () => {
  const before = (await coord.store.listClients()).length;
  for (const id of REFUSED) {
    const r = await api('POST', '/v1/clients', { clientId: id });
    assert.equal(r.status, 400, `${JSON.stringify(id)}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.error.code, 'INVALID_ARGUMENT');
  }
  assert.equal((await coord.store.listClients()).length, before);
  // A hello naming one is refused too (open enrolment would otherwise enrol what the API cannot name).
  for (const id of ['.', '..']) {
    const { peer, answer } = await RawPeer.introduce(url, id, 'a-secret-of-enough-length');
    assert.equal(answer.body, 'error');
    peer.close();
  }
});

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  p.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  return new Promise((resolve) => p.on('close', (code) => resolve({ code, stdout, stderr })));
}

test('the operator commands take the same ids: add, rotate, revoke and forget (an id that looks like an option after --)', async () => {
  const conn = ['--url', url, '--token', coord.operatorToken!];
  for (const id of ['cli:with.dots_and-dashes', '-cli-leading-dash', '..x']) {
    const added = await cli(['clients', 'add', ...conn, '--json', '--', id]);
    assert.equal(added.code, 0, `add ${id}: ${added.stderr}`);
    assert.equal(JSON.parse(added.stdout).clientId, id);
    const rotated = await cli(['clients', 'rotate', ...conn, '--json', '--', id]);
    assert.equal(rotated.code, 0, `rotate ${id}: ${rotated.stderr}`);
    assert.equal(JSON.parse(rotated.stdout).clientId, id);
    const revoked = await cli(['clients', 'revoke', ...conn, '--', id]);
    assert.equal(revoked.code, 0, `revoke ${id}: ${revoked.stderr}`);
    assert.equal((await coord.store.getClient(id))!.revoked, true);
    const forgot = await cli(['forget', ...conn, '--json', '--', id]);
    assert.equal(forgot.code, 0, `forget ${id}: ${forgot.stderr}`);
    assert.deepEqual(JSON.parse(forgot.stdout).clientIds, [id]);
  }
  const refused = await cli(['clients', 'add', ...conn, '--', '..']);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /INVALID_ARGUMENT/);
});
