import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

/** Structured JSON lines; `silent` for tests and simulations that print their own progress. */
export function createLogger(opts: { level?: string; name?: string } = {}): Logger {
  return pino({ name: opts.name ?? 'fedunlearn-coordinator', level: opts.level ?? process.env.FEDUNLEARN_LOG_LEVEL ?? 'info' });
}
