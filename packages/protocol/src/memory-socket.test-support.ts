import { EventEmitter } from 'node:events';
import type { WireSocket } from './channel.js';

/** An in-memory socket for channel tests: what one end emits the other receives, asynchronously, copied. */
export class MemorySocket extends EventEmitter implements WireSocket {
  peer: MemorySocket | null = null;
  readonly sent: unknown[] = [];

  override emit(event: string, ...args: unknown[]): boolean {
    this.sent.push(args[0]);
    const peer = this.peer;
    // Node's socket.io delivers binary payloads as Buffers; copy so that the receiver never shares the sender's memory.
    const copied = args.map((a) => (a instanceof Uint8Array ? Buffer.from(a) : a));
    queueMicrotask(() => peer?.deliver(event, copied));
    return true;
  }

  private deliver(event: string, args: unknown[]): void {
    super.emit(event, ...args);
  }
}

/** Two connected ends. */
export function socketPair(): [MemorySocket, MemorySocket] {
  const a = new MemorySocket();
  const b = new MemorySocket();
  a.peer = b;
  b.peer = a;
  return [a, b];
}
