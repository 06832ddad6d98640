import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from 'redis';
import { Presence, type PresenceRedis } from './presence.js';
import { REDIS_URL, uniqueName } from './services.test-support.js';

/** Presence on the real Redis: which client is on which replica, seen by every replica, gone with a dead replica. */

const redis = createClient({ url: REDIS_URL }) as unknown as PresenceRedis;
const prefix = uniqueName('presence');
after(async () => {
  for await (const keys of redis.scanIterator({ MATCH: `${prefix}:*` })) if (keys.length) await redis.del(keys);
  await redis.quit();
});

test('each replica publishes its clients; every replica sees where each client is; a dead replica vanishes with its TTL', async () => {
  await redis.connect();
  const a = new Presence(redis, { keyPrefix: prefix, info: { replicaId: 'a', url: 'http://a', startedAt: 1 }, ttlMs: 1_200 });
  const b = new Presence(redis, { keyPrefix: prefix, info: { replicaId: 'b', url: 'http://b', startedAt: 2 }, ttlMs: 1_200 });
  await a.start();
  await b.start();
  a.joined('c1');
  a.joined('c2');
  b.joined('c3');
  await a.update({ leading: 4 });
  const where = await waitFor(() => b.locate(), (m) => m.size === 3);
  assert.deepEqual([...where].sort(), [['c1', 'a'], ['c2', 'a'], ['c3', 'b']]);
  const rs = await b.replicas();
  assert.deepEqual(rs.map((r) => [r.replicaId, r.clients, r.leading ?? null]), [['a', ['c1', 'c2'], 4], ['b', ['c3'], null]]);
  a.left('c2');
  await waitFor(() => b.connected(), (ids) => !ids.includes('c2'));
  assert.equal(await b.waitFor(3, 300), false, 'two clients are connected, not three');
  assert.equal(await b.waitFor(2, 300), true);
  // a stops heartbeating without withdrawing (a SIGKILLed replica): its clients stop being candidates after the TTL.
  (a as unknown as { timer: NodeJS.Timeout }).timer.close();
  const alive = await waitFor(() => b.replicas(), (r) => r.length === 1, 5_000);
  assert.deepEqual(alive.map((r) => r.replicaId), ['b']);
  assert.deepEqual(await b.connected(), ['c3']);
  // b's heartbeat rewrites its whole set: a membership lost meanwhile (deleted here by hand) comes back.
  await redis.del(`${prefix}:clients:b`);
  await waitFor(() => a.connected(), (ids) => ids.includes('c3'), 5_000);
  await b.stop();
  assert.deepEqual(await a.replicas(), [], 'a stopped replica withdraws at once');
});

async function waitFor<T>(probe: () => Promise<T>, ok: (v: T) => boolean, ms = 3_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (ok(v)) return v;
    if (Date.now() > until) throw new Error(`condition not met within ${ms} ms; last ${JSON.stringify(v instanceof Map ? [...v] : v)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
