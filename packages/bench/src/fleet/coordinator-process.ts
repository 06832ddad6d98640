import { readFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Coordinator, createLogger, openSqliteHistory, QuorumError, type Missing } from '@fedunlearn/coordinator';
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

function cpuMs(since: NodeJS.CpuUsage): number {
  const cpu = process.cpuUsage(since);
  return (cpu.user + cpu.system) / 1000;
}

function reasons(missing: Missing[]): Record<string, { count: number; example: string }> {
  const out: Record<string, { count: number; example: string }> = {};
  for (const x of missing) (out[x.reason] ??= { count: 0, example: `${x.clientId}: ${x.detail ?? ''}` }).count++;
  return out;
}

async function handle(m: ToCoordinator): Promise<void> {
  switch (m.type) {
    case 'start': {
      coordinator = await Coordinator.create({
        // The sim's virtual clients enrol on first contact (trust on first use), as in the simulator.
        enrolment: 'open',
        store: openSqliteHistory(m.dir),
        dataDir: m.dir,
        model: { topologyJson: m.topologyJson, initial: { layout: layoutOf(m.specs), values: m.values } },
        historyInterval: m.historyInterval,
        retention: m.retention,
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
      const t0 = Date.now();
      const delay = () => ({ max: loop.max / 1e6, p99: loop.percentile(99) / 1e6 });
      let r;
      try {
        [r] = await coordinator.runRounds(1);
      } catch (e) {
        // A round nobody finished is a figure too: who dropped out and why, with the memory it took.
        if (!(e instanceof QuorumError)) throw e;
        loop.disable();
        reply({ type: 'roundFailed', message: e.message, missingReasons: reasons(e.missing), durationMs: Date.now() - t0, cpuMs: cpuMs(cpu0), eventLoopDelayMs: delay(), rssMb: rssMb('VmRSS') });
        return;
      }
      loop.disable();
      if (!r) throw new Error('no round ran');
      reply({
        type: 'round',
        outcome: { round: r.round, durationMs: r.durationMs, timing: r.timing, cost: r.cost, attempts: r.attempts, participants: r.participants.length, missing: r.missing.length, missingReasons: reasons(r.missing) },
        cpuMs: cpuMs(cpu0),
        eventLoopDelayMs: delay(),
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
