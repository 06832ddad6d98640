import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parentPort } from 'node:worker_threads';
import { FederatedClient, initBackend, Trainer } from '@fedunlearn/client';
import type { ConnectOptions, FromWorker, ToWorker, VirtualClientSpec } from './messages.js';

/**
 * A fleet worker: hosts a share of the virtual clients, each a real SDK instance with its own socket, all sharing
 * this thread's TensorFlow.js backend.
 */
const port = parentPort;
if (!port) throw new Error('fleet worker must run in a worker thread');
const post = (m: FromWorker) => port.postMessage(m);
/** How late this thread's callbacks run: a client's pong waits that long, and socket.io drops it past the timeout. */
const loop = monitorEventLoopDelay({ resolution: 10 });
loop.enable();

let specs: VirtualClientSpec[] = [];
let connectOptions: ConnectOptions = {};
let clients: FederatedClient[] = [];
/**
 * One trainer for the thread: its clients' tasks run one after another on one cached model, so updates arrive
 * steadily through a round instead of all at its end, and the thread holds one copy of the model, not one per client.
 */
let trainer: Trainer | null = null;

async function connectAll(url: string): Promise<void> {
  clients = [];
  await connectMore(url, specs);
}

/** Creates and connects a client for each spec, appending them to `clients`. */
async function connectMore(url: string, more: VirtualClientSpec[]): Promise<void> {
  trainer ??= new Trainer({ tf: (await initBackend()).tf });
  const shared = trainer;
  const fresh = more.map(
    (s) =>
      new FederatedClient({
        url,
        clientId: s.clientId,
        secret: s.secret,
        data: s.data,
        reconnect: { delayMs: 200, maxDelayMs: 2000 },
        trainer: shared,
      }),
  );
  fresh.forEach((c, i) => {
    const clientId = more[i]!.clientId;
    c.on('task', (t) => post({ type: 'task', clientId, kind: t.kind, round: t.round, trainMs: t.trainMs }));
    c.on('error', (e) => post({ type: 'failed', message: `${clientId}: ${e.message}` }));
  });
  clients.push(...fresh);
  // A pool of at most `concurrency` pending connects: each takes the next client when one is welcomed.
  const { concurrency, timeoutMs } = connectOptions;
  let next = 0;
  const lane = async () => {
    while (next < fresh.length) await fresh[next++]!.connect(timeoutMs);
  };
  await Promise.all(Array.from({ length: Math.min(fresh.length, concurrency ?? fresh.length) }, lane));
  post({ type: 'connected', backend: clients[0]?.backendName ?? 'none', count: clients.length });
}

async function closeAll(): Promise<void> {
  await Promise.all(clients.map((c) => c.close()));
  clients = [];
}

port.on('message', (msg: ToWorker) => {
  void (async () => {
    try {
      switch (msg.type) {
        case 'connect':
          specs = msg.clients;
          connectOptions = msg.options;
          await connectAll(msg.url);
          return;
        case 'reconnect':
          await closeAll();
          await connectAll(msg.url);
          return;
        case 'add':
          specs = [...specs, ...msg.clients];
          await connectMore(msg.url, msg.clients);
          return;
        case 'forget': {
          const i = specs.findIndex((s) => s.clientId === msg.clientId);
          const c = clients[i];
          if (!c) throw new Error(`no virtual client ${msg.clientId} in this worker`);
          const jobId = await c.forget('simulation');
          const done = await c.waitForJob(jobId);
          post({ type: 'forgotten', requestId: msg.requestId, jobId, report: done.report, state: done.state });
          return;
        }
        case 'loopDelay':
          post({ type: 'loopDelay', maxMs: loop.max / 1e6, p99Ms: loop.percentile(99) / 1e6 });
          loop.reset();
          return;
        case 'stop':
          loop.disable();
          await closeAll();
          trainer?.dispose();
          trainer = null;
          post({ type: 'stopped' });
          return;
      }
    } catch (e) {
      post({ type: 'failed', message: (e as Error).message, ...('requestId' in msg ? { requestId: msg.requestId } : {}) });
    }
  })();
});
