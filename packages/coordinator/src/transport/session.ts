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
  /** Closes the underlying socket. */
  disconnect(reason: string): void;
}
