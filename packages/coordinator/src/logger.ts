import { pino, type DestinationStream, type Logger as PinoLogger } from 'pino';
import pretty from 'pino-pretty';

export type Logger = PinoLogger;

export type LogFormat = 'json' | 'pretty';

export interface LoggerOptions {
  /** pino level; default FEDUNLEARN_LOG_LEVEL, else info. `silent` for tests and simulations that print their own progress. */
  level?: string;
  name?: string;
  /** Default FEDUNLEARN_LOG_FORMAT, else pretty on a terminal and JSON lines otherwise (files, journald, collectors). */
  format?: LogFormat;
  /** Where lines go (default stdout); for tests. */
  destination?: DestinationStream;
}

/**
 * Fields that may hold a credential, wherever a log call puts them: a secret must never reach a log line, so they are
 * censored by pino before serialisation rather than trusted to each call site. pino's `*` matches one level, so the
 * common nestings are listed.
 */
export const REDACTED_PATHS = [
  'secret',
  '*.secret',
  'hello.secret',
  '*.hello.secret',
  'secretHash',
  '*.secretHash',
  'operatorToken',
  '*.operatorToken',
  'token',
  '*.token',
  'authorization',
  '*.authorization',
  'headers.authorization',
  '*.headers.authorization',
  'tls.key',
  '*.tls.key',
  'req.headers.authorization',
  'request.headers.authorization',
] as const;

export function createLogger(opts: LoggerOptions = {}): Logger {
  const options = {
    name: opts.name ?? 'fedunlearn-coordinator',
    level: opts.level ?? process.env.FEDUNLEARN_LOG_LEVEL ?? 'info',
    redact: { paths: [...REDACTED_PATHS], censor: '[Redacted]' },
  };
  const format = opts.format ?? logFormatFromEnv() ?? (process.stdout.isTTY ? 'pretty' : 'json');
  if (format === 'pretty') {
    // A stream in this thread, not pino's worker transport: lines appear in order with the process's other output,
    // and nothing is lost when the process exits right after logging.
    const dest = pretty({ colorize: !opts.destination && Boolean(process.stdout.isTTY), translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', ...(opts.destination ? { destination: opts.destination } : {}) });
    return pino(options, dest);
  }
  return opts.destination ? pino(options, opts.destination) : pino(options);
}

/** FEDUNLEARN_LOG_FORMAT=json|pretty, or undefined when unset; anything else is a mistake worth stopping for. */
export function logFormatFromEnv(env: NodeJS.ProcessEnv = process.env): LogFormat | undefined {
  const v = env.FEDUNLEARN_LOG_FORMAT;
  if (v === undefined || v === '') return undefined;
  if (v === 'json' || v === 'pretty') return v;
  throw new RangeError(`FEDUNLEARN_LOG_FORMAT must be json or pretty, got ${JSON.stringify(v)}`);
}
