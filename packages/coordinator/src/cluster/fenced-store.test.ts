import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { layoutOf } from '@fedunlearn/protocol';
import { openPgHistory } from '../history/pg/pg-store.js';
import { dropSchemas, freshSchemaName, schemaUrl, TEST_PG_URL } from '../history/pg/pg.test-support.js';
import { LeaderLease, LeaseFencedError } from './leader-lease.js';

/** The PostgreSQL store runs a cluster's fence inside its leader-only transactions (cluster/join.ts wires the lease's):
 *  a deposed term's commit is refused and leaves nothing. */

const layout = layoutOf([{ name: 'w', shape: [8] }]);
const schemas: string[] = [];
after(() => dropSchemas(schemas));

const participant = () => ({ clientId: 'c', numExamples: 5, norms: [1] });
const weights = (seed: number) => Float32Array.from({ length: 8 }, (_, i) => Math.cos(seed + i));

function lease(schema: string, holder: string): LeaderLease {
  return new LeaderLease({
    connect: async () => {
      const c = new pg.Client({ connectionString: TEST_PG_URL });
      await c.connect();
      return c;
    },
    schema,
    holder,
    ttlMs: 1_000,
  });
}

test('a round committed under a deposed lease term is refused (LeaseFencedError) and the head stays', async () => {
  const schema = freshSchemaName();
  schemas.push(schema);
  const a = lease(schema, 'a');
  await a.start();
  const epochA = a.epoch!;
  assert.ok(epochA >= 1);
  // The term's epoch, as a leader that believes it still leads holds it (a SIGSTOPped one does, until it wakes up).
  const store = await openPgHistory(schemaUrl(schema), { fence: (tx) => a.fence(tx, epochA) });
  const b = lease(schema, 'b');
  try {
    await store.open({ topologyJson: '{}', layout, initialWeights: weights(0), config: { historyInterval: 1, retention: 'fp32' } });
    const head0 = await store.head();
    await store.stageUpdate('round-1', 'c', weights(11));
    const r1 = await store.commitRound({ round: 1, roundId: 'round-1', modelBefore: head0.version, weights: weights(1), participants: [participant()], metrics: {}, startedAt: 1 });
    assert.equal((await store.head()).version, r1.version, 'the leader commits while its term lasts');
    // Another replica takes over (a's term released here; expiry or a takeover end it the same way: a new epoch).
    await a.stop();
    await b.start();
    assert.ok(b.epoch! > epochA);
    await store.stageUpdate('round-2', 'c', weights(12));
    await assert.rejects(
      store.commitRound({ round: 2, roundId: 'round-2', modelBefore: r1.version, weights: weights(2), participants: [participant()], metrics: {}, startedAt: 2 }),
      (e: unknown) => e instanceof LeaseFencedError && e.epoch === epochA,
    );
    assert.equal((await store.head()).version, r1.version, 'nothing of the refused commit is left');
    assert.equal((await store.listRounds()).length, 1);
  } finally {
    await b.stop();
    await store.close();
  }
});
