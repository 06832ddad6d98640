/**
 * The coordinator's upload window: a semaphore over bytes. Each large answer reserves its announced size before it
 * may be sent, and frees it once it has been folded and staged (or its task ended without it). Requests are granted
 * strictly in the order they came, while the reserved bytes stay under the window; when nothing is reserved the next
 * request is granted whatever its size, so an update larger than the window still goes through, alone.
 */
export class UploadWindow {
  private readonly queue: { id: string; bytes: number; grant(): void }[] = [];
  private readonly reserved = new Map<string, number>();
  private reservedBytes = 0;

  constructor(readonly windowBytes: number) {
    if (!(windowBytes > 0)) throw new RangeError(`the upload window must be positive, got ${windowBytes}`);
  }

  /** Queues a request; `grant` is called (maybe at once) when its bytes are reserved. One request per id. */
  request(id: string, bytes: number, grant: () => void): void {
    if (this.reserved.has(id) || this.queue.some((q) => q.id === id)) throw new Error(`upload ${id} was already requested`);
    this.queue.push({ id, bytes, grant });
    this.pump();
  }

  /** Reserves `bytes` for `id` at once if the window has room and nobody is waiting ahead; false (nothing reserved)
   *  otherwise. How a task is sent with its grant. */
  tryReserve(id: string, bytes: number): boolean {
    if (this.reserved.has(id) || this.queue.some((q) => q.id === id)) throw new Error(`upload ${id} was already requested`);
    if (this.queue.length > 0 || this.reservedBytes + bytes > this.windowBytes) return false;
    this.reserved.set(id, bytes);
    this.reservedBytes += bytes;
    return true;
  }

  /** Frees what `id` reserved, or withdraws its request if still waiting; unknown ids are ignored. */
  release(id: string): void {
    const bytes = this.reserved.get(id);
    if (bytes !== undefined) {
      this.reserved.delete(id);
      this.reservedBytes -= bytes;
    } else {
      const i = this.queue.findIndex((q) => q.id === id);
      if (i >= 0) this.queue.splice(i, 1);
    }
    this.pump();
  }

  /** Bytes granted and not yet released: arriving, or received and not yet folded and staged. */
  get grantedBytes(): number {
    return this.reservedBytes;
  }

  /** Requests waiting for their grant. */
  get waiting(): number {
    return this.queue.length;
  }

  private pump(): void {
    while (this.queue.length > 0) {
      const next = this.queue[0]!;
      if (this.reserved.size > 0 && this.reservedBytes + next.bytes > this.windowBytes) return;
      this.queue.shift();
      this.reserved.set(next.id, next.bytes);
      this.reservedBytes += next.bytes;
      next.grant();
    }
  }
}
