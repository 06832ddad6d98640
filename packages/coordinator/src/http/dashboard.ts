import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Coordinator } from '../coordinator.js';
import type { JobRecord } from '../history/store.js';
import type { RoundOutcome } from '../rounds/round-engine.js';
import type { ClientSession } from '../transport/session.js';
import { isOperator } from './operator-token.js';
import { DASHBOARD_CSP } from './request-guard.js';
import { routeSchema } from './schemas.js';
import type { StreamSlots } from './stream-slots.js';

export interface DashboardOptions {
  coord: Coordinator;
  /** null: the operator opened the API on purpose (--insecure-no-auth). */
  operatorToken: string | null;
  /** Interval of the keep-alive comments on the event stream (proxies drop idle connections). */
  keepAliveMs?: number;
  /** Bounds on open event streams, per remote address and in total (limits.eventStreamsPerAddress, eventStreams). */
  eventStreams: StreamSlots;
}

/** Files the dashboard serves, by URL name: nothing else on disk is reachable (no path is built from the URL). */
function assetTable(): Map<string, { path: string; type: string }> {
  // The assets ship beside dist/ in the package: dist/http/dashboard.js -> ../../dashboard/.
  const dir = fileURLToPath(new URL('../../dashboard/', import.meta.url));
  // chart.js does not export its UMD file, so locate it next to the entry point it does export.
  const chartDir = dirname(createRequire(import.meta.url).resolve('chart.js'));
  return new Map([
    ['', { path: join(dir, 'index.html'), type: 'text/html; charset=utf-8' }],
    ['index.html', { path: join(dir, 'index.html'), type: 'text/html; charset=utf-8' }],
    ['app.js', { path: join(dir, 'app.js'), type: 'text/javascript; charset=utf-8' }],
    ['style.css', { path: join(dir, 'style.css'), type: 'text/css; charset=utf-8' }],
    ['favicon.svg', { path: join(dir, 'favicon.svg'), type: 'image/svg+xml' }],
    ['vendor/chart.umd.js', { path: join(chartDir, 'chart.umd.js'), type: 'text/javascript; charset=utf-8' }],
  ]);
}

/** The summary of a round the page charts and lists (the same shape as a row built from GET /v1/rounds). */
export interface RoundSummary {
  round: number;
  roundId: string;
  lineage: string;
  modelAfter: string;
  participants: string[];
  missing: string[];
  metrics: Record<string, number>;
  durationMs: number;
}

export function roundSummary(r: RoundOutcome): RoundSummary {
  return {
    round: r.round,
    roundId: r.roundId,
    lineage: r.model.lineage,
    modelAfter: r.model.version,
    participants: r.participants,
    missing: r.missing.map((m) => m.clientId),
    metrics: r.metrics,
    durationMs: r.durationMs,
  };
}

function jobEvent(job: JobRecord): Record<string, unknown> {
  const { checkpoint: _internal, ...rest } = job;
  return { ...rest, report: job.state === 'done' ? job.report : null };
}

/**
 * The operator dashboard: static pages under /dashboard/ and a live stream of what the coordinator does at
 * GET /v1/events (server-sent events; the operator token guards it like every /v1 route). The page reads the stream
 * with fetch, since EventSource cannot send an Authorization header.
 */
