import type { Server as HttpServer } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import { availableParallelism } from 'node:os';
import { nanoid } from 'nanoid';
import { Server, type Socket } from 'socket.io';
import {
  Channel,
  ErrorCode,
  fedunlearn,
  PROTOCOL_VERSION,
  ProtocolError,
  DEFAULT_STREAM_IDLE_TIMEOUT_MS,
  minChunkBytesOf,
  ReassemblyBuffer,
  socketBufferBytes,
  transportBufferBytes,
  type FramingLimits,
} from '@fedunlearn/protocol';
import type { Logger } from '../logger.js';
import { challengeMessage, issueChallenge, type Authenticator, type IssuedChallenge } from './authenticator.js';
import { assertClientId } from './client-id.js';
import type { ClientRegistry } from './client-registry.js';
import { HandshakeQueue } from './handshake-queue.js';
import type { KeyedTokenBucket } from './rate-limit.js';
import type { ClientSession } from './session.js';

export type { Authenticator } from './authenticator.js';

/** What an authenticated client may ask of the coordinator besides answering tasks. */
export interface SessionHandlers {
  /** `chunked`: the update came as chunks (admitted by admitStream). Must not keep `update` or a view of its tensors'
   *  bytes past its return: their memory is reused for the next message (decode the delta synchronously, as the
   *  dispatcher does). */
  update(session: ClientSession, update: fedunlearn.v1.Update, bytes: number, chunked: boolean): void;
  uploadRequest(session: ClientSession, req: fedunlearn.v1.UploadRequest): void;
  /** May refuse a chunked message (throw a ProtocolError) at its first chunk; `session` is null before the welcome. */
  admitStream(session: ClientSession | null, streamId: string, totalBytes: number): void;
  /** Answers above this size need an upload grant (0: none do); the Welcome says so. */
  grantAboveBytes(): number;
  forgetRequest(session: ClientSession, req: fedunlearn.v1.ForgetRequest): void;
  clientError(session: ClientSession, err: fedunlearn.v1.Error): void;
}

export interface SocketServerOptions {
  framing: FramingLimits;
  helloTimeoutMs: number;
  heartbeatIntervalMs: number;
  coordinatorVersion: string;
  /** The federation's model (Welcome fields 20-21), so that SDKs refuse at connect data it cannot train; null: not told. */
  model?: { inputShape: number[]; numClasses: number } | null;
  /** Handshakes per remote address; none means unlimited. */
  handshakeLimit?: KeyedTokenBucket;
  /** Hellos waiting for their credential lookup beyond those in progress; more (or more than a hello timeout's worth
   *  of lookups at their recent pace) are refused with RATE_LIMITED and retried by the SDK after a jittered back-off.
   *  Default 256. (Protocol 2 runs no slow hash on the coordinator: the proof is one HMAC, checked outside the queue.) */
  maxPendingHellos?: number;
  /** Credential checks in flight at once; default one per core (at most 4, the hash thread pool's size). */
  helloConcurrency?: number;
  /** Open connections from one remote address (authenticated or not); more are refused with RATE_LIMITED and counted
   *  as TOO_MANY_CONNECTIONS. Default 4096 (a thousand simulated devices behind one address fit). */
  maxConnectionsPerAddress?: number;
}

export const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 4096;

export interface TransportCounters {
  connections: number;
  refused: Record<string, number>;
  bytesIn: number;
  bytesOut: number;
}

/** What peers hold on the coordinator right now (read at scrape time): each is bounded, see SocketServer. */
export interface TransportHeld {
  /** Open connections, and those still in the hello/challenge handshake. */
  openConnections: number;
  handshaking: number;
  /** Chunked messages still arriving over all connections, and the bytes they hold. */
  partialStreams: number;
  partialStreamBytes: number;
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
  /**
   * Every connection's chunked messages are reassembled into this one buffer: the handlers keep nothing of a message
   * past their return (an Update's tensors are decoded into the dispatcher's own buffers synchronously, and no other
   * message a client may send has a bytes field), and frame events run one at a time.
   */
  private readonly reassembly = new ReassemblyBuffer();
  /** What this side accepts: the options' framing with the frame limit the Welcome advertises. */
  private readonly framing: FramingLimits & { maxFrameBytes: number; minChunkBytes: number; streamIdleTimeoutMs: number };
  private readonly perAddress = new Map<string, number>();
  private handshaking = 0;
  private readonly sweep: ReturnType<typeof setInterval>;

