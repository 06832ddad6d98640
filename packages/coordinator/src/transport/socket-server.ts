import type { Server as HttpServer } from 'node:http';
import { nanoid } from 'nanoid';
import { Server, type Socket } from 'socket.io';
import {
  Channel,
  ErrorCode,
  fedunlearn,
  PROTOCOL_VERSION,
  ProtocolError,
  socketBufferBytes,
  type FramingLimits,
} from '@fedunlearn/protocol';
import type { Logger } from '../logger.js';
import type { ClientRegistry } from './client-registry.js';
import { HandshakeQueue } from './handshake-queue.js';
import type { ClientSession } from './session.js';

export interface Authenticator {
  /** Returns (or resolves) when `hello` proves the client's identity; throws (or rejects with) ProtocolError
   *  (UNAUTHENTICATED, ...) otherwise. */
  authenticate(hello: fedunlearn.v1.Hello): void | Promise<void>;
}

/** What an authenticated client may ask of the coordinator besides answering tasks. */
export interface SessionHandlers {
  update(session: ClientSession, update: fedunlearn.v1.Update, bytes: number): void;
  forgetRequest(session: ClientSession, req: fedunlearn.v1.ForgetRequest): void;
  clientError(session: ClientSession, err: fedunlearn.v1.Error): void;
}

export interface SocketServerOptions {
  framing: FramingLimits;
  helloTimeoutMs: number;
  heartbeatIntervalMs: number;
  coordinatorVersion: string;
  /** Hellos waiting for their credential check beyond the one in progress; more (or more than a hello timeout's worth
   *  of checks at their recent pace) are refused with RATE_LIMITED and retried by the SDK after a jittered back-off.
   *  Default 256. */
  maxPendingHellos?: number;
}

export interface TransportCounters {
  connections: number;
  refused: Record<string, number>;
  bytesIn: number;
  bytesOut: number;
}

/**
 * The client-facing socket.io endpoint: a connection must introduce itself with a Hello within `helloTimeoutMs`;
 * only an authenticated session reaches the registry.
 */
export class SocketServer {
  readonly io: Server;
  readonly counters: TransportCounters = { connections: 0, refused: {}, bytesIn: 0, bytesOut: 0 };
  /** Open connections' channels: their bytes join `counters` only when they close. */
  private readonly live = new Set<Channel>();
  private readonly hellos: HandshakeQueue;

  constructor(
    http: HttpServer,
    private readonly registry: ClientRegistry,
    private readonly auth: Authenticator,
    private readonly handlers: SessionHandlers,
    private readonly opts: SocketServerOptions,
    private readonly log: Logger,
  ) {
    // A hello waits at most about a hello timeout in line, so that an admitted client is welcomed well within the
    // SDK's connect timeout; the others are told to come back (RATE_LIMITED) and spread out by their back-off.
    this.hellos = new HandshakeQueue({ concurrency: 1, maxQueued: opts.maxPendingHellos ?? 256, maxWaitMs: opts.helloTimeoutMs });
    // A client that stops answering (a frozen process, a dead network) is dropped within 3 intervals: a ping is due
    // every interval and its pong within two more. The registry then forgets it and its tasks settle as missing.
    this.io = new Server(http, {
      maxHttpBufferSize: socketBufferBytes(opts.framing.chunkBytes),
      pingInterval: opts.heartbeatIntervalMs,
      pingTimeout: opts.heartbeatIntervalMs * 2,
      serveClient: false,
      cors: { origin: true },
    });
    this.io.on('connection', (socket) => this.accept(socket));
  }

