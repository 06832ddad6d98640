import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { LeaderLease, LeaseFencedError, fenceLease, type LeaseAcquired, type LeaseLost } from './leader-lease.js';
import { CLUSTER_MIGRATIONS, migrateCluster } from './migrations.js';
import { connectPg, dropSchema, nextEvent, uniqueName } from './services.test-support.js';

// Short leases keep the tests quick, yet long enough that a loaded machine's event-loop stalls (the whole suite runs
// on 2 cores) do not end a term by themselves; every wait below is a bound on a hang, and the assertions are on the
// order of events and on epochs, never on how long anything took.
const TTL = 3_000;
const BOUND = 15_000;

interface Msg {
  event: string;
  [k: string]: unknown;
}

/** A contender in a child process (leader-lease.test-support.ts): its JSON lines come out as 'msg' events. */
function spawnReplica(schema: string, holder: string): { child: ChildProcess; msgs: EventEmitter; log: Msg[] } {
  const script = fileURLToPath(new URL('./leader-lease.test-support.js', import.meta.url));
  const child = spawn(process.execPath, [script, schema, holder, String(TTL)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const msgs = new EventEmitter();
  const log: Msg[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => {
    const m = JSON.parse(l) as Msg;
    log.push(m);
    msgs.emit('msg', m);
  });
  return { child, msgs, log };
}

function waitMsg(msgs: EventEmitter, event: string): Promise<Msg> {
  return nextEvent<Msg>(msgs, 'msg', BOUND, (m) => m.event === event);
}

function recordEvents(lease: LeaderLease): string[] {
  const events: string[] = [];
  lease.on('acquired', (e) => events.push(`acquired ${e.epoch}`));
  lease.on('lost', (e) => events.push(`lost ${e.epoch} ${e.reason}`));
  return events;
}

describe('LeaderLease on the real PostgreSQL', () => {
  const schema = uniqueName('fu_lease');
  let db: pg.Client;
  const children: ChildProcess[] = [];
  const leases: LeaderLease[] = [];
  const lease = (holder: string, extra: { connect?: () => Promise<pg.Client>; name?: string } = {}) => {
    const l = new LeaderLease({ schema, holder, ttlMs: TTL, connect: () => connectPg(`fu-${holder}`), ...extra });
    leases.push(l);
    return l;
  };

  before(async () => {
    db = await connectPg();
    await migrateCluster(db, schema);
    await db.query(`CREATE TABLE "${schema}".commits (epoch bigint NOT NULL, holder text NOT NULL)`);
  });
  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await Promise.all(leases.map((l) => l.stop()));
    await db.end();
    await dropSchema(schema);
  });

  test('migrations run once: a second run applies nothing; replicas migrating a new schema at once apply each once', async () => {
    assert.equal(await migrateCluster(db, schema), 0);
    const fresh = uniqueName('fu_lease_mig');
    const clients = await Promise.all([1, 2, 3].map(() => connectPg()));
    try {
      const applied = await Promise.all(clients.map((c) => migrateCluster(c, fresh)));
      assert.equal(applied.reduce((a, b) => a + b, 0), CLUSTER_MIGRATIONS.length);
      const { rows } = await db.query<{ n: string }>(`SELECT count(*) AS n FROM "${fresh}".cluster_migrations`);
      assert.equal(Number(rows[0]!.n), CLUSTER_MIGRATIONS.length);
    } finally {
      await Promise.all(clients.map((c) => c.end()));
      await dropSchema(fresh);
    }
  });

  test('of two contenders one leads; when the leader dies (SIGKILL, no release) the other takes over with the next epoch', async () => {
    const a = spawnReplica(schema, 'a');
    children.push(a.child);
    const acquiredA = await waitMsg(a.msgs, 'acquired');
    const b = lease('b');
    const events = recordEvents(b);
    await b.start();
    assert.equal(b.isLeader, false, 'b must not lead while a holds an unexpired lease');
    const row = await b.current(db);
    assert.equal(row?.holder, 'a');
    assert.equal(row?.epoch, acquiredA.epoch);

    a.child.kill('SIGKILL');
    const took = await nextEvent<LeaseAcquired>(b, 'acquired', BOUND);
    assert.equal(took.epoch, (acquiredA.epoch as number) + 1);
    assert.deepEqual(events, [`acquired ${took.epoch}`]);
    assert.equal((await b.current(db))?.holder, 'b');

    // The new leader's commits pass the fence; the dead leader's epoch does not.
    await db.query('BEGIN');
    await b.fence(db);
    await db.query('COMMIT');
    await db.query('BEGIN');
    await assert.rejects(fenceLease(db, { schema, epoch: acquiredA.epoch as number }), LeaseFencedError);
    await db.query('ROLLBACK');

    // stop() releases: a contender takes over at its next attempt, with the next epoch, without waiting out the TTL.
    const c = lease('c');
    await c.start();
    assert.equal(c.isLeader, false);
    const takenByC = nextEvent<LeaseAcquired>(c, 'acquired', BOUND);
    await b.stop();
    assert.equal((await takenByC).epoch, took.epoch + 1);
    assert.deepEqual(events, [`acquired ${took.epoch}`, `lost ${took.epoch} stopped`]);
    await c.stop();
  });

  test('four contenders starting at once on a fresh lease: exactly one leads, with epoch 1', async () => {
    const name = 'race';
    const all = ['r1', 'r2', 'r3', 'r4'].map((h) => lease(h, { name }));
    await Promise.all(all.map((l) => l.start()));
    const leaders = all.filter((l) => l.isLeader);
    assert.equal(leaders.length, 1, `${leaders.length} leaders`);
    assert.equal(leaders[0]!.epoch, 1);
    assert.equal((await leaders[0]!.current(db))?.epoch, 1);
    await Promise.all(all.map((l) => l.stop()));
  });

  test('a paused leader (SIGSTOP past its lease) that resumes cannot commit: its fence is refused', async () => {
    const a = spawnReplica(schema, 'p');
    children.push(a.child);
    // The previous test left the default lease released: the child takes it.
    const first = await waitMsg(a.msgs, 'acquired');
    const e1 = first.epoch as number;

    const b = lease('q');
    const events = recordEvents(b);
    await b.start();
    assert.equal(b.isLeader, false);

    a.child.kill('SIGSTOP');
    const took = await nextEvent<LeaseAcquired>(b, 'acquired', BOUND);
    assert.equal(took.epoch, e1 + 1);

    a.child.kill('SIGCONT');
    a.child.stdin!.write('commit\n');
    const commit = await waitMsg(a.msgs, 'commit');
    assert.equal(commit.ok, false, 'the deposed leader committed');
    assert.equal(commit.error, 'LeaseFencedError');
    assert.equal(commit.epoch, e1);
    assert.equal(commit.currentEpoch, e1 + 1);
    // It also learns it no longer leads (from its overdue expiry timer or its renewal, whichever ran first).
    const lost = a.log.find((m) => m.event === 'lost') ?? (await waitMsg(a.msgs, 'lost'));
    assert.equal(lost.epoch, e1);
    assert.ok(lost.reason === 'expired' || lost.reason === 'taken-over', `lost for ${String(lost.reason)}`);

    // Nothing of the deposed term reached the table; the current leader's commit does.
    await db.query('BEGIN');
    await b.fence(db);
    await db.query(`INSERT INTO "${schema}".commits (epoch, holder) VALUES ($1, 'q')`, [took.epoch]);
    await db.query('COMMIT');
    const { rows } = await db.query<{ epoch: string; holder: string }>(`SELECT epoch, holder FROM "${schema}".commits ORDER BY epoch`);
    assert.deepEqual(rows.map((r) => [Number(r.epoch), r.holder]), [[e1 + 1, 'q']]);
    assert.deepEqual(events, [`acquired ${e1 + 1}`]);
    a.child.kill('SIGKILL');
    await b.stop();
  });

  test('losing the database connection ends the term at once (lost: connection); reconnected, it leads again with the next epoch', async () => {
    const app = uniqueName('fu-conn');
    const l = lease('conn', { name: 'conn', connect: () => connectPg(app) });
    const events = recordEvents(l);
    await l.start();
    assert.equal(l.isLeader, true);
    const e1 = l.epoch!;
    const lost = nextEvent<LeaseLost>(l, 'lost', BOUND);
    const again = nextEvent<LeaseAcquired>(l, 'acquired', BOUND);
    const { rows } = await db.query<{ ok: boolean }>(`SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1`, [app]);
    assert.deepEqual(rows.map((r) => r.ok), [true]);
    const why = await lost;
    assert.equal(why.reason, 'connection');
    assert.match(why.message, /connection/);
    assert.equal((await again).epoch, e1 + 1);
    assert.deepEqual(events, [`acquired ${e1}`, `lost ${e1} connection`, `acquired ${e1 + 1}`]);
    // A commit under the term that ended is refused.
    await db.query('BEGIN');
    await assert.rejects(l.fence(db, e1), LeaseFencedError);
    await db.query('ROLLBACK');
    await l.stop();
  });

  test('a fenced commit in progress holds off the takeover: the next term starts after the commit, by the database clock', async () => {
    const name = 'held';
    const a = lease('held-a', { name });
    const aEvents = recordEvents(a);
    await a.start();
    const e1 = a.epoch!;
    const b = lease('held-b', { name });
    await b.start();
    assert.equal(b.isLeader, false);

    const tx = await connectPg();
    try {
      await tx.query('BEGIN');
      await a.fence(tx);
      await tx.query(`INSERT INTO "${schema}".commits (epoch, holder) VALUES ($1, 'held-a')`, [e1]);
      // The open commit holds the lease row FOR SHARE: a's renewals (and b's takeover) wait on it, so a gives its term
      // up when its TTL passes without a renewal; b cannot take the lease while the commit is open.
      const lost = await nextEvent<LeaseLost>(a, 'lost', BOUND);
      assert.equal(lost.reason, 'expired');
      assert.equal(b.isLeader, false, 'b took the lease while a fenced commit was open');
      const taken = nextEvent<LeaseAcquired>(b, 'acquired', BOUND);
      const { rows: at } = await tx.query<{ t: Date }>('SELECT clock_timestamp() AS t');
      await tx.query('COMMIT');
      assert.equal((await taken).epoch, e1 + 1);
      const { rows } = await db.query<{ acquired_at: Date }>(`SELECT acquired_at FROM "${schema}".leader_lease WHERE name = $1`, [name]);
      assert.ok(rows[0]!.acquired_at.getTime() >= at[0]!.t.getTime(), 'the new term began before the commit ended');
      assert.deepEqual(aEvents, [`acquired ${e1}`, `lost ${e1} expired`]);
    } finally {
      await tx.end();
    }
  });

  test('fence refuses to run outside a transaction block, and a lease that was never taken', async () => {
    await assert.rejects(fenceLease(db, { schema, name: 'conn', epoch: 1 }), /inside the commit transaction/);
    await db.query('BEGIN');
    await assert.rejects(fenceLease(db, { schema, name: 'nobody', epoch: 1 }), /never been taken/);
    await db.query('ROLLBACK');
  });

  test('bad options are refused with a clear error', () => {
    const connect = () => connectPg();
    assert.throws(() => new LeaderLease({ schema: 'Bad-Name', holder: 'x', connect }), /schema name/);
    assert.throws(() => new LeaderLease({ schema: 'pg_lease', holder: 'x', connect }), /not starting with a digit or pg_/);
    assert.throws(() => new LeaderLease({ schema, holder: 'x', ttlMs: 1000, renewEveryMs: 1000, connect }), /renewEveryMs/);
    assert.throws(() => new LeaderLease({ schema, holder: '', connect }), /holder/);
  });
});
