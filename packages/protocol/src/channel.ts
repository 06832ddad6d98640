import { nanoid } from 'nanoid';
import { Reassembler, type FramingLimits, type ReassemblyBuffer } from './chunking.js';
import { DEFAULT_CHUNK_BYTES, DEFAULT_MAX_MESSAGE_BYTES, WIRE_EVENT } from './constants.js';
import type { Envelope } from './envelope.js';
import { ErrorCode, ProtocolError } from './errors.js';
import type { fedunlearn } from './gen/proto.js';
import { envelopePieces, framePieces, piecesLength, type TensorListBytes } from './pieces.js';

/** The part of a socket.io socket (server or client side) a channel needs. */
export interface WireSocket {
  emit(event: string, ...args: unknown[]): unknown;
  on(event: string, listener: (...args: any[]) => void): unknown;
  off(event: string, listener: (...args: any[]) => void): unknown;
}

export interface ChannelHandlers {
  message(env: fedunlearn.v1.Envelope): void;
  /** A frame that could not be accepted; the channel has already told the peer. */
  protocolError?(err: ProtocolError): void;
  /** Decides whether a chunked message of `totalBytes` may start arriving (throw a ProtocolError to refuse it);
   *  called at its first chunk, before anything of it is buffered. */
  admitStream?(streamId: string, totalBytes: number): void;
}

/** A message encoded and measured but not yet sent (see Channel.prepare). */
export interface PreparedMessage {
  /** Encoded size of the envelope, before chunking. */
  readonly bytes: number;
  /** Sends it; returns the bytes put on the wire. */
  send(): number;
}

export interface ChannelStats {
  bytesIn: number;
  bytesOut: number;
  messagesIn: number;
  messagesOut: number;
}

export const DEFAULT_FRAMING: FramingLimits = {
  chunkBytes: DEFAULT_CHUNK_BYTES,
  maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
  maxOpenStreams: 4,
};

/**
 * One peer-to-peer stream of protobuf envelopes over a socket.io socket: large messages are chunked on the way out and
 * reassembled on the way in; anything malformed is answered with an Error envelope and never reaches the handler.
 */
export class Channel {
  readonly stats: ChannelStats = { bytesIn: 0, bytesOut: 0, messagesIn: 0, messagesOut: 0 };
  /** Wire bytes of the last complete message received (all its chunks). */
  lastMessageBytes = 0;
  /** Frames of the last complete message received: 1 unless it came as chunks. */
  lastMessageFrames = 0;
  private partialBytes = 0;
  private partialFrames = 0;
  private readonly reassembler: Reassembler;
  private readonly onFrame = (frame: unknown) => this.receive(frame);

  /**
   * `reassembleInto`: only for handlers that keep nothing of a message past their return (no envelope, no view of a
   * tensor's bytes: decode what you need synchronously). Chunked messages are then reassembled into that shared
   * buffer, which the channel gives back as soon as `message` returns.
   */
  constructor(
    private readonly socket: WireSocket,
    private readonly handlers: ChannelHandlers,
    private limits: FramingLimits = DEFAULT_FRAMING,
    reassembleInto?: ReassemblyBuffer,
  ) {
    this.reassembler = new Reassembler(limits, reassembleInto, handlers.admitStream && ((id, n) => handlers.admitStream!(id, n)));
    socket.on(WIRE_EVENT, this.onFrame);
  }

  /**
   * Encodes and sends one message; returns the bytes put on the wire. Throws MESSAGE_TOO_LARGE over the cap. A Task's
   * weights may come pre-encoded (encodeTaskWeights, once for many clients) instead of in msg.task.weights.
   */
  send(msg: Envelope, taskWeights?: TensorListBytes): number {
    return this.sendPieces(envelopePieces(msg, taskWeights));
  }

  /**
   * Encodes a message without sending it, so that its size can be announced first (an UploadRequest) and the same
   * encoding sent once granted. The pieces are views of the message's tensor data, which must not change meanwhile.
   */
  prepare(msg: Envelope): PreparedMessage {
    const pieces = envelopePieces(msg);
    return { bytes: piecesLength(pieces), send: () => this.sendPieces(pieces) };
  }

  private sendPieces(pieces: Uint8Array[]): number {
    // Tensor data goes from the caller's buffers straight into the frames: one copy, no full-size message buffer.
    const frames = framePieces(pieces, nanoid(10), this.limits);
    let n = 0;
    for (const f of frames) {
      this.socket.emit(WIRE_EVENT, f);
      n += f.byteLength;
    }
    this.stats.bytesOut += n;
    this.stats.messagesOut++;
    return n;
  }

