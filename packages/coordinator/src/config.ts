import { readFileSync } from 'node:fs';
import { dirname, extname, isAbsolute, resolve } from 'node:path';
import type { ArchitectureName, ArchitectureOptions } from '@fedunlearn/models';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { AGGREGATIONS, strategyOf } from './aggregation/robust.js';
import type { CoordinatorOptions, SecurityLimits } from './coordinator.js';
import { DEFAULT_HTTP_TIMEOUTS } from './http/api.js';
import { METHOD_NAMES, type MethodName } from './unlearning/method.js';
import { DEFAULT_JOB_OFFLINE, OFFLINE_POLICIES } from './unlearning/offline.js';

/**
 * The coordinator service's configuration: one flat object whose keys are the camelCase names of the `serve` flags,
 * so that an error names a field the operator recognises from both the flag and the config file.
 */

export const RETENTIONS = ['fp32', 'fp16', 'int8', 'norms'] as const;
export const ARCHITECTURES = ['mlp', 'cnn'] as const;
export const ENROLMENTS = ['open', 'closed'] as const;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** The Flower-style default quorum, lowered when fewer clients are asked per round. */
const DEFAULT_MIN_CLIENTS = 2;

const posInt = z.number().int().positive();

/**
 * One round a minute: the pace of cross-device federations, where rounds follow the devices' check-ins (minutes, not
 * milliseconds), and 1,440 rounds a day, more than most federated trainings run. Back-to-back rounds filled 622 MB in
 * six minutes; with this cadence and the default retention the models stay a few dozen versions.
 */
export const DEFAULT_ROUND_INTERVAL_MS = 60_000;
export const DEFAULT_KEEP_LAST_MODELS = 10;
export const DEFAULT_KEEP_MODELS_EVERY = 100;

/** `784`, `"28,28,1"` (the flag's form) or `[28, 28, 1]` (a config file's natural form). */
const inputShape = z.preprocess((v) => {
  if (typeof v === 'number') return [v];
  if (typeof v === 'string') return v.split(',').map((s) => (s.trim() !== '' && Number.isFinite(Number(s)) ? Number(s) : s));
  return v;
}, z.array(posInt).min(1));