  /** `counters` with the bytes of connections still open, for metrics scraped while clients stay connected. */
  totals(): TransportCounters {
    let bytesIn = this.counters.bytesIn;
    let bytesOut = this.counters.bytesOut;
    for (const c of this.live) {
      bytesIn += c.stats.bytesIn;
      bytesOut += c.stats.bytesOut;
    }
    return { ...this.counters, refused: { ...this.counters.refused }, bytesIn, bytesOut };
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.io.close(() => resolve());
    });
  }

  private refuse(reason: string): void {
    this.counters.refused[reason] = (this.counters.refused[reason] ?? 0) + 1;
  }

  private accept(socket: Socket): void {
    this.counters.connections++;
    let session: ClientSession | null = null;
    /** The hello arrived and waits for (or is in) its credential check; nothing else is accepted meanwhile. */
    let introduced = false;
    let gone = false;
    const helloTimer = setTimeout(() => {
      this.refuse('HELLO_TIMEOUT');
      channel.sendError(ErrorCode.UNAUTHENTICATED, `no hello within ${this.opts.helloTimeoutMs} ms`);
      socket.disconnect(true);
    }, this.opts.helloTimeoutMs);

    const channel: Channel = new Channel(
      socket,
      {
        message: (env) => {
          try {
            if (!session) {
              if (introduced) throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `${env.body} before the hello was answered`);
              const hello = checkHello(env);
              introduced = true;
              // The client did its part in time: a wait in the queue below is the coordinator's, not the client's.
              clearTimeout(helloTimer);
              const queued = this.hellos.offer(async () => {
                if (gone) return;
                try {
                  const s = await this.handshake(socket, channel, hello);
                  if (gone) return;
                  session = s;
                  this.registry.add(s);
                } catch (e) {
                  const err = e instanceof ProtocolError ? e : new ProtocolError(ErrorCode.INTERNAL, 'internal error');
                  if (!(e instanceof ProtocolError)) this.log.error({ err: e }, 'handshake failed');
                  this.refuse(err.codeName);
                  channel.sendError(err.code, err.message, err.ref);
                  socket.disconnect(true);
                }
              });
              if (!queued) throw new ProtocolError(ErrorCode.RATE_LIMITED, 'the coordinator is busy admitting other clients; retry later');
              return;
            }
            this.route(session, env, channel);
          } catch (e) {
            const err = e instanceof ProtocolError ? e : new ProtocolError(ErrorCode.INTERNAL, 'internal error');
            if (!(e instanceof ProtocolError)) this.log.error({ err: e }, 'session handler failed');
            this.refuse(err.codeName);
            channel.sendError(err.code, err.message, err.ref);
            if (!session) {
              clearTimeout(helloTimer);
              socket.disconnect(true);
            }
          }
        },
        protocolError: (err) => this.refuse(err.codeName),
      },
      this.opts.framing,
    );
    this.live.add(channel);

    socket.on('disconnect', (reason) => {
      gone = true;
      clearTimeout(helloTimer);
      this.live.delete(channel);
      this.counters.bytesIn += channel.stats.bytesIn;
      this.counters.bytesOut += channel.stats.bytesOut;
      channel.close();
      if (session) {
        this.log.info({ clientId: session.clientId, reason }, 'client disconnected');
        this.registry.remove(session, reason);
      }
    });
  }

  /** Checks a hello and welcomes the client; the caller adds the session to the registry if the socket is still open. */
  private async handshake(socket: Socket, channel: Channel, hello: fedunlearn.v1.Hello): Promise<ClientSession> {
    await this.auth.authenticate(hello);
    const now = Date.now();
    const session: ClientSession = {
      clientId: hello.clientId,
      sessionId: nanoid(),
      numExamples: hello.numExamples,
      backend: hello.backend,
      sdkVersion: hello.sdkVersion,
      connectedAt: now,
      lastSeen: now,
      channel,
      disconnect: () => socket.disconnect(true),
    };
    channel.send({
      welcome: {
        clientId: session.clientId,
        sessionId: session.sessionId,
        coordinatorVersion: this.opts.coordinatorVersion,
        maxMessageBytes: this.opts.framing.maxMessageBytes,
        chunkBytes: this.opts.framing.chunkBytes,
        heartbeatIntervalMs: this.opts.heartbeatIntervalMs,
        protocolVersion: PROTOCOL_VERSION,
      },
    });
    this.log.info({ clientId: session.clientId, backend: session.backend, numExamples: session.numExamples }, 'client joined');
    return session;
  }

  private route(session: ClientSession, env: fedunlearn.v1.Envelope, channel: Channel): void {
    session.lastSeen = Date.now();
    switch (env.body) {
      case 'update':
        this.handlers.update(session, env.update as fedunlearn.v1.Update, channel.lastMessageBytes);
        return;
      case 'forgetRequest':
        this.handlers.forgetRequest(session, env.forgetRequest as fedunlearn.v1.ForgetRequest);
        return;
      case 'heartbeat':
        return;
      case 'error':
        this.handlers.clientError(session, env.error as fedunlearn.v1.Error);
        return;
      default:
        throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `a client may not send ${env.body}`);
    }
  }
}

/** The checks of a hello that cost nothing, made before it waits for its credential check. */
function checkHello(env: fedunlearn.v1.Envelope): fedunlearn.v1.Hello {
  if (env.body !== 'hello' || !env.hello) throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `the first message must be hello, got ${env.body}`);
  const hello = env.hello as fedunlearn.v1.Hello;
  if (hello.protocolVersion !== PROTOCOL_VERSION) {
    throw new ProtocolError(ErrorCode.PROTOCOL_VERSION, `protocol version ${hello.protocolVersion} is not supported (this coordinator speaks ${PROTOCOL_VERSION})`);
  }
  if (!/^[A-Za-z0-9_.:-]{1,128}$/.test(hello.clientId)) {
    throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, 'client id must be 1-128 characters of [A-Za-z0-9_.:-]');
  }
  if (!(hello.numExamples > 0)) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, 'numExamples must be positive');
  return hello;
}
