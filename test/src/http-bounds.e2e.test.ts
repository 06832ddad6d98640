import { request, type ClientRequest, type IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutOf } from '@fedunlearn/protocol';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { tempDir } from './support.js';

/**
 * What a peer can hold on the operator API's HTTP side is bounded (issue 12, section 6), over real HTTP against a
 * real coordinator: event streams per remote address and in total (refused 429 RATE_LIMITED naming the limit, freed
 * when the client goes, counted in fedunlearn_peer_resources{resource="event_streams"}), and a request whose headers
 * or body never finish is cut after the configured deadline while the service keeps answering others.
 */

const cleanups: (() => unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function start(limits: Record<string, number>): Promise<{ coord: Coordinator; url: string; port: number; token: string }> {
  const tmp = tempDir('httpbounds');
  cleanups.push(() => tmp.cleanup());
  const layout = layoutOf([{ name: 'dense/kernel', shape: [4, 2] }]);
  const coord = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: { topologyJson: '{}', initial: { layout, values: new Float32Array(layout.totalSize) } },
    federation: { clientsPerRound: 2, minClients: 1, roundDeadlineMs: 1000, seed: 1, hyper: { learningRate: 0.1, batchSize: 8, localEpochs: 1 }, maxRoundAttempts: 1, waitForClientsMs: 100 },
    historyInterval: 1,
    logger: createLogger({ level: 'silent', format: 'json' }),
    // A variable, not a literal: the fields are checked by the coordinator, as a config file's would be.
    limits,
  });
  const { port } = await coord.listen(0, '127.0.0.1');
  cleanups.push(() => coord.stop());
  return { coord, url: `http://127.0.0.1:${port}`, port, token: coord.operatorToken ?? '' };
}

interface Stream {
  status: number;
  /** The whole body when the server answered with an error (it ends); '' for an open stream. */
  body: string;
  close(): Promise<void>;
}

