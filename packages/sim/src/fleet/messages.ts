import type { LocalDataset } from '../data/types.js';

export interface VirtualClientSpec {
  clientId: string;
  secret: string;
  data: LocalDataset;
}

/** Main thread → fleet worker. */
export type ToWorker =
  | { type: 'connect'; url: string; clients: VirtualClientSpec[] }
  | { type: 'reconnect'; url: string }
  | { type: 'forget'; clientId: string; requestId: number }
  | { type: 'stop' };

/** Fleet worker → main thread. */
export type FromWorker =
  | { type: 'connected'; backend: string; count: number }
  | { type: 'task'; clientId: string; kind: string; round: number; trainMs: number }
  | { type: 'forgotten'; requestId: number; jobId: string; report: unknown; state: string }
  | { type: 'failed'; message: string; requestId?: number }
  | { type: 'stopped' };
