import type { Channel } from '@fedunlearn/protocol';

/** An authenticated client connection. */
export interface ClientSession {
  readonly clientId: string;
  readonly sessionId: string;
  readonly numExamples: number;
  readonly backend: string;
  readonly sdkVersion: string;
  readonly connectedAt: number;
  readonly channel: Channel;
  lastSeen: number;
  /** Resolves once everything queued for this client was written to the OS, or the connection closed. */
  flushed(): Promise<void>;
  /** Closes the underlying socket. */
  disconnect(reason: string): void;
}
