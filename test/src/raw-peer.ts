import assert from 'node:assert/strict';
import { io, type Socket } from 'socket.io-client';
import { answerChallenge, Channel, DEFAULT_FRAMING, ErrorCode, errorCodeName, fedunlearn, PROTOCOL_VERSION, WIRE_EVENT, type Envelope } from '@fedunlearn/protocol';

const WAIT_MS = 15_000;
type Kind = NonNullable<fedunlearn.v1.Envelope['body']>;

/** A hello as the SDK would send it, for peers that speak the protocol by hand (the secret is proven afterwards, in
 *  answer to the Challenge: see RawPeer.hello). */
export function rawHello(clientId: string, numExamples = 50): fedunlearn.v1.IHello {
  return { clientId, sdkVersion: 'raw', numExamples, backend: 'cpu', protocolVersion: PROTOCOL_VERSION };
}

/**
 * A peer speaking the wire protocol by hand over a real socket, to send what no SDK would (garbage, messages out of
 * order, other clients' tasks) and to read exactly what the coordinator answers.
 */
export class RawPeer {
  readonly channel: Channel;
  private readonly inbox: fedunlearn.v1.Envelope[] = [];
  private readonly waiters = new Set<() => void>();
  disconnectReason: string | null = null;
  /** Set by hello(): a Challenge is then answered with a proof of this secret instead of being queued. */
  private prover: { clientId: string; secret: string } | null = null;
  /** Every frame this peer received and sent, as put on the wire (tests look for what must never be there). */
  readonly wire: { in: Uint8Array[]; out: Uint8Array[] } = { in: [], out: [] };

  private constructor(readonly socket: Socket) {
    this.channel = new Channel(socket, { message: (env) => this.push(env) }, DEFAULT_FRAMING);
    socket.on(WIRE_EVENT, (f: unknown) => {
      if (f instanceof Uint8Array) this.wire.in.push(new Uint8Array(f));
    });
    socket.onAnyOutgoing((_event: string, f: unknown) => {
      if (f instanceof Uint8Array) this.wire.out.push(new Uint8Array(f));
    });
    socket.on('disconnect', (reason) => {
      this.disconnectReason = String(reason);
      this.wake();
    });
  }

  /** `localAddress` picks the source address (any 127.x.y.z is this host: a second "remote" address for tests). */
  static connect(url: string, opts: { localAddress?: string } = {}): Promise<RawPeer> {
    const socket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true, ...opts });
    const peer = new RawPeer(socket);
    return new Promise((resolve, reject) => {
      socket.once('connect', () => resolve(peer));
      socket.once('connect_error', reject);
    });
  }

  /** Connects and says hello; resolves with the peer and the coordinator's answer (a welcome or an error). */
  static async introduce(url: string, clientId: string, secret: string, numExamples?: number): Promise<{ peer: RawPeer; answer: fedunlearn.v1.Envelope }> {
    const peer = await RawPeer.connect(url);
    peer.hello(clientId, secret, numExamples);
    return { peer, answer: await peer.nextOf(['welcome', 'error']) };
  }

  /** Sends a hello and answers its Challenge with a proof of `secret`, as the SDK does (the outcome stays queued). */
  hello(clientId: string, secret: string, numExamples?: number): void {
    this.prover = { clientId, secret };
    this.send({ hello: rawHello(clientId, numExamples) });
  }

  /** Connects and completes the hello handshake as `clientId`. */
  static async enrolled(url: string, clientId: string, secret: string): Promise<RawPeer> {
    const { peer, answer } = await RawPeer.introduce(url, clientId, secret);
    assert.equal(answer.body, 'welcome', `hello refused: ${answer.error?.message}`);
    assert.equal(answer.welcome!.clientId, clientId);
    return peer;
  }

  send(env: Envelope): void {
    this.channel.send(env);
  }

  /** Puts anything at all on the wire event, bypassing the channel's encoding. */
  sendRaw(payload: unknown): void {
    this.socket.emit(WIRE_EVENT, payload);
  }

  /** The next received envelope of this kind (others stay queued). */
  next(kind: Kind, timeoutMs = WAIT_MS): Promise<fedunlearn.v1.Envelope> {
    return this.nextOf([kind], timeoutMs);
  }

  /** The next received envelope of any of these kinds (others stay queued). */
  async nextOf(kinds: Kind[], timeoutMs = WAIT_MS): Promise<fedunlearn.v1.Envelope> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.inbox.findIndex((e) => e.body && kinds.includes(e.body));
      if (i >= 0) return this.inbox.splice(i, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no ${kinds.join(' or ')} within ${timeoutMs} ms (inbox: ${this.inbox.map((e) => e.body).join(', ') || 'empty'})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, left);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.waiters.add(done);
      });
    }
  }

  /** 'welcome', or the code name of the error that came first. */
  async outcome(): Promise<string> {
    const answer = await this.nextOf(['welcome', 'error']);
    return answer.body === 'welcome' ? 'welcome' : errorCodeName(answer.error!.code ?? 0);
  }

  /** Waits for the next Error envelope and checks its code (and ref, when given). */
  async expectError(code: ErrorCode, ref?: string): Promise<fedunlearn.v1.Error> {
    const e = (await this.next('error')).error as fedunlearn.v1.Error;
    assert.equal(errorCodeName(e.code), errorCodeName(code), `error message: ${e.message}`);
    if (ref !== undefined) assert.equal(e.ref, ref);
    return e;
  }

  get closed(): boolean {
    return this.disconnectReason !== null;
  }

  async disconnected(timeoutMs = WAIT_MS): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.disconnectReason === null) {
      if (Date.now() > deadline) throw new Error('still connected');
      await new Promise((r) => setTimeout(r, 20));
    }
    return this.disconnectReason;
  }

  /** Kinds still queued: a refusal must be answered once, not echoed. */
  get queued(): string[] {
    return this.inbox.map((e) => e.body ?? '?');
  }

  close(): void {
    this.channel.close();
    this.socket.disconnect();
  }

  private push(env: fedunlearn.v1.Envelope): void {
    if (env.body === 'challenge' && this.prover) {
      const { clientId, secret } = this.prover;
      this.prover = null;
      // The challenge's byte fields are views of memory the channel reuses: copied before the first await.
      const c = fedunlearn.v1.Challenge.fromObject(fedunlearn.v1.Challenge.toObject(env.challenge as fedunlearn.v1.Challenge));
      void answerChallenge(c, clientId, secret).then(
        (proof) => {
          if (!this.closed) this.send({ helloProof: proof });
        },
        (e: unknown) => {
          this.inbox.push(fedunlearn.v1.Envelope.fromObject({ error: { code: ErrorCode.INVALID_ARGUMENT, message: `raw peer: ${(e as Error).message}` } }));
          this.wake();
        },
      );
      return;
    }
    this.inbox.push(env);
    this.wake();
  }

  private wake(): void {
    for (const w of [...this.waiters]) w();
    this.waiters.clear();
  }
}
