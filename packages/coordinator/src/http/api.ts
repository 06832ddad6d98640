import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { ProtocolError } from '@fedunlearn/protocol';
import type { Coordinator } from '../coordinator.js';
import { ModelErasedError, ModelPrunedError, type JobRecord } from '../history/store.js';
import type { MethodName, MethodParams } from '../unlearning/method.js';
import { isOperator } from './operator-token.js';
import { checkRequest, HostPolicy } from './request-guard.js';
import { errorSchema, openapiInfo, schemas } from './schemas.js';
import type { StreamSlots } from './stream-slots.js';

/** PEM contents of the server's certificate chain and key (and a CA bundle to send along). */
export interface TlsFiles {
  cert: string | Buffer;
  key: string | Buffer;
  ca?: string | Buffer;
}

export interface HttpApiOptions {
  /** Bearer token operator routes require; null opens them (only ever on the operator's explicit request). */
  operatorToken: string | null;
  /** The Host names the API answers to (the coordinator adds the address it listens on). */
  hosts: HostPolicy;
  /** GET /metrics requires the operator token too (when one is set); default open, as Prometheus exporters are. */
  metricsAuth?: boolean;
  /** Mutating operator requests per remote address per minute. */
  operatorMutationsPerMinute?: number;
  /** Serve HTTPS (the clients' socket.io endpoint shares the server). */
  tls?: TlsFiles;
  /** Bounds on open event streams (GET /v1/events), per remote address and in total. */
  eventStreams: StreamSlots;
  /** How long a peer may take to send a request; default DEFAULT_HTTP_TIMEOUTS. */
  timeouts?: Partial<HttpTimeouts>;
}

/**
 * How long the HTTP server waits on a peer, in milliseconds. Node checks the header and request deadlines on a timer
 * (connectionsCheckingInterval, 30 s by default), so the server checks every quarter of the header timeout (at most
 * every second) to make the bound close to what is configured.
 */
export interface HttpTimeouts {
  /** From a request's first byte to the end of its headers: a peer sending headers byte by byte (slowloris) is
   *  answered 408 and disconnected after this. */
  headersMs: number;
  /** From a request's first byte to the end of its body: a body never finished is cut after this. At least headersMs.
   *  It bounds receiving the request only: an answer that streams (GET /v1/events) is not cut by it. */
  requestMs: number;
  /** How long an idle keep-alive connection stays open between requests; above the 60 s idle timeout of common
   *  load balancers, so that they close first and never send on a socket the server is closing. */
  keepAliveMs: number;
}

/**
 * Sized for operators and scrapers on slow links, not for peers that stall on purpose. No idle timeout on the socket
 * itself (fastify's connectionTimeout stays 0): an event stream and a client's socket.io connection stay quiet between
 * events and have their own keep-alives (15 s comments, 5 s heartbeats). Bodies are capped at 1 MiB (bodyLimit): the
 * largest operator request is a forget job naming a few thousand clients.
 */
export const DEFAULT_HTTP_TIMEOUTS: Readonly<HttpTimeouts> = { headersMs: 10_000, requestMs: 30_000, keepAliveMs: 65_000 };

/** Largest request body the operator API reads (bytes); a larger one is refused 413 before it is buffered. */
export const HTTP_BODY_LIMIT_BYTES = 1024 * 1024;

/** HTTP status of a ProtocolError by code name; the others are 400. */
const PROTOCOL_ERROR_STATUS: Record<string, number> = { UNKNOWN_CLIENT: 404, JOB_CONFLICT: 409, FORGET_REFUSED: 422 };

