import { FederatedClient, initBackend, Trainer } from '@fedunlearn/client';
import seedrandom from 'seedrandom';
import { tinyDataset } from './tiny-data.js';
import type { FleetReply, FleetRequest, FleetSpec, FleetStats } from './messages.js';

/**
 * A load-test fleet, run as a child process: `count` real SDK clients, each with its own socket and a few examples of
 * a tiny two-class dataset, sharing one Trainer (their tasks run one after another on one cached model). The parent
 * talks to it over the IPC channel (messages.ts).
 */

if (!process.send) throw new Error('fleet.js must be started with an IPC channel (child_process.fork)');
const send = (m: FleetReply): void => {
  process.send!(m);
};

interface Tracked {
  client: FederatedClient;
  connected: boolean;
  welcomes: number;
  attempts: number;
  lostAt: number | null;
  backAfterMs: number[];
  tasks: number;
}

let fleet: Tracked[] = [];
let trainer: Trainer | null = null;
const errors: string[] = [];

async function start(spec: FleetSpec): Promise<void> {
  const { tf } = await initBackend(spec.backends);
  trainer = new Trainer({ tf });
  const shared = trainer;
  const rng = seedrandom(`${spec.seed}/${spec.prefix}`);
  fleet = Array.from({ length: spec.count }, (_, i) => {
    const clientId = `${spec.prefix}-${i}`;
    const client = new FederatedClient({
      url: spec.url,
      clientId,
      secret: spec.secrets[i]!,
      data: tinyDataset(rng, spec.examples, spec.features),
      trainer: shared,
      reconnect: { delayMs: spec.reconnectDelayMs, maxDelayMs: spec.reconnectMaxDelayMs },
    });
    const t: Tracked = { client, connected: false, welcomes: 0, attempts: 0, lostAt: null, backAfterMs: [], tasks: 0 };
    client.on('connected', () => {
      t.connected = true;
      t.welcomes++;
      if (t.lostAt !== null) t.backAfterMs.push(Date.now() - t.lostAt);
      t.lostAt = null;
    });
    client.on('disconnected', () => {
      t.connected = false;
      t.lostAt ??= Date.now();
    });
    client.on('reconnecting', () => t.attempts++);
    client.on('task', () => t.tasks++);
    client.on('error', (e) => {
      if (errors.length < 20) errors.push(`${clientId}: ${e.message}`);
    });
    client.on('serverError', (e) => {
      if (errors.length < 20) errors.push(`${clientId}: ${e.code} ${e.message}`);
    });
    return t;
  });
  const started = Date.now();
  const results = await Promise.allSettled(fleet.map((t) => t.client.connect(spec.connectTimeoutMs)));
  const failed = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
  send({ type: 'started', ms: Date.now() - started, failed: failed.length, firstFailure: failed[0] ?? null, backend: fleet[0]?.client.backendName ?? 'none' });
}

function stats(): FleetStats {
  return {
    connected: fleet.filter((t) => t.connected).length,
    count: fleet.length,
    tasks: fleet.reduce((n, t) => n + t.tasks, 0),
    welcomes: fleet.reduce((n, t) => n + t.welcomes, 0),
    attempts: fleet.map((t) => t.attempts),
    backAfterMs: fleet.flatMap((t) => t.backAfterMs),
    errors: [...errors],
    rssBytes: process.memoryUsage().rss,
  };
}

process.on('message', (msg: FleetRequest) => {
  void (async () => {
    try {
      switch (msg.type) {
        case 'start':
          await start(msg.spec);
          return;
        case 'stats':
          send({ type: 'stats', id: msg.id, stats: stats() });
          return;
        case 'close':
          await Promise.all(fleet.map((t) => t.client.close()));
          trainer?.dispose();
          send({ type: 'closed' });
          process.disconnect();
          return;
      }
    } catch (e) {
      send({ type: 'fatal', message: (e as Error).stack ?? String(e) });
    }
  })();
});