export const serviceConfigSchema = z
  .object({
    port: z.number().int().min(0).max(65535).default(8080),
    host: z.string().min(1).default('127.0.0.1'),
    /** Data directory: the history database, blobs and job scratch files. */
    data: z.string().min(1).default('./data'),
    /** A cluster (issue 14): the shared PostgreSQL store, postgres://user@host:port/db?schema=NAME; needs `redis`.
     *  Without it the embedded store in `data` (one process). */
    store: z.string().min(1).regex(/^postgres(ql)?:\/\//, 'a postgres:// or postgresql:// URL').optional(),
    /** A cluster's Redis, redis://host:port (messages between replicas, presence); needs `store`. */
    redis: z.string().min(1).regex(/^rediss?:\/\//, 'a redis:// or rediss:// URL').optional(),
    /** A cluster's Redis key prefix (default fedunlearn:<schema>). */
    redisPrefix: z.string().min(1).optional(),
    /** This replica's id (default <host>-<pid>-<random>). */
    replicaId: z.string().min(1).regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, dot, dash and underscore').optional(),
    /** The leader lease's time to live: a dead leader is replaced within it (default 10,000 ms). */
    leaseTtlMs: z.number().int().min(1_000).optional(),
    model: z.enum(ARCHITECTURES).default('mlp'),
    inputShape: inputShape.default([784]),
    classes: z.number().int().min(2).default(10),
    /** K: clients asked to train in each round. */
    clientsPerRound: posInt.default(10),
    /** Quorum; defaults to min(2, clientsPerRound). */
    minClients: posInt.optional(),
    roundDeadlineMs: posInt.default(60_000),
    lr: z.number().positive().default(0.1),
    batchSize: posInt.default(32),
    localEpochs: z.number().positive().default(1),
    /** FedEraser's Δt: full client updates are kept every this many rounds. */
    historyInterval: posInt.default(2),
    retention: z.enum(RETENTIONS).default('fp32'),
    /** After a forget job: erase the weights of the model versions the forgotten clients contributed to, or keep them. */
    modelsAfterForget: z.enum(['erase', 'keep']).default('erase'),
    /** A forget job waits at most this long in all for offline clients of its replay steps (shown in its progress)... */
    jobWaitForClientsMs: z.number().int().min(0).default(DEFAULT_JOB_OFFLINE.waitMs),
    /** ...then 'fail' stops it with nothing changed; 'server-side' completes calibration steps from stored updates. */
    jobOfflinePolicy: z.enum(OFFLINE_POLICIES).default(DEFAULT_JOB_OFFLINE.policy),
    /** The unlearning method of the jobs clients ask for through the SDK (a ForgetRequest names no method: the
     *  operator chooses it for the federation). */
    clientForgetMethod: z.enum(METHOD_NAMES as unknown as [MethodName, ...MethodName[]]).default('federaser'),
    /** Seeds the initial model, client selection and the clients' shuffles. */
    seed: z.number().int().min(0).default(1),
    operatorToken: z.string().min(8).optional(),
    /** Runs the operator API without a token (development only; a warning at every start). Without it and without
     *  operatorToken, serve keeps a generated token in <data>/operator-token. */
    insecureNoAuth: z.boolean().default(false),
    /** Host names the operator API answers to besides loopback names and the address it listens on; '*': any. */
    allowedHosts: z
      .preprocess((v) => (typeof v === 'string' ? v.split(',').map((s) => s.trim()).filter((s) => s !== '') : v), z.array(z.string().min(1).regex(/^[^\s/@]+$/, 'a host name or address, without scheme or path')))
      .default([]),
    /** Starts even when the database is behind the history's high-water mark (committed rounds were lost). */
    acceptHistoryLoss: z.boolean().default(false),
    enrolment: z.enum(ENROLMENTS).default('closed'),
    logLevel: z.enum(LOG_LEVELS).default('info'),
    /** GET /metrics requires the operator token too (when one is set); off by default, like Prometheus exporters. */
    metricsAuth: z.boolean().default(false),
    // Config-file only: tuning of the round loop that rarely needs a flag.
    waitForClientsMs: posInt.default(30_000),
    maxRoundAttempts: posInt.default(3),
    /** Cadence of the round loop: a round starts at least this long after the previous one started (0: back to
     *  back). One a minute by default (ROUND_INTERVAL_DEFAULT_MS). */
    roundIntervalMs: z.number().int().min(0).default(DEFAULT_ROUND_INTERVAL_MS),
    /** Stopping rule: training stops once the federation has committed this many training rounds (0: no limit). */
    maxRounds: z.number().int().min(0).default(0),
    /** Stopping rule: training stops when the round's training loss has not improved by more than minDelta for this
     *  many rounds in a row (0: off); Keras' EarlyStopping terms. */
    patienceRounds: z.number().int().min(0).default(0),
    minDelta: z.number().min(0).default(0.001),
    /** Model retention: the last N model versions keep their weights (0: every version is kept)... */
    keepLastModels: z.number().int().min(0).default(DEFAULT_KEEP_LAST_MODELS),
    /** ...and every version whose round is a multiple of this (0: none). */
    keepModelsEvery: z.number().int().min(0).default(DEFAULT_KEEP_MODELS_EVERY),
    /** Back-off after failed rounds (not a missed quorum): baseMs, doubling up to maxMs. */
    roundRetry: z.object({ baseMs: posInt, maxMs: posInt }).partial().strict().default({}),
    /** Abuse limits; any field left out keeps its default (DEFAULT_LIMITS). */
    limits: z
      .object({
        handshakeBurst: posInt,
        handshakeRefillPerSecond: z.number().positive(),
        authMaxFailures: posInt,
        authMaxFailuresPerClient: posInt,
        authFailureWindowMs: posInt,
        authLockoutMs: posInt,
        authMaxLockoutMs: posInt,
        forgetRequestsPerHour: posInt,
        operatorMutationsPerMinute: posInt,
        connectionsPerAddress: posInt,
        eventStreamsPerAddress: posInt,
        eventStreams: posInt,
        httpHeadersTimeoutMs: posInt,
        httpRequestTimeoutMs: posInt,
        httpKeepAliveTimeoutMs: posInt,
      })
      .partial()
      .strict()
      .default({}),
    /** Upload flow control (CoordinatorOptions.uploads); any field left out keeps its default. */
    uploads: z
      .object({
        windowBytes: posInt,
        /** 0 turns the flow control off. */
        grantAboveBytes: z.number().int().min(0),
        uploadTimeoutMs: posInt,
      })
      .partial()
      .strict()
      .default({}),
    /** How updates become one step (aggregation/robust.ts): fedavg (default), clipped-fedavg (needs clipNorm),
     *  trimmed-mean (trimFraction, default 0.1), median. */
    aggregation: z
      .object({ strategy: z.enum(AGGREGATIONS).default('fedavg'), clipNorm: z.number().positive().optional(), trimFraction: z.number().min(0).lt(0.5).optional() })
      .strict()
      .default({ strategy: 'fedavg' }),
    /** Bounds on one update (rounds/dispatcher.ts UpdateBounds); any field left out keeps its default. */
    updates: z
      .object({ maxNorm: z.number().positive(), medianFactor: z.number().min(0), maxExamples: posInt })
      .partial()
      .strict()
      .default({}),
    /** Serve HTTPS: PEM files of the certificate (chain) and key, and optionally a CA bundle. */
    tls: z.object({ cert: z.string().min(1), key: z.string().min(1), ca: z.string().min(1).optional() }).strict().optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (c.minClients !== undefined && c.minClients > c.clientsPerRound) {
      ctx.addIssue({ code: 'custom', path: ['minClients'], message: `must be at most clientsPerRound (${c.clientsPerRound}), got ${c.minClients}` });
    }
    const l = c.limits;
    if (l.authLockoutMs !== undefined && l.authMaxLockoutMs !== undefined && l.authMaxLockoutMs < l.authLockoutMs) {
      ctx.addIssue({ code: 'custom', path: ['limits', 'authMaxLockoutMs'], message: `must be at least authLockoutMs (${l.authLockoutMs})` });
    }
    // Node refuses a header deadline beyond the request deadline; the defaults fill what is left out.
    const headersMs = l.httpHeadersTimeoutMs ?? DEFAULT_HTTP_TIMEOUTS.headersMs;
    const requestMs = l.httpRequestTimeoutMs ?? DEFAULT_HTTP_TIMEOUTS.requestMs;
    if (headersMs > requestMs) {
      ctx.addIssue({ code: 'custom', path: ['limits', 'httpRequestTimeoutMs'], message: `must be at least httpHeadersTimeoutMs (${headersMs})` });
    }
    if (c.insecureNoAuth && c.operatorToken !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['insecureNoAuth'], message: 'cannot be combined with operatorToken: choose a token or no authentication' });
    }
    const rr = c.roundRetry;
    if (rr.baseMs !== undefined && rr.maxMs !== undefined && rr.maxMs < rr.baseMs) {
      ctx.addIssue({ code: 'custom', path: ['roundRetry', 'maxMs'], message: `must be at least baseMs (${rr.baseMs})` });
    }
    // A client's request must be able to run on the history this service keeps (the engine refuses it otherwise).
    if (c.clientForgetMethod === 'fedrecover' && (c.historyInterval !== 1 || c.retention === 'norms')) {
      ctx.addIssue({ code: 'custom', path: ['clientForgetMethod'], message: "fedrecover needs every round's full updates: historyInterval 1 and a retention other than norms" });
    }
    if (c.clientForgetMethod === 'replay' && c.retention === 'norms') {
      ctx.addIssue({ code: 'custom', path: ['clientForgetMethod'], message: "replay re-applies stored updates, and retention 'norms' keeps none" });
    }
    if (c.aggregation.strategy === 'clipped-fedavg' && c.aggregation.clipNorm === undefined) {
      ctx.addIssue({ code: 'custom', path: ['aggregation', 'clipNorm'], message: 'clipped-fedavg needs the norm updates are clipped to' });
    }
    if ((c.store === undefined) !== (c.redis === undefined)) {
      ctx.addIssue({ code: 'custom', path: [c.store === undefined ? 'store' : 'redis'], message: 'a cluster needs both store (postgres://…) and redis (redis://…); give neither for one process on the embedded store' });
    }
    if (c.store !== undefined && (c.aggregation.strategy === 'median' || c.aggregation.strategy === 'trimmed-mean')) {
      ctx.addIssue({ code: 'custom', path: ['aggregation', 'strategy'], message: `${c.aggregation.strategy} cannot run on several replicas (its partial aggregates do not merge): use fedavg or clipped-fedavg, or one process on the embedded store` });
    }
    if (c.model === 'cnn' && c.inputShape.length !== 3) {
      ctx.addIssue({ code: 'custom', path: ['inputShape'], message: `cnn needs an image shape height,width,channels, got ${c.inputShape.join(',')}` });
    }
  })
  .transform((c) => ({ ...c, minClients: c.minClients ?? Math.min(DEFAULT_MIN_CLIENTS, c.clientsPerRound) }));

