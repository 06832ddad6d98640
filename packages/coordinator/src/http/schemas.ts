import { CLIENT_ID_PATTERN } from '../transport/client-id.js';
import { METHOD_NAMES } from '../unlearning/method.js';

/**
 * JSON schemas of the operator API: fastify validates requests and serialises responses with them, and
 * @fastify/swagger turns them into the OpenAPI document. Response objects all allow additional properties: fastify's
 * serialiser drops any property a schema does not list, so a field added to a record later would otherwise vanish
 * from the API without an error.
 */

export const OPERATOR_SECURITY = 'operatorToken';

const open = { additionalProperties: true } as const;
const int = { type: 'integer' } as const;
const num = { type: 'number' } as const;
const str = { type: 'string' } as const;
const bool = { type: 'boolean' } as const;
/** Unix milliseconds. */
const ms = { type: 'integer', description: 'Unix time, milliseconds' } as const;
const numberMap = { type: 'object', additionalProperties: num } as const;

export const errorSchema = {
  $id: 'Error',
  type: 'object',
  description: 'Every error: a stable machine code (ErrorCode name or HTTP-level code) and a human message.',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: { code: { type: 'string', examples: ['INVALID_ARGUMENT', 'NOT_FOUND', 'UNAUTHENTICATED'] }, message: str },
    },
  },
} as const;

const modelVersion = {
  type: 'object',
  ...open,
  required: ['version', 'cause', 'round', 'lineage', 'sha256', 'createdAt'],
  properties: {
    version: str,
    parent: { type: ['string', 'null'] },
    cause: { type: 'string', enum: ['init', 'round', 'unlearning'] },
    round: int,
    jobId: { type: ['string', 'null'] },
    lineage: str,
    sha256: { type: 'string', description: 'sha256 of the float32 little-endian weights, hex' },
    createdAt: ms,
    erasedAt: { type: ['integer', 'null'], description: 'unix ms at which the weights were erased because a forgotten client had contributed to them; null while kept' },
    prunedAt: { type: ['integer', 'null'], description: 'unix ms at which the model retention policy deleted the weights (the record stays); null while kept' },
  },
} as const;

const participant = {
  type: 'object',
  ...open,
  properties: {
    clientId: str,
    numExamples: int,
    norms: { type: 'array', items: num, description: 'per-layer L2 norms of the update' },
    metrics: numberMap,
    hasUpdate: bool,
  },
} as const;

const round = {
  type: 'object',
  ...open,
  required: ['round', 'roundId', 'lineage', 'participants'],
  properties: {
    round: int,
    roundId: str,
    lineage: str,
    modelBefore: str,
    modelAfter: str,
    participants: { type: 'array', items: participant },
    updatesStored: bool,
    metrics: numberMap,
    startedAt: ms,
    closedAt: ms,
  },
} as const;

const job = {
  type: 'object',
  ...open,
  required: ['jobId', 'state', 'clientIds', 'method'],
  properties: {
    jobId: str,
    kind: str,
    state: { type: 'string', enum: ['queued', 'running', 'done', 'failed'] },
    clientIds: { type: 'array', items: str },
    requestedBy: { type: 'string', description: "'operator' or 'client:<id>'" },
    method: { type: 'string', enum: [...METHOD_NAMES] },
    params: { type: 'object', ...open },
    progress: {
      type: 'object',
      ...open,
      properties: {
        step: int,
        total: int,
        message: str,
        waiting: {
          type: 'object',
          ...open,
          description: 'present while a replay step waits for its offline clients (bounded by jobWaitForClientsMs over the job; then jobOfflinePolicy applies)',
          properties: {
            clientIds: { type: 'array', items: str, description: 'clients of the step not connected (at most 50)' },
            missing: int,
            connected: int,
            of: int,
            needed: { type: 'integer', description: 'the step starts once this many of its clients are connected' },
            since: ms,
            until: { type: 'integer', description: 'unix ms at which the wait ends and the offline policy applies' },
            policy: { type: 'string', enum: ['fail', 'server-side'] },
          },
        },
      },
    },
    report: { type: ['object', 'null'], ...open, description: 'the certificate, once done (also at /v1/jobs/{id}/report)' },
    error: { type: ['string', 'null'] },
    createdAt: ms,
    updatedAt: ms,
  },
} as const;

const client = {
  type: 'object',
  ...open,
  required: ['clientId', 'connected'],
  properties: {
    clientId: str,
    numExamples: int,
    firstSeen: { type: 'integer', description: 'Unix ms of its first connection; 0 if it never connected' },
    lastSeen: { type: 'integer', description: 'Unix ms of its latest connection; 0 if it never connected' },
    forgotten: bool,
    connected: bool,
    backend: { type: ['string', 'null'], description: 'TensorFlow.js backend of the live session' },
  },
} as const;