  constructor(
    http: HttpServer | HttpsServer,
    private readonly registry: ClientRegistry,
    private readonly auth: Authenticator,
    private readonly handlers: SessionHandlers,
    private readonly opts: SocketServerOptions,
    private readonly log: Logger,
  ) {
    // Credential lookups run a few at a time. A hello waits at most about a hello timeout in line, so that an admitted
    // client is welcomed well within the SDK's connect timeout; the others are told to come back (RATE_LIMITED) and
    // spread out by their back-off.
    this.hellos = new HandshakeQueue({ concurrency: opts.helloConcurrency ?? Math.max(1, Math.min(4, availableParallelism())), maxQueued: opts.maxPendingHellos ?? 256, maxWaitMs: opts.helloTimeoutMs });
    // A client that stops answering (a frozen process, a dead network) is dropped within 3 intervals: a ping is due
    // every interval and its pong within two more. The registry then forgets it and its tasks settle as missing.
    const f = opts.framing;
    this.framing = {
      ...f,
      maxFrameBytes: f.maxFrameBytes ?? socketBufferBytes(f.chunkBytes),
      minChunkBytes: minChunkBytesOf(f),
      streamIdleTimeoutMs: f.streamIdleTimeoutMs ?? DEFAULT_STREAM_IDLE_TIMEOUT_MS,
    };
    // Chunked messages that stopped arriving are dropped (STREAM_TIMEOUT), so that a peer cannot hold their bytes for
    // as long as its socket stays open.
    const idle = this.framing.streamIdleTimeoutMs;
    this.sweep = setInterval(() => {
      const now = Date.now();
      for (const c of this.live) c.expireIdleStreams(idle, now);
    }, Math.max(50, Math.floor(idle / 4)));
    this.sweep.unref();
    this.io = new Server(http, {
      // Above the frame limit on purpose: an oversized frame up to this size is answered MESSAGE_TOO_LARGE with the
      // limit; only a larger one closes the connection (counted as FRAME_TOO_LARGE).
      maxHttpBufferSize: Math.max(transportBufferBytes(f.chunkBytes), 2 * this.framing.maxFrameBytes),
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

  /** What connected peers hold right now. */
  held(): TransportHeld {
    let partialStreams = 0;
    let partialStreamBytes = 0;
    for (const c of this.live) {
      const p = c.partialStreams;
      partialStreams += p.streams;
      partialStreamBytes += p.bytes;
    }
    return { openConnections: this.live.size, handshaking: this.handshaking, partialStreams, partialStreamBytes };
  }

  close(): Promise<void> {
    clearInterval(this.sweep);
    return new Promise((resolve) => {
      this.io.close(() => resolve());
    });
  }

  private refuse(reason: string): void {
    this.counters.refused[reason] = (this.counters.refused[reason] ?? 0) + 1;
  }

  private accept(socket: Socket): void {
    this.counters.connections++;
    // Nothing is known about the peer yet: it gets a hello timeout to say hello, another to prove its credential.
    const address = socket.handshake.address;
    // hello: waiting for the Hello; planning: its credential looked up (queued); challenged: waiting for the proof;
    // verifying: the proof being checked.
    let state: 'hello' | 'planning' | 'challenged' | 'verifying' | 'closed' = 'hello';
    let session: ClientSession | null = null;
    let hello: fedunlearn.v1.Hello | null = null;
    let challenge: IssuedChallenge | null = null;
    this.handshaking++;
    let handshaking = true;
    const handshakeOver = () => {
      if (handshaking) this.handshaking--;
      handshaking = false;
    };
    const refuseAndClose = (err: ProtocolError, count = true) => {
      if (count) this.refuse(err.codeName);
      this.log.debug({ address, clientId: hello?.clientId, code: err.codeName, reason: err.message }, 'connection refused');
      clearTimeout(helloTimer);
      state = 'closed';
      channel.sendError(err.code, err.message, err.ref);
      socket.disconnect(true);
    };
    const fail = (e: unknown) => {
      if (!(e instanceof ProtocolError)) this.log.error({ err: e }, 'handshake failed');
      if (state !== 'closed') refuseAndClose(e instanceof ProtocolError ? e : new ProtocolError(ErrorCode.INTERNAL, 'internal error'));
    };
    const timeout = (what: string) => () => {
      this.refuse('HELLO_TIMEOUT');
      refuseAndClose(new ProtocolError(ErrorCode.UNAUTHENTICATED, `no ${what} within ${this.opts.helloTimeoutMs} ms`), false);
    };
    let helloTimer = setTimeout(timeout('hello'), this.opts.helloTimeoutMs);

    const onHello = (env: fedunlearn.v1.Envelope) => {
      state = 'planning';
      // The hello came in time; its credential lookup may wait behind others' (a reconnect storm), which is not the
      // client's fault.
      clearTimeout(helloTimer);
      const admitted = this.hellos.offer(() =>
        state === 'closed'
          ? undefined
          : this.plan(socket, env).then((c) => {
              if (state === 'closed' || !socket.connected) return;
              hello = env.hello as fedunlearn.v1.Hello;
              challenge = c;
              state = 'challenged';
              helloTimer = setTimeout(timeout('hello proof'), this.opts.helloTimeoutMs);
              channel.send({ challenge: challengeMessage(c) });
            }, fail),
      );
      if (!admitted) refuseAndClose(new ProtocolError(ErrorCode.RATE_LIMITED, 'the coordinator is busy admitting other clients; retry later'));
    };
    const onProof = (env: fedunlearn.v1.Envelope) => {
      if (env.body !== 'helloProof' || !env.helloProof) return refuseAndClose(new ProtocolError(ErrorCode.UNAUTHENTICATED, `expected helloProof, got ${env.body}`));
      state = 'verifying';
      clearTimeout(helloTimer);
      // The nonce is spent by this one proof whatever its verdict: the connection either becomes the session or closes.
      const c = challenge!;
      challenge = null;
      const h = hello!;
      this.auth.verify(h, c, env.helloProof as fedunlearn.v1.HelloProof, address).then(() => {
          if (state === 'closed' || !socket.connected) return;
        handshakeOver();
        session = this.session(socket, channel, h, c.sessionId);
        this.welcome(session);
      }, fail);
    };

    const channel: Channel = new Channel(
      socket,
      {
        message: (env) => {
          if (session) {
            try {
              this.route(session, env, channel);
            } catch (e) {
              const err = e instanceof ProtocolError ? e : new ProtocolError(ErrorCode.INTERNAL, 'internal error');
              if (!(e instanceof ProtocolError)) this.log.error({ err: e }, 'session handler failed');
              this.refuse(err.codeName);
              channel.sendError(err.code, err.message, err.ref);
            }
            return;
          }
          // Before the welcome a peer may send one hello, then one proof once challenged; a peer that does not wait is
          // not a client we know.
          if (state === 'hello') return onHello(env);
          if (state === 'challenged') return onProof(env);
          if (state === 'closed') return;
          return refuseAndClose(new ProtocolError(ErrorCode.UNAUTHENTICATED, `${env.body} sent before the ${state === 'planning' ? 'challenge' : 'welcome'}`));
        },
        protocolError: (err) => this.refuse(err.codeName),
        admitStream: (streamId, totalBytes) => this.handlers.admitStream(session, streamId, totalBytes),
      },
      this.framing,
      this.reassembly,
    );
    this.live.add(channel);
    const addressCount = (this.perAddress.get(address) ?? 0) + 1;
    this.perAddress.set(address, addressCount);

    socket.on('disconnect', (reason, description) => {
      clearTimeout(helloTimer);
      state = 'closed';
      handshakeOver();
      const left = (this.perAddress.get(address) ?? 1) - 1;
      if (left > 0) this.perAddress.set(address, left);
      else this.perAddress.delete(address);
      // socket.io closes the connection by itself on a frame above maxHttpBufferSize: counted, never silent.
      if (reason === 'transport error' && /payload|MESSAGE_LENGTH/i.test(describeTransportError(description))) this.refuse('FRAME_TOO_LARGE');
      this.live.delete(channel);
      this.counters.bytesIn += channel.stats.bytesIn;
      this.counters.bytesOut += channel.stats.bytesOut;
      channel.close();
      if (session) {
        this.log.info({ clientId: session.clientId, reason }, 'client disconnected');
        this.registry.remove(session, reason);
      }
    });

    const maxPerAddress = this.opts.maxConnectionsPerAddress ?? DEFAULT_MAX_CONNECTIONS_PER_ADDRESS;
    if (addressCount > maxPerAddress) {
      this.refuse('TOO_MANY_CONNECTIONS');
      refuseAndClose(new ProtocolError(ErrorCode.RATE_LIMITED, `more than ${maxPerAddress} open connections from this address; retry later`), false);
      return;
    }
    if (this.opts.handshakeLimit && !this.opts.handshakeLimit.take(address)) {
      const wait = this.opts.handshakeLimit.retryAfterMs(address);
      refuseAndClose(new ProtocolError(ErrorCode.RATE_LIMITED, `too many connection attempts from this address; retry in ${Math.max(1, Math.ceil(wait / 1000))} s`));
    }
  }

  /** Checks a first message and decides how its sender must prove its credential. */
  private async plan(socket: Socket, env: fedunlearn.v1.Envelope): Promise<IssuedChallenge> {
    if (env.body !== 'hello' || !env.hello) throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `the first message must be hello, got ${env.body}`);
    const hello = env.hello as fedunlearn.v1.Hello;
    if (hello.protocolVersion !== PROTOCOL_VERSION) {
      const why = hello.protocolVersion === 1 ? ': protocol 1 sent the secret in the hello; upgrade the client to prove it by challenge-response instead' : '';
      throw new ProtocolError(ErrorCode.PROTOCOL_VERSION, `protocol version ${hello.protocolVersion} is not supported (this coordinator speaks ${PROTOCOL_VERSION})${why}`);
    }
    assertClientId(hello.clientId);
    if (!(hello.numExamples > 0)) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, 'numExamples must be positive');
    // Kept with the session and shown to operators: a client may not make them arbitrarily large.
    if (hello.backend.length > 32 || hello.sdkVersion.length > 64) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, 'backend (32) or sdkVersion (64 characters) too long');
    const plan = await this.auth.plan(hello, socket.handshake.address);
    return issueChallenge(plan, nanoid());
  }