export type ServiceConfig = z.output<typeof serviceConfigSchema>;
/** What a config file or the flags may give: any subset of the fields, before defaults and validation. */
export type ServiceConfigInput = Partial<z.input<typeof serviceConfigSchema>>;

/** A configuration that cannot be used; `issues` holds one `field: problem` line each. */
export class ConfigError extends Error {
  override name = 'ConfigError';
  constructor(readonly issues: string[]) {
    super(issues.length === 1 ? `invalid configuration: ${issues[0]}` : `invalid configuration:\n  ${issues.join('\n  ')}`);
  }
}

/**
 * Defaults, then the config file, then `overrides` (the flags): undefined overrides are ignored, so that a flag the
 * operator did not give leaves the file's value in place. Throws ConfigError naming every bad field.
 */
export function loadConfig(opts: { file?: string | undefined; overrides: ServiceConfigInput }): ServiceConfig {
  const fromFile = opts.file ? readConfigFile(opts.file) : {};
  const merged: Record<string, unknown> = { ...fromFile };
  for (const [k, v] of Object.entries(opts.overrides)) if (v !== undefined) merged[k] = v;
  const r = serviceConfigSchema.safeParse(merged, { reportInput: true });
  if (!r.success) throw new ConfigError(r.error.issues.map(describeIssue));
  return r.data;
}

