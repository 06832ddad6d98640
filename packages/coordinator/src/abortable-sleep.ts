import { setTimeout as delay } from 'node:timers/promises';

/**
 * Waits `ms` milliseconds, or less if `signal` aborts first; never rejects. The round loop sleeps between rounds for
 * the life of the process, so the wait must leave nothing attached to the long-lived signal once it is over: node's
 * promise timer removes its abort listener when it settles (a listener added per wait and never removed piled up
 * until node warned `MaxListenersExceededWarning ... AbortSignal`).
 */
export async function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return;
  try {
    await delay(ms, undefined, { signal });
  } catch (e) {
    if ((e as Error).name !== 'AbortError') throw e;
  }
}
