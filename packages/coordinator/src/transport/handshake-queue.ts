/**
 * Admission for client handshakes. Checking a credential is deliberately expensive (scrypt, tens of milliseconds of
 * CPU), so a reconnect storm of a thousand clients is tens of seconds of work. Run inline, that work starves the
 * event loop: heartbeats go unanswered, connected clients time out and join the storm. This queue runs at most
 * `concurrency` handshakes at a time, yields to the event loop between them (timers and sockets get a turn after
 * every one), and turns away arrivals beyond `maxQueued`, whom the SDK retries after a jittered back-off.
 */
export interface HandshakeQueueOptions {
  /** Handshakes in flight at once (an asynchronous credential check may overlap others). */
  concurrency: number;
  /** Handshakes waiting beyond those in flight; more are refused. */
  maxQueued: number;
  /** Refuse also when the expected wait (queue length x the recent handshake time / concurrency) would exceed this:
   *  on a busy machine a credential check takes several times longer, and the bound follows. */
  maxWaitMs?: number;
}

export class HandshakeQueue {
  private readonly waiting: (() => Promise<void>)[] = [];
  private running = 0;
  /** Moving average of a handshake's duration, ms; null until one finished. */
  private avgMs: number | null = null;
  /** Handshakes refused because the queue was full; never reset. */
  refused = 0;

  constructor(private readonly opts: HandshakeQueueOptions) {
    if (!(opts.concurrency >= 1) || !(opts.maxQueued >= 0)) throw new RangeError(`bad handshake queue options ${JSON.stringify(opts)}`);
  }

  get size(): number {
    return this.waiting.length;
  }

  /** Queues `run`; returns false (and does not run it) when the queue is full. `run` must not throw. */
  offer(run: () => Promise<void> | void): boolean {
    if (this.running >= this.opts.concurrency && (this.waiting.length >= this.opts.maxQueued || this.expectedWaitMs(this.waiting.length + 1) > (this.opts.maxWaitMs ?? Infinity))) {
      this.refused++;
      return false;
    }
    this.waiting.push(async () => run());
    this.pump();
    return true;
  }

  /** How long the `n`-th handshake in line would wait, going by recent ones (0 before any finished). */
  expectedWaitMs(n = this.waiting.length): number {
    return this.avgMs === null ? 0 : (n * this.avgMs) / this.opts.concurrency;
  }

  private pump(): void {
    while (this.running < this.opts.concurrency && this.waiting.length > 0) {
      const next = this.waiting.shift()!;
      this.running++;
      // setImmediate: the handshake runs after pending I/O and timers, never in the callback that queued it.
      setImmediate(() => {
        const started = performance.now();
        void next()
          .catch(() => undefined)
          .then(() => {
            const ms = performance.now() - started;
            this.avgMs = this.avgMs === null ? ms : 0.8 * this.avgMs + 0.2 * ms;
            this.running--;
            this.pump();
          });
      });
    }
  }
}
