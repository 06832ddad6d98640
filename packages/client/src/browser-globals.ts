// The trainer yields to the event loop with setImmediate, which browsers lack. A MessageChannel message is the
// browser's equivalent: it runs after pending events like setImmediate, whereas setTimeout(0) is clamped to 4 ms
// after a few nested calls and to 1 s in a background tab, which would slow training to a crawl there.
// Defined only where missing, so a page that has its own (or a later trainer that no longer needs it) is untouched.
if (typeof (globalThis as { setImmediate?: unknown }).setImmediate !== 'function') {
  // The DOM's MessagePort (onmessage starts the port), typed here without the DOM library.
  const channel = new MessageChannel() as unknown as { port1: { onmessage: (() => void) | null }; port2: { postMessage(v: unknown): void } };
  const queue: (() => void)[] = [];
  channel.port1.onmessage = () => queue.shift()?.();
  (globalThis as unknown as { setImmediate: (fn: (...args: unknown[]) => void, ...args: unknown[]) => number }).setImmediate = (fn, ...args) => {
    queue.push(() => fn(...args));
    channel.port2.postMessage(0);
    return queue.length;
  };
}

export {};
