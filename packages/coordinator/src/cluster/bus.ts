import { createAdapter } from '@socket.io/redis-streams-adapter';
import type { Server } from 'socket.io';

/**
 * The replica-to-replica messages of a cluster and their replies. Each names a client: the replica that holds its
 * session acts and replies; the others reply `null` ("not here"). Model and update bytes never travel here (a task
 * names its model version, which the holder reads from the store): per round, what crosses Redis is small.
 */
export interface BusMessages {
  /** Revocation, rotation or forgetting on another replica: close this client's session where it is. */
  disconnectClient: {
    request: { clientId: string; reason: string };
    reply: { disconnected: true };
  };
  /**
   * A task for a client connected elsewhere (the leader's forget job calibrating on every replica's clients).
   * `task` is an encoded `fedunlearn.v1.Task` without weights or topology: `model_version` names them and the holder
   * fills them from the store.
   */
  taskForClient: {
    request: { clientId: string; task: Uint8Array };
    reply: { accepted: boolean; reason?: string };
  };
  /** A job's progress for the SDK client that asked for it: `status` is an encoded `fedunlearn.v1.JobStatus`. */
  jobProgress: {
    request: { clientId: string; requestId: string; status: Uint8Array };
    reply: { delivered: true };
  };
}

export type BusKind = keyof BusMessages;
export type BusRequest<K extends BusKind> = BusMessages[K]['request'];
export type BusReply<K extends BusKind> = BusMessages[K]['reply'];
/** A handler answers for the clients its replica holds, and null for the others. */
export type BusHandler<K extends BusKind> = (request: BusRequest<K>) => Promise<BusReply<K> | null> | BusReply<K> | null;

/** What a replica's handler sends back over Redis: which replica, and its reply (null: it does not hold the client). */
interface Envelope<R> {
  replica: string;
  reply: R | null;
  error?: string;
}

export interface ClusterBusOptions {
  /** This replica's id, told in replies (for logs and status). */
  replicaId: string;
}

/** A reply and the replica that sent it. */
export interface HolderReply<K extends BusKind> {
  replica: string;
  reply: BusReply<K>;
}

/** The message kinds ride socket.io events under this prefix, apart from any other server-side event. */
const EVENT_PREFIX = 'fedunlearn:';

/**
 * Typed replica-to-replica messages over socket.io's own cluster channel (`io.serverSideEmit` with acknowledgements,
 * carried by whatever adapter the server has: `attachRedisAdapter` below). Each kind has at most one handler per
 * replica. `toHolder` asks this replica's handler first and then the others, and resolves with the reply of the
 * replica holding the client, or null when none does; a replica that does not answer within socket.io's request
 * timeout (5 s) counts as not holding it.
 */
export class ClusterBus {
  private readonly handlers = new Map<BusKind, BusHandler<BusKind>>();

  constructor(
    private readonly io: Server,
    private readonly opts: ClusterBusOptions,
  ) {}

  /** Answers `kind` for the clients this replica holds. Throws if `kind` already has a handler here. */
  handle<K extends BusKind>(kind: K, handler: BusHandler<K>): void {
    if (this.handlers.has(kind)) throw new Error(`the bus already has a handler for ${kind}`);
    this.handlers.set(kind, handler as unknown as BusHandler<BusKind>);
    this.io.on(EVENT_PREFIX + kind, (request: BusRequest<K>, ack: (e: Envelope<BusReply<K>>) => void) => {
      void this.local(kind, request).then(ack);
    });
  }

  /**
   * The reply of the replica holding `request.clientId` (this one first), or null when no replica holds it. A handler
   * that threw on another replica is reported here as an Error with its message.
   */
  async toHolder<K extends BusKind>(kind: K, request: BusRequest<K>): Promise<HolderReply<K> | null> {
    const here = await this.local(kind, request);
    if (here.error) throw new Error(`${kind} on replica ${here.replica}: ${here.error}`);
    if (here.reply) return { replica: here.replica, reply: here.reply };
    for (const e of await this.toOthers(kind, request)) {
      if (e.error) throw new Error(`${kind} on replica ${e.replica}: ${e.error}`);
      if (e.reply) return { replica: e.replica, reply: e.reply };
    }
    return null;
  }

  /** The other replicas' answers (one per replica that answered in time; those of replicas not holding the client
   *  have a null reply). */
  toOthers<K extends BusKind>(kind: K, request: BusRequest<K>): Promise<Envelope<BusReply<K>>[]> {
    return new Promise((resolve) => {
      // The callback form: after a timeout it still gives the replies that did arrive (the promise form drops them).
      this.io.serverSideEmit(EVENT_PREFIX + kind, request, (_err: Error | null, replies: Envelope<BusReply<K>>[]) => resolve(replies ?? []));
    });
  }

  /** How many replicas the adapter knows, this one included. */
  serverCount(): Promise<number> {
    return this.io.of('/').adapter.serverCount();
  }

  private async local<K extends BusKind>(kind: K, request: BusRequest<K>): Promise<Envelope<BusReply<K>>> {
    const handler = this.handlers.get(kind) as BusHandler<K> | undefined;
    if (!handler) return { replica: this.opts.replicaId, reply: null };
    try {
      return { replica: this.opts.replicaId, reply: (await handler(request)) ?? null };
    } catch (e) {
      return { replica: this.opts.replicaId, reply: null, error: e instanceof Error ? e.message : String(e) };
    }
  }
}

/** The Redis client the adapter takes (the `redis` package's, connected). */
export type AdapterRedisClient = Parameters<typeof createAdapter>[0];

export interface RedisAdapterOptions {
  /** The Redis stream and the pub/sub channel prefix of this federation (several federations may share a Redis). */
  keyPrefix: string;
  /** Milliseconds a stream read blocks (default 5,000; closing waits for the read in progress). */
  blockTimeInMs?: number;
  /** Milliseconds between the replicas' heartbeats, by which they know each other (default 5,000). */
  heartbeatInterval?: number;
}

/**
 * Attaches socket.io's Redis Streams adapter to `io`: rooms, broadcasts, `disconnectSockets`, `fetchSockets` and
 * `serverSideEmit` then reach every replica. Streams rather than plain pub/sub because the adapter resumes the stream
 * after a Redis disconnection without losing packets (bus.test.ts kills every connection and checks). `redis` must be
 * connected and have an 'error' listener (node-redis reports a lost connection as 'error' while it reconnects, and
 * throws without one); the adapter duplicates it for its blocking reads and subscriptions. The Redis keys it writes: the stream `${keyPrefix}:stream`; channels
 * `${keyPrefix}:*`.
 */
export function attachRedisAdapter(io: Server, redis: AdapterRedisClient, opts: RedisAdapterOptions): void {
  io.adapter(
    createAdapter(redis, {
      streamName: `${opts.keyPrefix}:stream`,
      channelPrefix: opts.keyPrefix,
      blockTimeInMs: opts.blockTimeInMs ?? 5_000,
      heartbeatInterval: opts.heartbeatInterval ?? 5_000,
    }),
  );
}
