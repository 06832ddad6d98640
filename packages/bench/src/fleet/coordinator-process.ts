import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { layoutOf } from '@fedunlearn/protocol';
import type { FromCoordinator, ToCoordinator } from './messages.js';

/**
 * A real coordinator in its own process, so that the memory it reports (peak resident set) is the coordinator's alone,
 * not the fleet's. Driven over the IPC channel by the fleet benchmark.
 */
if (!process.send) throw new Error('the bench coordinator must run as a forked child process');
const reply = (m: FromCoordinator) => process.send!(m);
let coordinator: Coordinator | null = null;

/** Resident set now, or its high-water mark (VmHWM): the kernel's figures for this process. */
function rssMb(field: 'VmRSS' | 'VmHWM'): number {
  try {
    const line = readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith(`${field}:`));
    if (line) return Number(line.split(/\s+/)[1]) / 1024;
  } catch {
    // not Linux: fall back below
  }
  return field === 'VmRSS' ? process.memoryUsage.rss() / 2 ** 20 : process.resourceUsage().maxRSS / 1024;
}

async function handle(m: ToCoordinator): Promise<void> {
  switch (m.type) {
    case 'start': {
      coordinator = await Coordinator.create({
        store: openSqliteHistory(m.dir),
        dataDir: m.dir,
        model: { topologyJson: m.topologyJson, initial: { layout: layoutOf(m.specs), values: m.values } },
        historyInterval: m.historyInterval,
        federation: {
          clientsPerRound: m.clients,
          minClients: 1,
          roundDeadlineMs: m.roundDeadlineMs,
          seed: 1,
          hyper: { learningRate: 0.1, batchSize: 32, localEpochs: 1 },
          // One attempt, quorum of one: a round that loses clients is reported with who and why, not retried.
          maxRoundAttempts: 1,
          waitForClientsMs: m.roundDeadlineMs,
        },
        logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
      });
      const { url } = await coordinator.listen(0);
      reply({ type: 'ready', url, rssMb: rssMb('VmRSS') });
      return;
    }
    case 'round': {
      if (!coordinator) throw new Error('round before start');
      const loop = monitorEventLoopDelay({ resolution: 10 });
      loop.enable();
      const cpu0 = process.cpuUsage();
      const [r] = await coordinator.runRounds(1);
      const cpu = process.cpuUsage(cpu0);
      loop.disable();
      if (!r) throw new Error('no round ran');
      const missingReasons: Record<string, { count: number; example: string }> = {};
      for (const x of r.missing) {
        const e = (missingReasons[x.reason] ??= { count: 0, example: `${x.clientId}: ${x.detail ?? ''}` });
        e.count++;
      }
      reply({
        type: 'round',
        outcome: { round: r.round, durationMs: r.durationMs, timing: r.timing, cost: r.cost, attempts: r.attempts, participants: r.participants.length, missing: r.missing.length, missingReasons },
        cpuMs: (cpu.user + cpu.system) / 1000,
        eventLoopDelayMs: { max: loop.max / 1e6, p99: loop.percentile(99) / 1e6 },
        rssMb: rssMb('VmRSS'),
      });
      return;
    }
    case 'stop':
      await coordinator?.stop();
      coordinator = null;
      reply({ type: 'stopped', peakRssMb: rssMb('VmHWM'), maxRssMb: process.resourceUsage().maxRSS / 1024 });
      process.disconnect();
      return;
  }
}

process.on('message', (m: ToCoordinator) => {
  handle(m).catch((e: unknown) => reply({ type: 'failed', message: (e as Error)?.stack ?? String(e) }));
});
