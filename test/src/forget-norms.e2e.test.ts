import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { federation, tempDir } from './support.js';

/**
 * Issue 11, section 6: what can be known at submission is refused at submission. Under retention 'norms' no update is
 * stored, so server-side `replay` has nothing to re-apply: refused with the reason (it used to run, then fail with
 * "no remaining client answered any step"), nothing changes; FedEraser, which needs only the norms, is accepted.
 */
test("POST /v1/jobs refuses method 'replay' on a norms-only history with the reason, and creates nothing", async () => {
  const tmp = tempDir('forget-norms');
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: builtInDefinition('mlp', { inputShape: [16], numClasses: 4, seed: 3 }),
    federation: federation(),
    historyInterval: 1,
    retention: 'norms',
    logger: createLogger({ level: 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  try {
    const post = (path: string, body: unknown) => fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    assert.equal((await post('/v1/clients', { clientId: 'device-1' })).status, 201);
    const refused = await post('/v1/jobs', { clientIds: ['device-1'], method: 'replay' });
    assert.equal(refused.status, 400);
    const { error } = (await refused.json()) as { error: { code: string; message: string } };
    assert.equal(error.code, 'INVALID_ARGUMENT');
    assert.match(error.message, /replay.*norms/);
    assert.deepEqual(coordinator.store.listJobs(), [], 'no job was created');
    assert.equal((await post('/v1/jobs', { clientIds: ['device-1'], method: 'federaser' })).status, 202, 'federaser needs only the norms');
  } finally {
    await coordinator.stop();
    tmp.cleanup();
  }
});
