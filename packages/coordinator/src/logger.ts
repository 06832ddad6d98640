import { pino, type Logger as PinoLogger } from 'pino';

export type Logger = PinoLogger;

const REDACTED = [
  'secret',
  '*.secret',
  'secretHash',
  '*.secretHash',
  'operatorToken',
  '*.operatorToken',
  'authorization',
  '*.authorization',
  '*.headers.authorization',
  'tls.key',
  '*.tls.key',
];

/** Structured JSON lines; `silent` for tests and simulations that print their own progress. */
export function createLogger(opts: { level?: string; name?: string } = {}): Logger {
  return pino({
    name: opts.name ?? 'fedunlearn-coordinator',
    level: opts.level ?? process.env.FEDUNLEARN_LOG_LEVEL ?? 'info',
    // Defence in depth: nothing logs these today (test/src/secrets.e2e.test.ts checks a whole run's output), and a
    // careless `log.info({ hello })` later must not put a credential into log files.
    redact: { paths: REDACTED, censor: '[redacted]' },
  });
}
