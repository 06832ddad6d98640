import type { BackendName } from '@fedunlearn/client';

/** What a load-test fleet process is asked to run. */
export interface FleetSpec {
  url: string;
  /** Client ids are `${prefix}-${i}`. */
  prefix: string;
  count: number;
  /** Issued secrets, one per client in id order. */
  secrets: string[];
  seed: number;
  examples: number;
  features: number;
  reconnectDelayMs: number;
  reconnectMaxDelayMs: number;
  connectTimeoutMs: number;
  backends?: BackendName[];
}

export interface FleetStats {
  /** Clients welcomed and not disconnected since. */
  connected: number;
  count: number;
  /** Tasks completed, all clients. */
  tasks: number;
  /** Welcomes received, all clients (one per connection). */
  welcomes: number;
  /** Reconnection attempts per client, since the start. */
  attempts: number[];
  /** For every loss of connection that ended, how long until the client was welcomed again. */
  backAfterMs: number[];
  /** The first few errors the clients saw. */
  errors: string[];
  rssBytes: number;
}

export type FleetRequest = { type: 'start'; spec: FleetSpec } | { type: 'stats'; id: number } | { type: 'close' };

export type FleetReply =
  | { type: 'started'; ms: number; failed: number; firstFailure: string | null; backend: string }
  | { type: 'stats'; id: number; stats: FleetStats }
  | { type: 'closed' }
  | { type: 'fatal'; message: string };