  private session(socket: Socket, channel: Channel, hello: fedunlearn.v1.Hello, sessionId: string): ClientSession {
    const now = Date.now();
    return {
      clientId: hello.clientId,
      sessionId,
      numExamples: hello.numExamples,
      backend: hello.backend,
      sdkVersion: hello.sdkVersion,
      connectedAt: now,
      lastSeen: now,
      channel,
      flushed: () => untilFlushed(socket),
      disconnect: () => socket.disconnect(true),
    };
  }

  private welcome(session: ClientSession): void {
    session.channel.send({
      welcome: {
        clientId: session.clientId,
        sessionId: session.sessionId,
        coordinatorVersion: this.opts.coordinatorVersion,
        maxMessageBytes: this.framing.maxMessageBytes,
        chunkBytes: this.framing.chunkBytes,
        maxFrameBytes: this.framing.maxFrameBytes,
        minChunkBytes: this.framing.minChunkBytes,
        streamIdleTimeoutMs: this.framing.streamIdleTimeoutMs,
        heartbeatIntervalMs: this.opts.heartbeatIntervalMs,
        protocolVersion: PROTOCOL_VERSION,
        uploadGrantAboveBytes: this.handlers.grantAboveBytes(),
        modelInputShape: this.opts.model?.inputShape ?? [],
        modelNumClasses: this.opts.model?.numClasses ?? 0,
      },
    });
    this.log.info({ clientId: session.clientId, backend: session.backend, numExamples: session.numExamples }, 'client joined');
    this.registry.add(session);
  }