/** Reads a .yaml/.yml/.json file into an object; a relative `data` in it is taken relative to the file. */
export function readConfigFile(file: string): Record<string, unknown> {
  const ext = extname(file).toLowerCase();
  if (ext !== '.yaml' && ext !== '.yml' && ext !== '.json') throw new ConfigError([`config: ${file}: expected a .yaml, .yml or .json file`]);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError([`config: cannot read ${file}: ${(e as Error).message}`]);
  }
  let doc: unknown;
  try {
    doc = ext === '.json' ? JSON.parse(text) : parseYaml(text);
  } catch (e) {
    throw new ConfigError([`config: ${file} is not valid ${ext === '.json' ? 'JSON' : 'YAML'}: ${(e as Error).message}`]);
  }
  // An empty YAML file is a config that sets nothing.
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError([`config: ${file} must hold an object of settings`]);
  const out = { ...(doc as Record<string, unknown>) };
  // A service's config file is often read from another working directory (a unit file, a container), so a data
  // directory written next to it means next to it.
  if (typeof out.data === 'string' && !isAbsolute(out.data)) out.data = resolve(dirname(resolve(file)), out.data);
  // So are certificate files.
  if (out.tls && typeof out.tls === 'object' && !Array.isArray(out.tls)) {
    const tls = { ...(out.tls as Record<string, unknown>) };
    for (const k of ['cert', 'key', 'ca']) {
      const v = tls[k];
      if (typeof v === 'string' && v !== '' && !isAbsolute(v)) tls[k] = resolve(dirname(resolve(file)), v);
    }
    out.tls = tls;
  }
  return out;
}

/** Values an error message must not echo: it ends up in terminals and service logs. */
const SECRET_FIELDS = new Set(['operatorToken']);

function describeIssue(issue: z.core.$ZodIssue): string {
  const field = issue.path.length > 0 ? issue.path.map(String).join('.') : 'config';
  const shown = 'input' in issue && issue.input !== undefined && !SECRET_FIELDS.has(String(issue.path[0]));
  const got = shown ? `, got ${JSON.stringify(issue.input)}` : '';
  switch (issue.code) {
    case 'invalid_value':
      return `${field}: expected one of ${issue.values.map(String).join('|')}${got}`;
    case 'unrecognized_keys':
      return `${field}: unknown field${issue.keys.length > 1 ? 's' : ''} ${issue.keys.join(', ')} (allowed: ${allowedKeys(issue.path).join(', ')})`;
    case 'invalid_type':
      return `${field}: expected ${issue.expected}${got}`;
    case 'too_small':
      if ((issue.origin === 'array' || issue.origin === 'string') && Number(issue.minimum) === 1) return `${field}: must not be empty`;
      if (issue.origin === 'string') return `${field}: must be at least ${String(issue.minimum)} characters long${got}`;
      return `${field}: must be ${issue.inclusive ? '>=' : '>'} ${String(issue.minimum)}${got}`;
    case 'too_big':
      return `${field}: must be ${issue.inclusive ? '<=' : '<'} ${String(issue.maximum)}${got}`;
    default:
      return `${field}: ${issue.message}`;
  }
}

/** The field names allowed in the (nested) section of the config at `path`: the top level for []. */
function allowedKeys(path: readonly PropertyKey[]): string[] {
  let schema: z.ZodType = serviceConfigSchema.in;
  for (const key of path) {
    const inner = unwrap(schema);
    const shape = (inner as { shape?: Record<string, z.ZodType> }).shape;
    if (!shape || !(String(key) in shape)) return [];
    schema = shape[String(key)]!;
  }
  return Object.keys((unwrap(schema) as { shape?: Record<string, unknown> }).shape ?? {});
}

