import type { ClientRegistry } from '../transport/client-registry.js';

/**
 * The clients connected to the federation, wherever they are connected: this process's registry on a single
 * coordinator, every replica's presence on a cluster (cluster/presence.ts). Rounds select from it and forget jobs wait
 * on it.
 */
export interface FederationClients {
  /** Ids of the connected clients, in no particular order. */
  connected(): Promise<string[]>;
  /**
   * Resolves true once at least `n` connected clients pass `counts` (all, when not given), or false after `timeoutMs`
   * or on abort.
   */
  waitFor(n: number, timeoutMs: number, signal?: AbortSignal, counts?: (clientId: string) => boolean): Promise<boolean>;
}

/** The clients of one process: its registry (the embedded, single-process coordinator). */
export function localClients(registry: ClientRegistry): FederationClients {
  return {
    connected: async () => registry.connected().map((s) => s.clientId),
    waitFor: (n, timeoutMs, signal, counts) => registry.waitFor(n, timeoutMs, signal, counts),
  };
}