  private route(session: ClientSession, env: fedunlearn.v1.Envelope, channel: Channel): void {
    session.lastSeen = Date.now();
    switch (env.body) {
      case 'update':
        this.handlers.update(session, env.update as fedunlearn.v1.Update, channel.lastMessageBytes, channel.lastMessageFrames > 1);
        return;
      case 'uploadRequest':
        this.handlers.uploadRequest(session, env.uploadRequest as fedunlearn.v1.UploadRequest);
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

/** The text of the error behind a 'transport error' disconnect (engine.io wraps the ws error in `description`). */
function describeTransportError(description: unknown): string {
  const d = description as { message?: string; description?: { message?: string; code?: string } } | undefined;
  return `${d?.message ?? ''} ${d?.description?.message ?? ''} ${d?.description?.code ?? ''}`;
}

/**
 * Resolves when engine.io has handed every queued packet of `socket` to the OS (its write buffer is empty and its
 * transport writable again), or when the connection closes. The websocket transport reports 'drain' after its last
 * write completed and only then becomes writable, hence the check on the next turn.
 */
function untilFlushed(socket: Socket): Promise<void> {
  const conn = socket.conn;
  // engine.io types its write buffer private; it is the queue of packets not yet given to the transport.
  const queued = () => (conn as unknown as { writeBuffer: unknown[] }).writeBuffer.length;
  const idle = () => conn.readyState === 'closed' || (queued() === 0 && conn.transport.writable);
  if (idle()) return Promise.resolve();
  return new Promise((resolve) => {
    let transport = conn.transport;
    const check = () =>
      setImmediate(() => {
        if (!idle()) return;
        transport.off('drain', check);
        conn.off('upgrade', moved);
        conn.off('close', check);
        resolve();
      });
    const moved = () => {
      transport.off('drain', check);
      transport = conn.transport;
      transport.on('drain', check);
      check();
    };
    transport.on('drain', check);
    conn.on('upgrade', moved);
    conn.on('close', check);
  });
}
