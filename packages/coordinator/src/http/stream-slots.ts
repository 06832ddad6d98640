/** Bounds on long-lived HTTP streams (GET /v1/events), per remote address and in total. */
export interface StreamSlotLimits {
  /** Streams one remote address may hold open at once. */
  perAddress: number;
  /** Streams all addresses together may hold open at once. */
  total: number;
}

/** Why a slot was refused: the message names the limit and the config key that sets it. */
export interface SlotRefusal {
  message: string;
}

/**
 * Counts the open event streams so that one peer (or many) cannot hold unbounded sockets, listeners and keep-alive
 * timers on the coordinator. A stream takes a slot before it starts and gives it back exactly once when its client
 * is gone (the response's 'close'), whatever the reason.
 */
export class StreamSlots {
  private readonly byAddress = new Map<string, number>();
  private openCount = 0;

  constructor(readonly limits: StreamSlotLimits) {
    for (const [k, v] of Object.entries(limits)) {
      if (!Number.isInteger(v) || v < 1) throw new RangeError(`stream slot limit ${k} must be a positive integer, got ${v}`);
    }
  }

  /** Streams open now, from all addresses. */
  get open(): number {
    return this.openCount;
  }

  /** Streams open now from `address`. */
  openFrom(address: string): number {
    return this.byAddress.get(address) ?? 0;
  }

  /**
   * Takes a slot for `address`: a release function (idempotent) or the refusal. Refused when the address already
   * holds `perAddress` streams or all together hold `total`.
   */
  acquire(address: string): { release: () => void } | { refused: SlotRefusal } {
    const mine = this.openFrom(address);
    if (mine >= this.limits.perAddress) {
      return { refused: { message: `too many event streams from ${address}: at most ${this.limits.perAddress} open at once (limits.eventStreamsPerAddress); close one first` } };
    }
    if (this.openCount >= this.limits.total) {
      return { refused: { message: `too many event streams: at most ${this.limits.total} open at once on this coordinator (limits.eventStreams); retry later` } };
    }
    this.byAddress.set(address, mine + 1);
    this.openCount++;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.openCount--;
        const left = this.openFrom(address) - 1;
        if (left > 0) this.byAddress.set(address, left);
        else this.byAddress.delete(address);
      },
    };
  }
}