  /**
   * Adopts the peer's framing for what this side sends (a coordinator may use smaller chunks than the default, and
   * its socket buffer is sized for them); what this side accepts keeps its own caps.
   */
  adoptPeerFraming(peer: { chunkBytes: number; maxMessageBytes: number; minChunkBytes?: number; maxFrameBytes?: number }): void {
    if (!(peer.chunkBytes > 0) || !(peer.maxMessageBytes > 0)) return;
    let chunkBytes = Math.min(this.limits.chunkBytes, peer.chunkBytes);
    // Chunks but the last must meet the peer's minimum, and every frame (a chunk plus its ~100-byte header) its cap.
    if (peer.minChunkBytes !== undefined && peer.minChunkBytes > 0) chunkBytes = Math.max(chunkBytes, Math.min(peer.minChunkBytes, peer.chunkBytes));
    if (peer.maxFrameBytes !== undefined && peer.maxFrameBytes > 1024) chunkBytes = Math.min(chunkBytes, peer.maxFrameBytes - 1024);
    this.limits = { ...this.limits, chunkBytes, maxMessageBytes: Math.min(this.limits.maxMessageBytes, peer.maxMessageBytes) };
  }

  sendError(code: ErrorCode, message: string, ref = ''): void {
    this.send({ error: { code, message, ref } });
  }

  close(): void {
    this.socket.off(WIRE_EVENT, this.onFrame);
    this.reassembler.clear();
  }

  /** Bytes held for chunked messages still arriving, and how many there are. */
  get partialStreams(): { bytes: number; streams: number } {
    return { bytes: this.reassembler.bufferedBytes, streams: this.reassembler.openStreams };
  }

  /** Drops the chunked messages that received nothing for `idleMs`, telling the peer (STREAM_TIMEOUT, ref the
   *  stream id); returns how many. */
  expireIdleStreams(idleMs: number, now = Date.now()): number {
    const gone = this.reassembler.expireIdle(idleMs, now);
    for (const id of gone) this.reject(new ProtocolError(ErrorCode.STREAM_TIMEOUT, `stream ${id} received nothing for ${idleMs} ms and was dropped`, id));
    return gone.length;
  }

  private receive(raw: unknown): void {
    // Node peers receive Buffers, browsers ArrayBuffers.
    const frame = raw instanceof ArrayBuffer ? new Uint8Array(raw) : raw;
    if (!(frame instanceof Uint8Array)) {
      const err = new ProtocolError(ErrorCode.MALFORMED_MESSAGE, 'payload is not a binary protobuf envelope');
      this.reject(err);
      return;
    }
    this.stats.bytesIn += frame.byteLength;
    if (this.limits.maxFrameBytes !== undefined && frame.byteLength > this.limits.maxFrameBytes) {
      // Answered, not dropped: a third-party client learns the limit instead of seeing its connection close.
      this.reject(new ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, `frame of ${frame.byteLength} bytes exceeds the ${this.limits.maxFrameBytes}-byte frame limit; send larger messages as chunks of at most ${this.limits.chunkBytes} bytes (Welcome.max_frame_bytes, chunk_bytes)`));
      return;
    }
    this.partialBytes += frame.byteLength;
    this.partialFrames++;
    let env: fedunlearn.v1.Envelope | null;
    try {
      env = this.reassembler.accept(frame);
    } catch (e) {
      this.partialBytes = 0;
      this.partialFrames = 0;
      this.reject(e instanceof ProtocolError ? e : new ProtocolError(ErrorCode.MALFORMED_MESSAGE, String(e)));
      return;
    }
    if (!env) return;
    this.lastMessageBytes = this.partialBytes;
    this.lastMessageFrames = this.partialFrames;
    this.partialBytes = 0;
    this.partialFrames = 0;
    this.stats.messagesIn++;
    try {
      this.handlers.message(env);
    } finally {
      this.reassembler.release();
    }
  }

  private reject(err: ProtocolError): void {
    this.handlers.protocolError?.(err);
    try {
      this.sendError(err.code, err.message, err.ref);
    } catch {
      // The peer is gone or the error itself cannot be sent: nothing else to do for a frame we refuse.
    }
  }
}