/** The object schema under .default()/.optional()/.partial() wrappers. */
function unwrap(schema: z.ZodType): z.ZodType {
  let s = schema as z.ZodType & { unwrap?: () => z.ZodType };
  while (typeof s.unwrap === 'function') s = s.unwrap() as typeof s;
  return s;
}

/** The built-in architecture a config asks for, as `builtInDefinition(name, options)` takes it. */
export function modelOf(cfg: ServiceConfig): { name: ArchitectureName; options: ArchitectureOptions } {
  return { name: cfg.model, options: { inputShape: [...cfg.inputShape], numClasses: cfg.classes, seed: cfg.seed } };
}

/** Everything of CoordinatorOptions a config decides; the caller adds the store, the model and the logger. */
export type ConfiguredCoordinatorOptions = Required<
  Pick<CoordinatorOptions, 'dataDir' | 'federation' | 'historyInterval' | 'retention' | 'modelsAfterForget' | 'jobs' | 'clientForgetMethod' | 'enrolment' | 'roundIntervalMs' | 'metricsAuth' | 'uploads' | 'strategy' | 'updateBounds' | 'stopping' | 'modelRetention'>
> &
  Pick<CoordinatorOptions, 'operatorToken' | 'tls'> & {
    limits: Partial<SecurityLimits>;
    operatorAuth: 'token' | 'none';
    allowedHosts: string[];
    roundRetry: NonNullable<CoordinatorOptions['roundRetry']>;
  };

export function coordinatorOptionsOf(cfg: ServiceConfig): ConfiguredCoordinatorOptions {
  return {
    dataDir: resolve(cfg.data),
    federation: {
      clientsPerRound: cfg.clientsPerRound,
      minClients: cfg.minClients,
      roundDeadlineMs: cfg.roundDeadlineMs,
      seed: cfg.seed,
      hyper: { learningRate: cfg.lr, batchSize: cfg.batchSize, localEpochs: cfg.localEpochs },
      maxRoundAttempts: cfg.maxRoundAttempts,
      waitForClientsMs: cfg.waitForClientsMs,
    },
    historyInterval: cfg.historyInterval,
    retention: cfg.retention,
    modelsAfterForget: cfg.modelsAfterForget,
    jobs: { waitMs: cfg.jobWaitForClientsMs, policy: cfg.jobOfflinePolicy },
    clientForgetMethod: cfg.clientForgetMethod,
    enrolment: cfg.enrolment,
    roundIntervalMs: cfg.roundIntervalMs,
    stopping: { maxRounds: cfg.maxRounds, patienceRounds: cfg.patienceRounds, minDelta: cfg.minDelta },
    modelRetention: { keepLast: cfg.keepLastModels, keepEvery: cfg.keepModelsEvery },
    metricsAuth: cfg.metricsAuth,
    operatorAuth: cfg.insecureNoAuth ? 'none' : 'token',
    allowedHosts: cfg.allowedHosts,
    roundRetry: Object.fromEntries(Object.entries(cfg.roundRetry).filter(([, v]) => v !== undefined)),
    limits: Object.fromEntries(Object.entries(cfg.limits).filter(([, v]) => v !== undefined)) as Partial<SecurityLimits>,
    uploads: Object.fromEntries(Object.entries(cfg.uploads).filter(([, v]) => v !== undefined)),
    strategy: strategyOf(cfg.aggregation),
    updateBounds: Object.fromEntries(Object.entries(cfg.updates).filter(([, v]) => v !== undefined)),
    ...(cfg.operatorToken ? { operatorToken: cfg.operatorToken } : {}),
    ...(cfg.tls ? { tls: readTls(cfg.tls) } : {}),
  };
}

/** Reads the certificate files a config names; a file that cannot be read is a ConfigError naming the field. */
export function readTls(tls: { cert: string; key: string; ca?: string | undefined }): NonNullable<CoordinatorOptions['tls']> {
  const read = (field: 'cert' | 'key' | 'ca', file: string) => {
    try {
      return readFileSync(file, 'utf8');
    } catch (e) {
      throw new ConfigError([`tls.${field}: cannot read ${file}: ${(e as Error).message}`]);
    }
  };
  return { cert: read('cert', tls.cert), key: read('key', tls.key), ...(tls.ca ? { ca: read('ca', tls.ca) } : {}) };
}
