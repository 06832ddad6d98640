import { mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, fedunlearn, helloProof, layoutOf, ProtocolError } from '@fedunlearn/protocol';
import { openSqliteHistory } from '../history/sqlite-store.js';
import { CredentialAuthenticator, issueChallenge } from './authenticator.js';
import { FailureLockout } from './rate-limit.js';

test('two proofs enrolling one client id at once: one is admitted, the other refused, and the stored key is the admitted one', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-enrol-'));
  const store = openSqliteHistory(dir);
  try {
    const layout = layoutOf([{ name: 'w', shape: [2] }]);
    await store.open({ topologyJson: '{}', layout, initialWeights: new Float32Array(2), config: { historyInterval: 1, retention: 'fp32' } });
    const lockout = () => new FailureLockout({ maxFailures: 5, windowMs: 60_000, lockMs: 1_000, maxLockMs: 10_000 });
    const auth = new CredentialAuthenticator({
      getClient: (id) => store.getClient(id),
      upsertClient: (c) => store.upsertClient(c),
      isForgotten: (id) => store.isForgotten(id),
      enrolment: 'open',
      authLockout: lockout(),
      clientLockout: lockout(),
    });
    const hello = fedunlearn.v1.Hello.create({ clientId: 'racer', numExamples: 3 });
    // Both connections were challenged before either enrolled; each proves a key of its own.
    const attempts = await Promise.all(
      ['s1', 's2'].map(async (sessionId) => {
        const c = issueChallenge(await auth.plan(hello, '10.0.0.1'), sessionId);
        assert.equal(c.enrol, true);
        const key = randomBytes(32);
        const proof = fedunlearn.v1.HelloProof.create({ proof: helloProof(key, c.nonce, c.sessionId, 'racer'), enrolKey: key });
        return { c, key, proof };
      }),
    );
    const results = await Promise.allSettled(attempts.map((a) => auth.verify(hello, a.c, a.proof, '10.0.0.1')));
    const admitted = results.flatMap((r, i) => (r.status === 'fulfilled' ? [attempts[i]!] : []));
    assert.equal(admitted.length, 1, 'exactly one enrolment admitted');
    const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(refused.reason instanceof ProtocolError && refused.reason.code === ErrorCode.UNAUTHENTICATED, String(refused.reason));
    assert.match(String(refused.reason), /enrolled meanwhile/);
    assert.ok((await store.getClient('racer'))!.secretHash!.endsWith(admitted[0]!.key.toString('hex')), 'the stored key is the admitted client’s');
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
