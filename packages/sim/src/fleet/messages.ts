import type { LocalDataset } from '../data/types.js';

export interface VirtualClientSpec {
  clientId: string;
  secret: string;
  data: LocalDataset;
}

/** How a worker connects its clients. */
export interface ConnectOptions {
  /** Clients of one worker that may be connecting at once (default: all); a large fleet stays under hello timeouts. */
  concurrency?: number;
  /** How long one client waits for its welcome (the SDK's default otherwise). */
  timeoutMs?: number;
}

/** Main thread → fleet worker. */
export type ToWorker =
  | { type: 'connect'; url: string; clients: VirtualClientSpec[]; options: ConnectOptions }
  | { type: 'reconnect'; url: string }
  /** More clients for a worker that is already connected (late joiners). */
  | { type: 'add'; url: string; clients: VirtualClientSpec[] }
  | { type: 'forget'; clientId: string; requestId: number }
  /** The thread's event-loop delay since the last ask (or start), then reset: heartbeats wait this long. */
  | { type: 'loopDelay' }
  | { type: 'stop' };

/** Fleet worker → main thread. */
export type FromWorker =
  | { type: 'connected'; backend: string; count: number }
  | { type: 'task'; clientId: string; kind: string; round: number; trainMs: number }
  | { type: 'forgotten'; requestId: number; jobId: string; report: unknown; state: string }
  | { type: 'failed'; message: string; requestId?: number }
  | { type: 'loopDelay'; maxMs: number; p99Ms: number }
  | { type: 'stopped' };
