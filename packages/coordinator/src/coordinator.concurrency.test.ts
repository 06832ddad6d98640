import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, layoutOf, ProtocolError } from '@fedunlearn/protocol';
import { Coordinator } from './coordinator.js';
import { openSqliteHistory } from './history/sqlite-store.js';
import { createLogger } from './logger.js';
import { hashIssuedSecret } from './transport/credentials.js';

// The history store is asynchronous: checks and writes that one synchronous block used to make atomic are now
// separated by awaits. These requests race on purpose; each would create duplicates without its queue.

async function coordinator(): Promise<{ coord: Coordinator; cleanup(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-concurrency-'));
  const layout = layoutOf([{ name: 'dense/kernel', shape: [4, 2] }]);
  const coord = await Coordinator.create({
    store: openSqliteHistory(dir),
    dataDir: dir,
    model: { topologyJson: '{}', initial: { layout, values: new Float32Array(layout.totalSize) } },
    federation: { clientsPerRound: 2, minClients: 1, roundDeadlineMs: 1000, seed: 1, hyper: { learningRate: 0.1, batchSize: 8, localEpochs: 1 }, maxRoundAttempts: 1, waitForClientsMs: 100 },
    historyInterval: 1,
    logger: createLogger({ level: 'silent' }),
  });
  return {
    coord,
    cleanup: async () => {
      await coord.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

test('concurrent identical forget requests create one job; an overlapping one is JOB_CONFLICT', async () => {
  const { coord, cleanup } = await coordinator();
  try {
    for (const id of ['a', 'b', 'c']) await coord.issueClient(id);
    const request = { clientIds: ['a'], requestedBy: 'operator' };
    const answers = await Promise.all([coord.submitForget(request), coord.submitForget(request), coord.submitForget(request)]);
    assert.equal(answers.filter((x) => x.created).length, 1, 'one job created');
    assert.equal(new Set(answers.map((x) => x.job.jobId)).size, 1, 'the others answered with it');
    const results = await Promise.allSettled([coord.submitForget({ clientIds: ['a', 'b'], requestedBy: 'operator' }), coord.submitForget({ clientIds: ['b', 'a'], requestedBy: 'operator' })]);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.ok(r.reason instanceof ProtocolError && r.reason.code === ErrorCode.JOB_CONFLICT, String(r.reason));
    }
    assert.equal((await coord.store.listJobs()).length, 1);
  } finally {
    await cleanup();
  }
});

test('concurrent issues of one client id give one credential; the others are refused', async () => {
  const { coord, cleanup } = await coordinator();
  try {
    const results = await Promise.allSettled([coord.issueClient('dup'), coord.issueClient('dup'), coord.issueClient('dup')]);
    const issued = results.filter((r) => r.status === 'fulfilled');
    assert.equal(issued.length, 1);
    for (const r of results) if (r.status === 'rejected') assert.match(String(r.reason), /already exists/);
    // The stored credential is the one handed out (a later issue did not replace it).
    const secret = (issued[0] as PromiseFulfilledResult<{ secret: string }>).value.secret;
    assert.equal((await coord.store.getClient('dup'))!.secretHash, hashIssuedSecret(secret));
  } finally {
    await cleanup();
  }
});