const credential = {
  type: 'object',
  required: ['clientId', 'secret'],
  properties: { clientId: str, secret: { type: 'string', description: '256 random bits, base64url; give it to the device, it is not stored' } },
} as const;

const historyStats = {
  type: 'object',
  ...open,
  properties: {
    modelBytes: int,
    updateBytes: int,
    updateBytesByDtype: { type: 'object', additionalProperties: int },
    updates: int,
    rounds: int,
    models: { type: 'integer', description: 'model versions recorded, erased ones included' },
    modelsErased: int,
    modelsPruned: { type: 'integer', description: 'model versions whose weights the retention policy pruned' },
  },
} as const;

const health = {
  type: 'object',
  required: ['ok', 'status'],
  properties: {
    ok: bool,
    status: { type: 'string', enum: ['ok', 'degraded', 'unavailable'] },
    reason: { type: 'string', description: 'degraded: why the last round attempt failed (the reason label of fedunlearn_rounds_failed_total): disk_full, store, invalid_model, internal; unavailable (a replica of a cluster that takes no work): postgres or redis' },
    message: str,
    consecutiveFailures: { type: 'integer', description: 'failed round attempts since the last commit' },
    since: { type: 'integer', description: 'unix ms of the first of them' },
    retryInMs: { type: 'integer', description: 'back-off before the next attempt' },
  },
} as const;

const jobReport = { type: 'object', ...open, description: 'The forget job certificate (JobReport): models before and after, rounds replayed, cost, purge summary; for sifu, `certificate` (epsilon, delta, sigma, rollback round, bound, constants, assumptions).' } as const;

type Errors = Record<number, string>;

/** A route's schema: its success responses plus the JSON error shape for each listed error status (and 401 on operator
 *  routes, 500 on all). New routes use it too, so that the OpenAPI document stays complete. */
export function routeSchema(s: {
  summary: string;
  description?: string;
  tags: string[];
  operator: boolean;
  params?: object;
  querystring?: object;
  body?: object;
  ok: Record<number, object>;
  errors?: Errors;
}): Record<string, unknown> {
  const errors: Errors = { ...s.errors, 500: 'internal error' };
  if (s.operator) errors[401] ??= 'operator token missing or wrong';
  errors[403] ??= 'the Host header is not a name the coordinator serves under (HOST_NOT_ALLOWED), or a request that changes state came from another origin (CROSS_ORIGIN)';
  if (s.body) errors[415] ??= 'the body is not application/json';
  const response: Record<string, object> = { ...s.ok };
  for (const [status, description] of Object.entries(errors)) response[status] = { description, $ref: 'Error#' };
  return {
    summary: s.summary,
    ...(s.description ? { description: s.description } : {}),
    tags: s.tags,
    ...(s.operator ? { security: [{ [OPERATOR_SECURITY]: [] }] } : {}),
    ...(s.params ? { params: s.params } : {}),
    ...(s.querystring ? { querystring: s.querystring } : {}),
    ...(s.body ? { body: s.body } : {}),
    response,
  };
}

const withDescription = <T extends object>(description: string, schema: T) => ({ description, ...schema });
const idParam = (name: string, description: string) => ({ type: 'object', required: [name], properties: { [name]: { type: 'string', minLength: 1, description } } });

