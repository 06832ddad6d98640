/**
 * A replica that contends for the lease in a process of its own, so that a test can pause it (SIGSTOP) or kill it
 * (SIGKILL) for real. Arguments: schema, holder, ttlMs. It prints one JSON line per event on stdout; on a stdin line
 * `commit` it runs a commit transaction under the epoch it last held (fence, then an insert into `commits`), as a
 * leader that was paused in the middle of its work would, and prints the outcome.
 */
import { createInterface } from 'node:readline';
import { LeaderLease } from './leader-lease.js';
import { connectPg } from './services.test-support.js';

const [schema, holder, ttl] = process.argv.slice(2);
const say = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
const lease = new LeaderLease({ schema: schema!, holder: holder!, ttlMs: Number(ttl), connect: () => connectPg(`fu-${holder}`) });
let lastEpoch: number | null = null;
lease.on('acquired', (e) => {
  lastEpoch = e.epoch;
  say({ event: 'acquired', epoch: e.epoch });
});
lease.on('lost', (e) => say({ event: 'lost', ...e }));
lease.on('failed', (e) => say({ event: 'failed', message: e.message }));
const db = await connectPg(`fu-${holder}-commit`);

createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() !== 'commit') return;
  void (async () => {
    try {
      await db.query('BEGIN');
      await lease.fence(db, lastEpoch);
      await db.query(`INSERT INTO "${schema}".commits (epoch, holder) VALUES ($1, $2)`, [lastEpoch, holder]);
      await db.query('COMMIT');
      say({ event: 'commit', ok: true, epoch: lastEpoch });
    } catch (e) {
      await db.query('ROLLBACK').catch(() => undefined);
      const err = e as Error & { currentEpoch?: number | null };
      say({ event: 'commit', ok: false, epoch: lastEpoch, error: err.name, message: err.message, currentEpoch: err.currentEpoch ?? null });
    }
  })();
});
await lease.start();
say({ event: 'started', leader: lease.isLeader });
