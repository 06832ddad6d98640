import { EventEmitter } from 'node:events';
import { ErrorCode } from '@fedunlearn/protocol';
import type { ClientSession } from './session.js';

/** Why a session was closed for a newer one (its 'left' reason; the client is told with SESSION_REPLACED). */
export const REPLACED_REASON = 'replaced by a newer connection';

export interface RegistryEvents {
  joined: [ClientSession];
  left: [ClientSession, string];
}

/**
 * The clients connected right now, one session per client id. The rule for a second live session of one id: the
 * newer one replaces the older, which is told so (Error SESSION_REPLACED) and closed. Only a connection that proved
 * the credential (challenge-response) gets here, so this is the holder of the secret coming back (a device whose old
 * connection is half-open, a restarted process), never a replayed hello; the SDK does not reconnect on that code.
 */
export class ClientRegistry extends EventEmitter<RegistryEvents> {
  private readonly sessions = new Map<string, ClientSession>();

  add(session: ClientSession): void {
    const old = this.sessions.get(session.clientId);
    this.sessions.set(session.clientId, session);
    if (old && old !== session) {
      this.emit('left', old, REPLACED_REASON);
      try {
        old.channel.sendError(ErrorCode.SESSION_REPLACED, `another connection proved the credential of client ${old.clientId} (session ${session.sessionId}); this session ${old.sessionId} is closed`);
      } finally {
        old.disconnect(REPLACED_REASON);
      }
    }
    this.emit('joined', session);
  }

  /** Removes the session if it is still the current one for its client. */
  remove(session: ClientSession, reason: string): void {
    if (this.sessions.get(session.clientId) !== session) return;
    this.sessions.delete(session.clientId);
    this.emit('left', session, reason);
  }

  get(clientId: string): ClientSession | undefined {
    return this.sessions.get(clientId);
  }

  connected(): ClientSession[] {
    return [...this.sessions.values()];
  }

  get size(): number {
    return this.sessions.size;
  }

  /**
   * Resolves once at least `n` clients are connected (counting only those `counts` accepts, when given), or with false
   * after `timeoutMs` / on abort.
   */
  waitFor(n: number, timeoutMs: number, signal?: AbortSignal, counts?: (clientId: string) => boolean): Promise<boolean> {
    const enough = () => (counts ? [...this.sessions.keys()].filter(counts).length : this.sessions.size) >= n;
    if (enough()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.off('joined', check);
        signal?.removeEventListener('abort', abort);
        resolve(ok);
      };
      const check = () => {
        if (enough()) done(true);
      };
      const abort = () => done(false);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.on('joined', check);
      signal?.addEventListener('abort', abort);
    });
  }
}