export const schemas = {
  healthz: routeSchema({
    summary: 'Health probe',
    description:
      'ok (200) while rounds commit or wait for clients; degraded (503) while training rounds keep failing for a reason of the coordinator\'s own ' +
      '(a full disk, a store error, a model it cannot write), until a round commits again. A round that only lacks its quorum of clients is not a degradation.',
    tags: ['service'],
    operator: false,
    ok: {
      200: withDescription('healthy', health),
      503: withDescription('degraded: rounds keep failing; the reason of the last failure', health),
    },
  }),
  metrics: routeSchema({
    summary: 'Prometheus metrics',
    description: 'Text exposition format. Open by default like other exporters; requires the operator token only when one is configured and metricsAuth is set.',
    tags: ['service'],
    operator: false,
    ok: { 200: { description: 'Prometheus text format 0.0.4', content: { 'text/plain': { schema: { type: 'string' } } } } },
    errors: { 401: 'operator token missing or wrong (only with metricsAuth)' },
  }),
  openapi: routeSchema({
    summary: 'This OpenAPI document',
    tags: ['service'],
    operator: false,
    ok: { 200: withDescription('OpenAPI 3 document generated from the route schemas', { type: 'object', ...open }) },
  }),
  status: routeSchema({
    summary: 'Federation status',
    tags: ['federation'],
    operator: true,
    ok: {
      200: withDescription('head model, connected clients, jobs by state, uptime', {
        type: 'object',
        ...open,
        required: ['model', 'connectedClients', 'jobs', 'uptimeMs'],
        properties: {
          model: modelVersion,
          connectedClients: int,
          jobs: numberMap,
          uptimeMs: int,
          trainingStopped: { type: ['string', 'null'], description: 'why the round loop stopped training (maxRounds, patienceRounds); null while it trains. Forget jobs still run.' },
          cluster: {
            type: 'object',
            description: 'absent on a single coordinator; on a cluster: this replica, the leader (lease epoch) and every live replica with its connected clients',
            properties: {
              replicaId: str,
              isLeader: bool,
              leader: { type: ['object', 'null'], properties: { replicaId: str, epoch: int } },
              replicas: {
                type: 'array',
                items: { type: 'object', properties: { replicaId: str, url: str, startedAt: int, leading: { type: ['integer', 'null'] }, clients: { type: 'array', items: str } } },
              },
            },
          },
        },
      }),
    },
  }),
  clients: routeSchema({
    summary: 'Known clients and whether they are connected',
    tags: ['federation'],
    operator: true,
    ok: { 200: withDescription('every client the federation has seen (secrets never included)', { type: 'object', ...open, required: ['clients'], properties: { clients: { type: 'array', items: client } } }) },
  }),
  rounds: routeSchema({
    summary: 'Rounds of a lineage',
    tags: ['federation'],
    operator: true,
    querystring: { type: 'object', properties: { lineage: { type: 'string', minLength: 1, description: "default: the head's lineage" } } },
    ok: { 200: withDescription('rounds in ascending order', { type: 'object', ...open, required: ['rounds'], properties: { rounds: { type: 'array', items: round } } }) },
    errors: { 400: 'bad query' },
  }),
  round: routeSchema({
    summary: 'One round of the current lineage',
    tags: ['federation'],
    operator: true,
    params: { type: 'object', required: ['round'], properties: { round: { type: 'integer', minimum: 1, description: '1-based round number' } } },
    ok: { 200: withDescription('the round record with its participants', round) },
    errors: { 400: 'round is not a positive integer', 404: 'no such round in the current lineage' },
  }),
  models: routeSchema({
    summary: 'Model versions of every lineage',
    tags: ['federation'],
    operator: true,
    ok: { 200: withDescription('the head and every version in creation order', { type: 'object', ...open, required: ['head', 'models'], properties: { head: str, models: { type: 'array', items: modelVersion } } }) },
  }),
  model: routeSchema({
    summary: 'One model version',
    tags: ['federation'],
    operator: true,
    params: idParam('version', 'model version id'),
    ok: { 200: withDescription('the model version', modelVersion) },
    errors: { 404: 'no such model version' },
  }),
  modelWeights: routeSchema({
    summary: "A model version's weights",
    description: 'float32 little-endian, layers in layout order; the layout is in the x-fedunlearn-layout header (JSON).',
    tags: ['federation'],
    operator: true,
    params: idParam('version', 'model version id'),
    ok: {
      200: {
        description: 'raw weights',
        headers: { 'x-fedunlearn-layout': { type: 'string', description: 'JSON array of {name, shape}' } },
        content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } },
      },
    },
    errors: { 404: 'no such model version', 410: 'the weights were erased: a forgotten client had contributed to them (MODEL_ERASED); or pruned by the model retention policy (MODEL_PRUNED)' },
  }),
  historyStats: routeSchema({
    summary: 'Storage used by the history',
    tags: ['federation'],
    operator: true,
    ok: { 200: withDescription('bytes of model and update blobs, row counts', historyStats) },
  }),
  createJob: routeSchema({
    summary: 'Queue a forget job',
    description:
      'Validated and persisted at once; it runs at the next round boundary. Poll /v1/jobs/{id}. The same request again while the job is in progress answers 200 with that job.',
    tags: ['jobs'],
    operator: true,
    body: {
      type: 'object',
      required: ['clientIds'],
      additionalProperties: false,
      properties: {
        clientIds: { type: 'array', minItems: 1, maxItems: 1000, items: { type: 'string', minLength: 1, maxLength: 128 } },
        method: { type: 'string', enum: [...METHOD_NAMES], description: 'default federaser' },
        params: {
          type: 'object',
          additionalProperties: false,
          properties: {
            calibrationRatio: { type: 'number', exclusiveMinimum: 0, maximum: 10 },
            reuseFirstRound: { type: 'boolean' },
            tuneRounds: { type: 'integer', minimum: 0, maximum: 1000 },
            fullHistory: { type: 'boolean', description: 'federaser and replay: replay from the initial model over every stored round instead of from t0 (comparisons only)' },
            epsilon: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1, description: 'sifu: the unlearning budget epsilon (default 0.5)' },
            delta: { type: 'number', exclusiveMinimum: 0, exclusiveMaximum: 1, description: 'sifu: the budget delta (default 1e-5)' },
            sigma: { type: 'number', exclusiveMinimum: 0, maximum: 1e6, description: 'sifu: standard deviation of the Gaussian noise added per weight (default 0.05)' },
            lipschitz: { type: 'number', exclusiveMinimum: 0, maximum: 1e6, description: 'sifu: Lipschitz constant assumed for one round of training (default 1)' },
            smoothness: { type: 'number', exclusiveMinimum: 0, maximum: 1e6, description: 'sifu: smoothness L of the losses; the per-round constant becomes (1 + lr L)^K' },
            warmupRounds: { type: 'integer', minimum: 0, maximum: 100000, description: 'fedrecover: T_w, warm-up rounds of exact updates (default 20)' },
            correctionPeriod: { type: 'integer', minimum: 1, maximum: 100000, description: 'fedrecover: T_c, a periodic correction every T_c rounds (default 10)' },
            finalTuningRounds: { type: 'integer', minimum: 0, maximum: 100000, description: 'fedrecover: T_f, final rounds of exact updates (default 5)' },
            abnormalityThreshold: { type: 'number', exclusiveMinimum: 0, description: 'fedrecover: an estimate with a coordinate above this is replaced by the exact update (default 1)' },
            lbfgsMemory: { type: 'integer', minimum: 1, maximum: 64, description: 'fedrecover: L-BFGS pairs kept per client (default 2)' },
          },
        },
      },
    },
    ok: { 202: withDescription('the queued job', job), 200: withDescription('the job in progress this identical request already started (no second job)', job) },
    errors: {
      400: 'invalid body or a client already forgotten',
      404: 'unknown client',
      409: 'JOB_CONFLICT: a job in progress covers some of these clients with another method, parameters or client set',
      422: 'FORGET_REFUSED: it would forget every client, or every client that took part, or the method cannot run on this history; nothing changed',
      429: 'too many operator mutations this minute',
    },
  }),
  issueClient: routeSchema({
    summary: 'Issue a client credential',
    description: 'Enrols a client and returns its secret once: only a hash is stored, so it cannot be shown again. The id is generated when absent.',
    tags: ['clients'],
    operator: true,
    body: { type: 'object', additionalProperties: false, properties: { clientId: { type: 'string', pattern: CLIENT_ID_PATTERN } } },
    ok: { 201: withDescription('the credential, shown this once', credential) },
    errors: { 400: 'invalid client id', 409: 'the client already exists', 429: 'too many operator mutations this minute' },
  }),
  revokeClient: routeSchema({
    summary: "Revoke a client's credential",
    description: 'Its live session is closed and later hellos are refused; its history stays until it is forgotten.',
    tags: ['clients'],
    operator: true,
    params: idParam('id', 'client id'),
    ok: { 204: { description: 'revoked' } },
    errors: { 404: 'unknown client', 429: 'too many operator mutations this minute' },
  }),
  rotateSecret: routeSchema({
    summary: "Rotate a client's secret",
    description: 'Issues a new secret (shown once), voids the old one, closes the live session and lifts a revocation.',
    tags: ['clients'],
    operator: true,
    params: idParam('id', 'client id'),
    ok: { 200: withDescription('the new credential, shown this once', credential) },
    errors: { 404: 'unknown client', 409: 'the client was forgotten', 429: 'too many operator mutations this minute' },
  }),
  jobs: routeSchema({
    summary: 'Forget jobs',
    tags: ['jobs'],
    operator: true,
    ok: { 200: withDescription('jobs in creation order', { type: 'object', ...open, required: ['jobs'], properties: { jobs: { type: 'array', items: job } } }) },
  }),
  job: routeSchema({
    summary: 'One forget job',
    tags: ['jobs'],
    operator: true,
    params: idParam('id', 'job id'),
    ok: { 200: withDescription('the job with its progress', job) },
    errors: { 404: 'no such job' },
  }),
  jobReport: routeSchema({
    summary: "A finished job's certificate",
    tags: ['jobs'],
    operator: true,
    params: idParam('id', 'job id'),
    ok: { 200: withDescription('the report', jobReport) },
    errors: { 404: 'no such job', 409: 'the job is not done yet' },
  }),
} as const;

export const openapiInfo = {
  openapi: '3.0.3',
  info: {
    title: 'fedunlearn coordinator operator API',
    description: 'Federated training with client-level unlearning: federation state, model versions, forget jobs.',
    version: '1',
  },
  tags: [
    { name: 'service', description: 'health, metrics and this document (no operator token)' },
    { name: 'federation', description: 'models, rounds, clients, history' },
    { name: 'jobs', description: 'forget jobs and their certificates' },
  ],
  components: {
    securitySchemes: {
      [OPERATOR_SECURITY]: { type: 'http' as const, scheme: 'bearer', description: 'the operator token: --operator-token, or the one `serve` keeps in <data>/operator-token (routes are open only under --insecure-no-auth)' },
    },
  },
};