/** Opens GET /v1/events on its own connection; resolves once the status is known (and, for a stream, its first event). */
function openEvents(port: number, token: string): Promise<Stream> {
  return new Promise((resolve, reject) => {
    const req: ClientRequest = request({ host: '127.0.0.1', port, path: '/v1/events', agent: false, headers: { authorization: `Bearer ${token}` } }, (res: IncomingMessage) => {
      let body = '';
      res.setEncoding('utf8');
      const close = () =>
        new Promise<void>((done) => {
          if (req.socket?.destroyed) return done();
          req.socket?.once('close', () => done());
          req.destroy();
        });
      if (res.statusCode !== 200) {
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, close }));
        return;
      }
      // The snapshot event is the stream's first: by then the server has counted it.
      res.once('data', () => resolve({ status: 200, body: '', close }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function eventStreamsGauge(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('fedunlearn_peer_resources{resource="event_streams"}'));
  assert.ok(line, 'fedunlearn_peer_resources{resource="event_streams"} is exported');
  return Number(line.split(' ').pop());
}

/** Polls `cond` until it holds (the test's timeout bounds the wait). */
async function until(cond: () => Promise<boolean>): Promise<void> {
  while (!(await cond())) await new Promise((r) => setTimeout(r, 20));
}

test('event streams: the 4th from one address is refused 429 while 3 are open; a closed stream frees its slot; the gauge counts them', { timeout: 30_000 }, async () => {
  const { url, port, token } = await start({ eventStreamsPerAddress: 3, eventStreams: 100 });
  assert.equal(await eventStreamsGauge(url), 0);
  const open: Stream[] = [];
  for (let i = 0; i < 3; i++) {
    const s = await openEvents(port, token);
    assert.equal(s.status, 200, `stream ${i + 1}: ${s.body}`);
    open.push(s);
  }
  assert.equal(await eventStreamsGauge(url), 3);
  const refused = await openEvents(port, token);
  assert.equal(refused.status, 429);
  const err = (JSON.parse(refused.body) as { error: { code: string; message: string } }).error;
  assert.equal(err.code, 'RATE_LIMITED');
  assert.match(err.message, /at most 3 .*eventStreamsPerAddress/);
  assert.equal(await eventStreamsGauge(url), 3, 'a refused stream holds nothing');
  // Other requests from the same address are not affected by the stream bound.
  assert.equal((await fetch(`${url}/v1/status`, { headers: { authorization: `Bearer ${token}` } })).status, 200);

  // The client goes away: the server notices the closed connection and gives the slot back.
  await open.shift()!.close();
  await until(async () => (await eventStreamsGauge(url)) === 2);
  const again = await openEvents(port, token);
  assert.equal(again.status, 200, again.body);
  open.push(again);
  assert.equal(await eventStreamsGauge(url), 3);
  for (const s of open) await s.close();
  await until(async () => (await eventStreamsGauge(url)) === 0);
});

test('event streams: the bound on all addresses together refuses the 3rd of 2 with 429 naming eventStreams', { timeout: 30_000 }, async () => {
  const { url, port, token } = await start({ eventStreamsPerAddress: 8, eventStreams: 2 });
  const a = await openEvents(port, token);
  const b = await openEvents(port, token);
  assert.deepEqual([a.status, b.status], [200, 200]);
  const refused = await openEvents(port, token);
  assert.equal(refused.status, 429);
  const err = (JSON.parse(refused.body) as { error: { code: string; message: string } }).error;
  assert.equal(err.code, 'RATE_LIMITED');
  assert.match(err.message, /at most 2 .*eventStreams\)/);
  assert.equal(await eventStreamsGauge(url), 2);
  await a.close();
  await until(async () => (await eventStreamsGauge(url)) === 1);
  const c = await openEvents(port, token);
  assert.equal(c.status, 200, c.body);
  await b.close();
  await c.close();
});

/**
 * Connects a raw TCP socket, sends `head`, then one more byte every 20 ms (slowloris: the connection is never idle, so
 * an idle timeout alone would never cut it). Resolves with what the server sent when it closed the connection.
 */
function dribble(port: number, head: string, drip: string): { closed: Promise<string>; socket: Socket } {
  const socket = connect({ host: '127.0.0.1', port });
  let received = '';
  socket.setEncoding('utf8');
  socket.on('data', (c: string) => (received += c));
  socket.on('error', () => undefined);
  let timer: NodeJS.Timeout | undefined;
  socket.on('connect', () => {
    socket.write(head);
    timer = setInterval(() => {
      if (!socket.destroyed && socket.writable) socket.write(drip);
    }, 20);
  });
  const closed = new Promise<string>((resolve) =>
    socket.on('close', () => {
      clearInterval(timer);
      resolve(received);
    }),
  );
  cleanups.push(() => socket.destroy());
  return { closed, socket };
}

test('a request whose headers never finish is cut after httpHeadersTimeoutMs (408), while the service answers others', { timeout: 30_000 }, async () => {
  const { url, port } = await start({ httpHeadersTimeoutMs: 500, httpRequestTimeoutMs: 1000 });
  const slow = dribble(port, `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nX-Slow: `, 'a');
  // While it dribbles, others are served.
  for (let i = 0; i < 3; i++) assert.equal((await fetch(`${url}/healthz`)).status, 200);
  const got = await slow.closed;
  assert.match(got, /^HTTP\/1\.1 408 /, `the server answered ${JSON.stringify(got.slice(0, 40))}`);
  assert.equal((await fetch(`${url}/healthz`)).status, 200);
});

test('a request whose body never finishes is cut after httpRequestTimeoutMs (408), while the service answers others', { timeout: 30_000 }, async () => {
  const { url, port, token } = await start({ httpHeadersTimeoutMs: 500, httpRequestTimeoutMs: 1000 });
  const head = [
    'POST /v1/clients HTTP/1.1',
    `Host: 127.0.0.1:${port}`,
    `Authorization: Bearer ${token}`,
    'Content-Type: application/json',
    'Content-Length: 100000',
    '',
    '{"clientId":"',
  ].join('\r\n');
  const slow = dribble(port, head, 'x');
  for (let i = 0; i < 3; i++) assert.equal((await fetch(`${url}/healthz`)).status, 200);
  const got = await slow.closed;
  assert.match(got, /^HTTP\/1\.1 408 /, `the server answered ${JSON.stringify(got.slice(0, 40))}`);
  assert.equal((await fetch(`${url}/v1/clients`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
});
