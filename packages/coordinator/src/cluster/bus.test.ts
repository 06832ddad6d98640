import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createClient } from 'redis';
import { Server, type Socket } from 'socket.io';
import { io as connect, type Socket as ClientSocket } from 'socket.io-client';
import { attachRedisAdapter, ClusterBus } from './bus.js';
import { nextEvent, REDIS_URL, uniqueName } from './services.test-support.js';

const BOUND = 15_000;

/** One replica: an HTTP server on its own port, socket.io with the Redis adapter, its own Redis connection, the bus,
 *  and the sessions it holds (client id → socket). */
async function replica(id: string, keyPrefix: string) {
  // Named, so that a test can find this replica's connections (the adapter's duplicates keep the name) and kill them.
  const redis = createClient({ url: REDIS_URL, name: `${keyPrefix}-${id}` });
  // node-redis emits a lost connection as 'error' (and reconnects): without a listener it would throw.
  const redisErrors: Error[] = [];
  redis.on('error', (e: Error) => redisErrors.push(e));
  await redis.connect();
  const http = createServer();
  const io = new Server(http);
  attachRedisAdapter(io, redis, { keyPrefix, blockTimeInMs: 500, heartbeatInterval: 200 });
  const held = new Map<string, Socket>();
  io.on('connection', (s) => {
    const clientId = String(s.handshake.auth.clientId);
    held.set(clientId, s);
    void s.join(`client:${clientId}`);
    s.on('disconnect', () => held.delete(clientId));
  });
  const bus = new ClusterBus(io, { replicaId: id });
  bus.handle('jobProgress', (m) => {
    const s = held.get(m.clientId);
    if (!s) return null;
    s.emit('jobStatus', m.requestId, m.status);
    return { delivered: true };
  });
  bus.handle('disconnectClient', (m) => {
    const s = held.get(m.clientId);
    if (!s) return null;
    s.emit('closing', m.reason);
    s.disconnect(true);
    return { disconnected: true };
  });
  bus.handle('taskForClient', (m) => {
    if (!held.has(m.clientId)) return null;
    if (m.task.byteLength === 0) throw new Error('empty task');
    return { accepted: true };
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  return {
    id,
    io,
    bus,
    url,
    held,
    redis,
    redisErrors,
    close: async () => {
      await new Promise<void>((r) => io.close(() => r()));
      await redis.quit();
    },
  };
}

async function client(url: string, clientId: string): Promise<ClientSocket> {
  const s = connect(url, { auth: { clientId }, transports: ['websocket'], reconnection: false });
  await nextEvent(s as unknown as NodeJS.EventEmitter, 'connect', BOUND);
  return s;
}

/** Waits until each replica's adapter has heard the other's heartbeat (a bound on a hang, not a timing assertion). */
async function untilPeers(buses: ClusterBus[], n: number): Promise<void> {
  const deadline = Date.now() + BOUND;
  while (Date.now() < deadline) {
    const counts = await Promise.all(buses.map((b) => b.serverCount()));
    if (counts.every((c) => c >= n)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`replicas did not see ${n} servers within ${BOUND} ms`);
}

describe('ClusterBus over the real Redis with socket.io\'s Redis Streams adapter', () => {
  const keyPrefix = uniqueName('fu-bus');
  let a: Awaited<ReturnType<typeof replica>>;
  let b: Awaited<ReturnType<typeof replica>>;
  let onA: ClientSocket;
  let onB: ClientSocket;

  before(async () => {
    a = await replica('A', keyPrefix);
    b = await replica('B', keyPrefix);
    onA = await client(a.url, 'alice');
    onB = await client(b.url, 'bob');
    await untilPeers([a.bus, b.bus], 2);
  });
  after(async () => {
    onA?.close();
    onB?.close();
    await a?.close();
    await b?.close();
    const redis = createClient({ url: REDIS_URL });
    await redis.connect();
    const keys = await redis.keys(`${keyPrefix}*`);
    if (keys.length) await redis.del(keys);
    await redis.quit();
  });

  test('a message from replica A reaches the client held by replica B, bytes intact, and B\'s reply comes back to A', async () => {
    const status = Uint8Array.from([8, 3, 16, 2, 0, 255]);
    const got = nextEvent<unknown>(onB as unknown as NodeJS.EventEmitter, 'jobStatus', BOUND);
    const reply = await a.bus.toHolder('jobProgress', { clientId: 'bob', requestId: 'r-1', status });
    assert.deepEqual(reply, { replica: 'B', reply: { delivered: true } });
    await got;
    // The client got the request id and the bytes as sent (socket.io-client hands binary over as an ArrayBuffer).
    const [requestId, bytes] = await new Promise<[string, ArrayBuffer]>((resolve) => {
      onB.once('jobStatus', (id: string, buf: ArrayBuffer) => resolve([id, buf]));
      void a.bus.toHolder('jobProgress', { clientId: 'bob', requestId: 'r-2', status });
    });
    assert.equal(requestId, 'r-2');
    assert.deepEqual(new Uint8Array(bytes), status);
  });

  test('the replica holding the client answers first when it is the sender itself; nobody holding it gives null', async () => {
    assert.deepEqual(await a.bus.toHolder('jobProgress', { clientId: 'alice', requestId: 'r-3', status: new Uint8Array(1) }), {
      replica: 'A',
      reply: { delivered: true },
    });
    assert.equal(await b.bus.toHolder('jobProgress', { clientId: 'nobody', requestId: 'r-4', status: new Uint8Array(1) }), null);
    // serverSideEmit with acks round-trips: every other replica answers, holding or not.
    const replies = await a.bus.toOthers('taskForClient', { clientId: 'bob', task: Uint8Array.from([1, 2]) });
    assert.deepEqual(replies, [{ replica: 'B', reply: { accepted: true } }]);
  });

  test('a handler that throws on the holder is reported to the sender with its message', async () => {
    await assert.rejects(a.bus.toHolder('taskForClient', { clientId: 'bob', task: new Uint8Array(0) }), /taskForClient on replica B: empty task/);
  });

  test('socket.io\'s own broadcast through the adapter reaches a room on the other replica', async () => {
    const got = nextEvent<string>(onB as unknown as NodeJS.EventEmitter, 'notice', BOUND);
    a.io.to('client:bob').emit('notice', 'from A');
    assert.equal(await got, 'from A');
  });

  test('disconnectClient from A closes the session B holds', async () => {
    const closed = nextEvent<string>(onB as unknown as NodeJS.EventEmitter, 'disconnect', BOUND);
    const reason = nextEvent<string>(onB as unknown as NodeJS.EventEmitter, 'closing', BOUND);
    const reply = await a.bus.toHolder('disconnectClient', { clientId: 'bob', reason: 'forgotten' });
    assert.deepEqual(reply, { replica: 'B', reply: { disconnected: true } });
    assert.equal(await reason, 'forgotten');
    assert.equal(await closed, 'io server disconnect');
    assert.equal(b.held.has('bob'), false);
    assert.equal(await a.bus.toHolder('disconnectClient', { clientId: 'bob', reason: 'again' }), null);
  });

  test('a kind has one handler per replica', () => {
    assert.throws(() => a.bus.handle('jobProgress', () => null), /already has a handler for jobProgress/);
  });
});

describe('the bus after Redis drops every connection of both replicas', () => {
  const keyPrefix = uniqueName('fu-bus-drop');

  test('node-redis reconnects, the stream resumes where it was: a broadcast sent while the connections were down arrives, and requests work again', async () => {
    const a = await replica('A', keyPrefix);
    const b = await replica('B', keyPrefix);
    const onB = await client(b.url, 'bob');
    const admin = createClient({ url: REDIS_URL });
    await admin.connect();
    try {
      await untilPeers([a.bus, b.bus], 2);
      const list = String(await admin.sendCommand(['CLIENT', 'LIST']));
      const ids = list
        .split('\n')
        .filter((l) => l.includes(` name=${keyPrefix}-`))
        .map((l) => /(?:^|\s)id=(\d+)/.exec(l)![1]!);
      // Each replica: its own client, the adapter's stream reader and its subscriber.
      assert.ok(ids.length >= 6, `found ${ids.length} connections of the two replicas`);
      const got = nextEvent<string>(onB as unknown as NodeJS.EventEmitter, 'notice', BOUND);
      for (const id of ids) await admin.sendCommand(['CLIENT', 'KILL', 'ID', id]);
      a.io.to('client:bob').emit('notice', 'sent while Redis was away');
      assert.equal(await got, 'sent while Redis was away');
      // Requests ride pub/sub (ephemeral): once resubscribed, they round-trip again.
      const deadline = Date.now() + BOUND;
      let reply = null;
      while (!reply && Date.now() < deadline) {
        reply = await a.bus.toHolder('jobProgress', { clientId: 'bob', requestId: 'after', status: new Uint8Array(1) });
      }
      assert.deepEqual(reply, { replica: 'B', reply: { delivered: true } });
      assert.ok(a.redisErrors.length > 0, 'the kill was not seen');
    } finally {
      onB.close();
      await a.close();
      await b.close();
      const keys = await admin.keys(`${keyPrefix}*`);
      if (keys.length) await admin.del(keys);
      await admin.quit();
    }
  });
});
