import { EventEmitter } from 'node:events';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { ConnectOptions, FromWorker, ToWorker, VirtualClientSpec } from './messages.js';

export interface FleetEvents {
  /** `thread` is the worker that ran the task: tasks of one thread run one after another on its shared trainer. */
  task: [{ clientId: string; kind: string; round: number; trainMs: number; thread: number }];
  failure: [string];
}

/**
 * Many virtual clients on one machine: real SDK instances talking real socket.io on loopback, spread over worker
 * threads (one TensorFlow.js backend per thread) so that training uses every core.
 */
export class Fleet extends EventEmitter<FleetEvents> {
  private readonly workers: Worker[] = [];
  private readonly owner = new Map<string, number>();
  backend = '';
  private nextRequest = 1;

  constructor(private readonly threads = Math.max(1, Math.min(availableParallelism(), 4))) {
    super();
  }

  /** Worker threads the clients are spread over (known once connected). */
  get threadCount(): number {
    return this.workers.length;
  }

  /** Starts the workers and connects every client to `url`; resolves when all are welcomed. */
  async connect(url: string, clients: VirtualClientSpec[], options: ConnectOptions = {}): Promise<void> {
    const n = Math.min(this.threads, clients.length);
    const shares = balancedShares(clients, n);
    shares.forEach((share, t) => share.forEach((c) => this.owner.set(c.clientId, t)));
    for (let i = 0; i < n; i++) {
      const w = new Worker(new URL('./worker.js', import.meta.url), { env: { ...process.env } });
      w.on('message', (m: FromWorker) => {
        if (m.type === 'task') this.emit('task', { ...m, thread: i });
        else if (m.type === 'failed' && m.requestId === undefined) this.emit('failure', m.message);
      });
      w.on('error', (e) => this.emit('failure', e.message));
      this.workers.push(w);
    }
    await Promise.all(this.workers.map((w, i) => this.request(w, { type: 'connect', url, clients: shares[i]!, options }, 'connected')));
  }

  /** Connects more clients to `url` through the running workers (clients that join late); resolves when all are welcomed. */
  async add(url: string, clients: VirtualClientSpec[]): Promise<void> {
    if (this.workers.length === 0) return this.connect(url, clients);
    const shares: VirtualClientSpec[][] = this.workers.map(() => []);
    clients.forEach((c, i) => {
      shares[i % this.workers.length]!.push(c);
      this.owner.set(c.clientId, i % this.workers.length);
    });
    await Promise.all(this.workers.map((w, i) => (shares[i]!.length > 0 ? this.request(w, { type: 'add', url, clients: shares[i]! }, 'connected') : undefined)));
  }

  /** Moves every client to another coordinator (new connections, same identities and data). */
  async reconnect(url: string): Promise<void> {
    await Promise.all(this.workers.map((w) => this.request(w, { type: 'reconnect', url }, 'connected')));
  }

  /** Has one client ask, through its SDK, to be forgotten; resolves when the job is done, with its report. */
  async forget(clientId: string): Promise<{ jobId: string; report: unknown; state: string }> {
    const w = this.workers[this.owner.get(clientId) ?? -1];
    if (!w) throw new Error(`unknown virtual client ${clientId}`);
    const requestId = this.nextRequest++;
    const m = await this.request(w, { type: 'forget', clientId, requestId }, 'forgotten', requestId);
    return m as { jobId: string; report: unknown; state: string };
  }

  /** Each thread's event-loop delay (ms) since the previous call or the start; resets it. */
  async loopDelays(): Promise<{ maxMs: number; p99Ms: number }[]> {
    const out = await Promise.all(this.workers.map((w) => this.request(w, { type: 'loopDelay' }, 'loopDelay')));
    return out.map((m) => (m.type === 'loopDelay' ? { maxMs: m.maxMs, p99Ms: m.p99Ms } : { maxMs: NaN, p99Ms: NaN }));
  }

  async stop(): Promise<void> {
    await Promise.all(this.workers.map((w) => this.request(w, { type: 'stop' }, 'stopped').catch(() => undefined)));
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers.length = 0;
  }

  private request(w: Worker, msg: ToWorker, expect: FromWorker['type'], requestId?: number): Promise<FromWorker> {
    return new Promise((resolve, reject) => {
      const on = (m: FromWorker) => {
        if (m.type === 'failed' && (requestId === undefined || m.requestId === requestId)) {
          w.off('message', on);
          reject(new Error(m.message));
          return;
        }
        if (m.type !== expect) return;
        if (requestId !== undefined && 'requestId' in m && m.requestId !== requestId) return;
        w.off('message', on);
        if (m.type === 'connected') this.backend = m.backend;
        resolve(m);
      };
      w.on('message', on);
      w.postMessage(msg);
    });
  }
}

/**
 * Spreads clients over `n` threads so that each thread holds about as many examples: a thread's clients train one
 * after another, so a round lasts as long as its most loaded thread. Largest first onto the least loaded thread
 * (LPT; ties by position, so the split is deterministic). Round-robin by position left the Fashion-MNIST Dirichlet(0.5)
 * split at 26,456 against 33,544 examples on two threads (this gives 30,120 and 29,880).
 */
export function balancedShares<T extends { data: { count: number } }>(clients: readonly T[], n: number): T[][] {
  const shares: T[][] = Array.from({ length: n }, () => []);
  const load = new Array<number>(n).fill(0);
  const picked: number[][] = Array.from({ length: n }, () => []);
  const order = clients.map((c, i) => ({ c, i })).sort((a, b) => b.c.data.count - a.c.data.count || a.i - b.i);
  for (const { c, i } of order) {
    let t = 0;
    for (let k = 1; k < n; k++) if (load[k]! < load[t]!) t = k;
    picked[t]!.push(i);
    load[t]! += c.data.count;
  }
  // Within a thread, clients keep their original order (connect order, task order).
  picked.forEach((idx, t) => idx.sort((a, b) => a - b).forEach((i) => shares[t]!.push(clients[i]!)));
  return shares;
}