/** Where the API serves its OpenAPI document. */
export const OPENAPI_PATH = '/v1/openapi.json';

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The operator API, versioned under /v1; the clients' socket.io endpoint shares its HTTP server. */
export function buildHttpApi(coord: Coordinator, opts: HttpApiOptions): FastifyInstance {
  // With TLS fastify's instance is typed over https.Server; routes and hooks are the same, socket.io takes either.
  // maxParamLength: a client id may be 128 characters, three times that percent-encoded; fastify's default of 100
  // refused the longest ids in every route that names one (414), though POST /v1/clients issued them.
  const t = { ...DEFAULT_HTTP_TIMEOUTS, ...opts.timeouts };
  if (t.headersMs > t.requestMs) throw new RangeError(`the HTTP header timeout (${t.headersMs} ms) must be at most the request timeout (${t.requestMs} ms)`);
  // Node reads these at server creation (the checking timer) and validates headersTimeout <= requestTimeout there.
  const nodeTimeouts = { headersTimeout: t.headersMs, requestTimeout: t.requestMs, connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(t.headersMs / 4))) };
  const base = {
    logger: false,
    bodyLimit: HTTP_BODY_LIMIT_BYTES,
    requestTimeout: t.requestMs,
    keepAliveTimeout: t.keepAliveMs,
    connectionTimeout: 0,
    routerOptions: { maxParamLength: 512 },
  } as const;
  const app = (opts.tls
    ? Fastify({ ...base, https: { ...nodeTimeouts, cert: opts.tls.cert, key: opts.tls.key, ...(opts.tls.ca ? { ca: opts.tls.ca } : {}) } })
    : Fastify({ ...base, http: nodeTimeouts })) as unknown as FastifyInstance;
  const log = coord.log.child({ component: 'http' });
  // Registered before any route, so that its onRoute hook sees them all; the document is built from their schemas.
  void app.register(swagger, {
    openapi: openapiInfo,
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
  });
  app.addSchema(errorSchema);
  // One line per request at debug, without headers: the operator token travels in one.
  app.addHook('onResponse', async (req, reply) => {
    log.debug({ method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10 }, 'http request');
  });
  // Only routes that ask for it (config.rateLimit) are limited: the mutating ones.
  void app.register(rateLimit, {
    global: false,
    errorResponseBuilder: (_req, ctx) => ({ statusCode: 429, code: 'RATE_LIMITED', message: `too many requests; retry in ${Math.ceil(ctx.ttl / 1000)} s` }),
  });
  const mutation = { rateLimit: { max: opts.operatorMutationsPerMinute ?? 60, timeWindow: 60_000 } };

  app.setErrorHandler((raw: unknown, _req, reply) => {
    const err = raw as Error & { statusCode?: number; validation?: unknown; code?: string };
    if (raw instanceof ProtocolError) return reply.code(PROTOCOL_ERROR_STATUS[raw.codeName] ?? 400).send({ error: { code: raw.codeName, message: raw.message } });
    if (err instanceof HttpError) return reply.code(err.status).send({ error: { code: err.code, message: err.message } });
    if (err instanceof ModelErasedError) return reply.code(410).send({ error: { code: 'MODEL_ERASED', message: err.message } });
    if (err instanceof ModelPrunedError) return reply.code(410).send({ error: { code: 'MODEL_PRUNED', message: err.message } });
    if (err.validation) return reply.code(400).send({ error: { code: 'INVALID_ARGUMENT', message: err.message } });
    if (err instanceof RangeError) return reply.code(400).send({ error: { code: 'INVALID_ARGUMENT', message: err.message } });
    if (err.statusCode && err.statusCode < 500) return reply.code(err.statusCode).send({ error: { code: err.code ?? 'BAD_REQUEST', message: err.message } });
    coord.log.error({ err }, 'operator API error');
    return reply.code(500).send({ error: { code: 'INTERNAL', message: 'internal error' } });
  });
  // Before any route's own hooks (authentication included): a request from a rebound DNS name or a cross-site form is
  // refused whatever it carries. /healthz is exempt: probes address the pod or host by whatever name they have, and
  // it holds no federation data.
  app.addHook('onRequest', async (req, reply) => {
    if (req.url === '/healthz') return;
    const refused = checkRequest(req, opts.hosts, opts.tls !== undefined);
    if (refused) return reply.code(refused.status).send({ error: { code: refused.code, message: refused.message } });
  });
  app.addHook('onSend', async (_req, reply) => {
    reply.header('x-content-type-options', 'nosniff');
  });
  app.setNotFoundHandler((req, reply) => reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no route ${req.method} ${req.url}` } }));

  const operator = async (req: FastifyRequest, _reply: FastifyReply) => {
    if (!isOperator(req.headers.authorization, opts.operatorToken)) {
      // A token that was sent and refused is not a missing one: the operator must learn that theirs is wrong.
      throw new HttpError(401, 'UNAUTHENTICATED', req.headers.authorization ? 'operator token refused: it is not the one this coordinator was started with' : 'operator token required');
    }
  };

  // In a plugin like every route, so that swagger (registered first) sees them: routes added to the root directly
  // would be added before its hook is.
  app.register(async (service) => {
    service.get('/healthz', { schema: schemas.healthz }, async (_req, reply) => {
      const h = coord.health();
      return reply.code(h.ok ? 200 : 503).send(h);
    });

    service.get('/metrics', { schema: schemas.metrics, ...(opts.metricsAuth ? { onRequest: operator } : {}) }, async (_req, reply) => {
      const { contentType, body } = await coord.metrics.scrape();
      return reply.header('content-type', contentType).send(body);
    });

    // Outside the /v1 plugin: the document describes the API and holds no federation data, so it needs no token.
    service.get(OPENAPI_PATH, { schema: schemas.openapi }, async () => app.swagger());
  });
  app.register(import('./dashboard.js'), { coord, operatorToken: opts.operatorToken, eventStreams: opts.eventStreams });
  app.register(import('./examples.js'));

  app.register(
    async (v1) => {
      v1.addHook('onRequest', operator);

      v1.get('/status', { schema: schemas.status }, async () => {
        const head = await coord.store.head();
        const jobs = await coord.store.listJobs();
        return {
          model: head,
          // On a cluster: the whole federation's (every replica's presence); this replica's are in cluster.replicas.
          connectedClients: coord.cluster ? (await coord.cluster.presence.connected()).length : coord.registry.size,
          jobs: countBy(jobs, (j) => j.state),
          uptimeMs: Date.now() - coord.startedAt,
          trainingStopped: coord.trainingStoppedBecause(),
          // Only on a cluster: a single coordinator's status is as it always was.
          ...(coord.cluster ? { cluster: await coord.clusterStatus() } : {}),
        };
      });

      v1.get('/clients', { schema: schemas.clients }, async () => {
        const connected = new Map(coord.registry.connected().map((s) => [s.clientId, s]));
        return {
          clients: (await coord.store.listClients()).map(({ secretHash: _hidden, ...c }) => ({
            ...c,
            connected: connected.has(c.clientId),
            backend: connected.get(c.clientId)?.backend ?? null,
          })),
        };
      });

      v1.post('/clients', { schema: schemas.issueClient, config: mutation }, async (req, reply) => {
        const body = (req.body ?? {}) as { clientId?: string };
        if (body.clientId !== undefined && (await coord.store.getClient(body.clientId))) throw new HttpError(409, 'ALREADY_EXISTS', `client ${body.clientId} already exists`);
        // The only response that ever carries the secret: it is not stored, so it cannot be shown again.
        return reply.code(201).send(await coord.issueClient(body.clientId));
      });

      v1.delete('/clients/:id', { schema: schemas.revokeClient, config: mutation }, async (req, reply) => {
        const { id } = req.params as { id: string };
        await coord.revokeClient(id);
        return reply.code(204).send();
      });

      v1.post('/clients/:id/secret', { schema: schemas.rotateSecret, config: mutation }, async (req) => {
        const { id } = req.params as { id: string };
        if ((await coord.store.getClient(id))?.forgotten) throw new HttpError(409, 'FORGOTTEN', `client ${id} was forgotten; its id is not reissued`);
        return coord.rotateSecret(id);
      });

      v1.get('/rounds', { schema: schemas.rounds }, async (req) => {
        const q = req.query as { lineage?: string };
        return { rounds: await coord.store.listRounds(q.lineage ? { lineage: q.lineage } : undefined) };
      });

      v1.get('/rounds/:round', { schema: schemas.round }, async (req) => {
        const { round } = req.params as { round: number };
        const r = await coord.store.getRound(Number(round));
        if (!r) throw new HttpError(404, 'NOT_FOUND', `no round ${round} in the current lineage`);
        return r;
      });

      v1.get('/models', { schema: schemas.models }, async () => ({ head: (await coord.store.head()).version, models: await coord.store.listModels() }));

      v1.get('/models/:version', { schema: schemas.model }, async (req) => {
        const { version } = req.params as { version: string };
        const m = await coord.store.getModel(version);
        if (!m) throw new HttpError(404, 'NOT_FOUND', `no model version ${version}`);
        return m;
      });

      v1.get('/models/:version/weights', { schema: schemas.modelWeights }, async (req, reply) => {
        const { version } = req.params as { version: string };
        if (!(await coord.store.getModel(version))) throw new HttpError(404, 'NOT_FOUND', `no model version ${version}`);
        const w = await coord.store.readModel(version);
        const meta = await coord.store.meta();
        reply.header('content-type', 'application/octet-stream');
        reply.header('x-fedunlearn-layout', JSON.stringify(meta.layout.specs));
        return Buffer.from(w.buffer, w.byteOffset, w.byteLength);
      });

      v1.get('/history/stats', { schema: schemas.historyStats }, async () => coord.store.stats());

      v1.post('/jobs', { schema: schemas.createJob, config: mutation }, async (req, reply) => {
        const body = req.body as { clientIds: string[]; method?: MethodName; params?: MethodParams };
        const { job, created } = await coord.submitForget({
          clientIds: body.clientIds,
          ...(body.method ? { method: body.method } : {}),
          ...(body.params ? { params: body.params } : {}),
          requestedBy: 'operator',
        });
        // The same request again (also concurrently) answers with the job it started: 200, not a second 202.
        return reply.code(created ? 202 : 200).send(publicJob(job));
      });

      v1.get('/jobs', { schema: schemas.jobs }, async () => ({ jobs: (await coord.store.listJobs()).map(publicJob) }));

      v1.get('/jobs/:id', { schema: schemas.job }, async (req) => {
        const { id } = req.params as { id: string };
        const job = await coord.store.getJob(id);
        if (!job) throw new HttpError(404, 'NOT_FOUND', `no job ${id}`);
        return publicJob(job);
      });

      v1.get('/jobs/:id/report', { schema: schemas.jobReport }, async (req) => {
        const { id } = req.params as { id: string };
        const job = await coord.store.getJob(id);
        if (!job) throw new HttpError(404, 'NOT_FOUND', `no job ${id}`);
        if (!job.report) throw new HttpError(409, 'NOT_READY', `job ${id} is ${job.state}; its report is written when it is done`);
        return job.report;
      });
    },
    { prefix: '/v1' },
  );
  return app;
}

/** A job as operators see it: the resume checkpoint is internal. */
function publicJob(job: JobRecord): Omit<JobRecord, 'checkpoint'> {
  const { checkpoint: _internal, ...rest } = job;
  return rest;
}

function countBy<T>(items: T[], key: (t: T) => string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const i of items) out[key(i)] = (out[key(i)] ?? 0) + 1;
  return out;
}
