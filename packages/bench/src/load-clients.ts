import { io, type Socket } from 'socket.io-client';
import {
  answerChallenge,
  Channel,
  DEFAULT_FRAMING,
  encodeEnvelope,
  frameMessage,
  needsUploadRequest,
  PROTOCOL_VERSION,
  WIRE_EVENT,
  type PreparedMessage,
  type WireTensor,
} from '@fedunlearn/protocol';

/**
 * The ingest benchmark's load generator (not the subject): socket.io clients that speak the real protocol to a
 * coordinator, answering every task at once with a precomputed valid update, and that also hold a second socket to
 * a plain socket.io server, over which they send the same frames raw.
 */
export interface LoadClient {
  readonly clientId: string;
  close(): void;
}

export interface UpdateTemplate {
  delta: WireTensor[];
  numExamples: number;
}

/** Connects one protocol client: hello, wait for the welcome, then answer TRAIN tasks with `update` (announced first
 *  and sent once granted when the Welcome asks for it, as the SDK does). */
export function connectProtocolClient(url: string, clientId: string, update: UpdateTemplate, timeoutMs = 30_000): Promise<LoadClient> {
  return new Promise((resolve, reject) => {
    const socket: Socket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true });
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error(`${clientId}: no welcome within ${timeoutMs} ms`));
    }, timeoutMs);
    let grantAbove = 0;
    const answers = new Map<string, PreparedMessage>();
    const channel = new Channel(socket, {
      message: (env) => {
        if (env.body === 'challenge' && env.challenge) {
          // Protocol 2: the secret is proven, never sent.
          void answerChallenge(env.challenge, clientId, `secret-of-${clientId}`).then((helloProof) => channel.send({ helloProof }), reject);
        } else if (env.body === 'welcome' && env.welcome) {
          channel.adoptPeerFraming({ chunkBytes: env.welcome.chunkBytes ?? 0, maxMessageBytes: Number(env.welcome.maxMessageBytes) });
          grantAbove = Number(env.welcome.uploadGrantAboveBytes ?? 0);
          clearTimeout(timer);
          resolve({ clientId, close: () => socket.close() });
        } else if (env.body === 'task' && env.task) {
          const taskId = env.task.taskId ?? '';
          const answer = channel.prepare({ update: { taskId, delta: update.delta, numExamples: update.numExamples, metrics: { loss: 0.5, samples: update.numExamples } } });
          if (needsUploadRequest(answer.bytes, grantAbove, Number(env.task.uploadGrantedBytes ?? 0))) {
            answers.set(taskId, answer);
            channel.send({ uploadRequest: { taskId, bytes: answer.bytes } });
          } else answer.send();
        } else if (env.body === 'uploadGrant' && env.uploadGrant) {
          const taskId = env.uploadGrant.taskId ?? '';
          answers.get(taskId)?.send();
          answers.delete(taskId);
        } else if (env.body === 'error' && env.error) {
          clearTimeout(timer);
          reject(new Error(`${clientId}: coordinator error ${env.error.code}: ${env.error.message}`));
        }
      },
    });
    socket.on('connect', () =>
      channel.send({ hello: { clientId, sdkVersion: 'bench', numExamples: update.numExamples, backend: 'bench', protocolVersion: PROTOCOL_VERSION } }),
    );
    socket.on('connect_error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/**
 * Frames of a message of the given kind as the channel would put them on the wire; the raw baseline sends exactly
 * these bytes.
 */
export function wireFrames(encoded: Uint8Array): Uint8Array[] {
  return frameMessage(encoded, 'bench-raw', DEFAULT_FRAMING);
}

export function encodedUpdate(taskId: string, update: UpdateTemplate): Uint8Array {
  return encodeEnvelope({ update: { taskId, delta: update.delta, numExamples: update.numExamples, metrics: { loss: 0.5, samples: update.numExamples } } });
}

/** A raw client: once it has received `expectIn` bytes of frames it sends `reply` frames back. */
export function connectRawClient(url: string, expectIn: number, reply: readonly Uint8Array[], timeoutMs = 30_000): Promise<LoadClient> {
  return new Promise((resolve, reject) => {
    const socket: Socket = io(url, { transports: ['websocket'], reconnection: false, forceNew: true });
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error(`raw client: no connection within ${timeoutMs} ms`));
    }, timeoutMs);
    let got = 0;
    socket.on(WIRE_EVENT, (frame: Uint8Array) => {
      got += frame.byteLength;
      if (got < expectIn) return;
      got = 0;
      for (const f of reply) socket.emit(WIRE_EVENT, f);
    });
    socket.on('connect', () => {
      clearTimeout(timer);
      resolve({ clientId: socket.id ?? '', close: () => socket.close() });
    });
    socket.on('connect_error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