export async function dashboardPlugin(app: FastifyInstance, opts: DashboardOptions): Promise<void> {
  const { coord } = opts;
  const assets = assetTable();
  const keepAliveMs = opts.keepAliveMs ?? 15_000;
  const streams = new Set<FastifyReply>();
  let closing = false;

  const page = (summary: string) =>
    routeSchema({ summary, tags: ['dashboard'], operator: false, ok: { 200: { description: 'a page or asset of the dashboard' }, 302: { description: 'to /dashboard/' } }, errors: { 404: 'no such file' } });
  app.get('/', { schema: page('Redirects to the dashboard') }, async (_req, reply) => reply.redirect('/dashboard/'));
  app.get('/dashboard', { schema: page('Redirects to the dashboard') }, async (_req, reply) => reply.redirect('/dashboard/'));
  app.get('/dashboard/*', { schema: page('The dashboard page and its assets (no build step; the page asks for the operator token)') }, async (req, reply) => {
    const name = (req.params as { '*': string })['*'];
    const asset = assets.get(name);
    if (!asset) return reply.code(404).send({ error: { code: 'NOT_FOUND', message: `no dashboard file ${name}` } });
    const body = await readFile(asset.path);
    // The page runs only its own files (no inline script or style) and is never framed (clickjacking of the forms).
    return reply
      .header('content-type', asset.type)
      .header('cache-control', 'no-cache')
      .header('content-security-policy', DASHBOARD_CSP)
      .header('x-frame-options', 'DENY')
      .header('referrer-policy', 'no-referrer')
      .send(body);
  });

  // No implicit HEAD route: it would open a stream that never sends a body.
  const eventsSchema = routeSchema({
    summary: 'Live event stream (server-sent events)',
    description: 'text/event-stream: `snapshot` first, then `round`, `job` (with the report when done), `clients` and `model` events; a keep-alive comment every 15 s.',
    tags: ['dashboard'],
    operator: true,
    ok: { 200: { description: 'an endless event stream', content: { 'text/event-stream': { schema: { type: 'string' } } } } },
    errors: { 429: 'too many event streams open, from this address or in total (RATE_LIMITED, naming the limit)', 503: 'the coordinator is stopping' },
  });
  app.get('/v1/events', { exposeHeadRoute: false, schema: eventsSchema }, async (req, reply) => {
    if (!isOperator(req.headers.authorization, opts.operatorToken)) return reply.code(401).send({ error: { code: 'UNAUTHENTICATED', message: 'operator token required' } });
    if (closing) return reply.code(503).send({ error: { code: 'UNAVAILABLE', message: 'the coordinator is stopping' } });
    // Each stream holds a socket, five listeners and a timer for as long as its client stays: bounded per address
    // and in total, so that a peer opening streams in a loop cannot exhaust the coordinator.
    const slot = opts.eventStreams.acquire(req.ip);
    if ('refused' in slot) return reply.code(429).send({ error: { code: 'RATE_LIMITED', message: slot.refused.message } });
    // Given back when the client is gone, however the stream ends (client closed, network lost, coordinator stopping).
    reply.raw.once('close', slot.release);
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    // Events whose data is read from the store are written in the order they happened: every event goes through one
    // queue per stream, its data awaited there (a store read never lets a later event overtake an earlier one).
    let queue: Promise<void> = Promise.resolve();
    const send = (event: string, data: unknown | (() => Promise<unknown>)) => {
      queue = queue
        .then(async () => {
          const value = typeof data === 'function' ? await (data as () => Promise<unknown>)() : data;
          if (!raw.writableEnded) raw.write(`event: ${event}\ndata: ${JSON.stringify(value)}\n\n`);
        })
        .catch((e: unknown) => app.log.warn({ err: e, event }, 'an event stream could not read its data'));
    };
    const clients = async () => {
      // On a cluster: every replica's clients (presence), the whole federation.
      const ids = (coord.cluster ? await coord.cluster.presence.connected() : coord.registry.connected().map((s) => s.clientId)).sort();
      // A forgotten client may still be connected; it takes no part in training any more.
      const forgotten = await Promise.all(ids.map((id) => coord.isForgotten(id)));
      return { count: ids.length, ids, forgotten: ids.filter((_, i) => forgotten[i]) };
    };
    const head = () => coord.store.head();
    const onRound = (r: RoundOutcome) => {
      send('round', roundSummary(r));
      send('model', head);
      // Other replicas' clients come and go unheard here: a cluster's list is refreshed with every round.
      if (coord.cluster) send('clients', clients);
    };
    const onJob = (job: JobRecord) => {
      send('job', jobEvent(job));
      if (job.state === 'done') {
        send('model', head);
        send('clients', clients);
      }
    };
    const onClients = (_s: ClientSession) => send('clients', clients);
    coord.on('round', onRound);
    coord.on('job', onJob);
    coord.on('jobProgress', onJob);
    coord.registry.on('joined', onClients);
    coord.registry.on('left', onClients);
    const keepAlive = setInterval(() => {
      if (!raw.writableEnded) raw.write(`: keep-alive ${Date.now()}\n\n`);
    }, keepAliveMs);
    streams.add(reply);
    const cleanup = () => {
      clearInterval(keepAlive);
      coord.off('round', onRound);
      coord.off('job', onJob);
      coord.off('jobProgress', onJob);
      coord.registry.off('joined', onClients);
      coord.registry.off('left', onClients);
      streams.delete(reply);
    };
    raw.on('close', cleanup);
    // A reconnecting page reloads everything from the JSON API when this arrives, so no event is lost in between.
    send('snapshot', async () => ({ head: await coord.store.head(), clients: await clients(), serverTime: Date.now() }));
  });

  // Open streams would keep the HTTP server from closing (socket.io closes it before fastify does): end them first.
  const endAll = () => {
    closing = true;
    for (const s of streams) s.raw.end();
  };
  coord.on('stopping', endAll);
  app.addHook('preClose', async () => {
    coord.off('stopping', endAll);
    endAll();
  });
}

export default dashboardPlugin;
