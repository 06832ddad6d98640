import { fedunlearn } from './gen/proto.js';
import { decodeEnvelope, encodeEnvelope } from './envelope.js';
import { ErrorCode, ProtocolError } from './errors.js';

export interface FramingLimits {
  /** Envelopes larger than this are split into Chunk envelopes. */
  chunkBytes: number;
  /** The largest reassembled message accepted; a larger one is refused before any of it is buffered. */
  maxMessageBytes: number;
  /** How many partially received messages one peer may have open at once. */
  maxOpenStreams: number;
  /**
   * The smallest chunk accepted but a stream's last (default min(16 KiB, chunkBytes)): without it 65,535 one-byte
   * chunks of a 64 KiB message held 130 times its size in frame and bookkeeping overhead. A stream may also not
   * declare more chunks than its size needs at this size.
   */
  minChunkBytes?: number;
  /** The largest single frame accepted (MESSAGE_TOO_LARGE above); none: only the transport's own cap. The coordinator
   *  sets socketBufferBytes(chunkBytes) and advertises it in the Welcome. */
  maxFrameBytes?: number;
  /** A chunked message that receives nothing for this long is dropped (STREAM_TIMEOUT); default 30 s. Enforced by
   *  whoever calls expireIdle (the coordinator sweeps its connections). */
  streamIdleTimeoutMs?: number;
}

/** Default of FramingLimits.minChunkBytes (capped by chunkBytes). */
export const DEFAULT_MIN_CHUNK_BYTES = 16 * 1024;
export const DEFAULT_STREAM_IDLE_TIMEOUT_MS = 30_000;

/** The smallest chunk `limits` accept but a stream's last. */
export function minChunkBytesOf(limits: Pick<FramingLimits, 'chunkBytes' | 'minChunkBytes'>): number {
  return Math.max(1, Math.min(limits.minChunkBytes ?? DEFAULT_MIN_CHUNK_BYTES, limits.chunkBytes));
}

/**
 * Turns one encoded envelope into the frames to send: itself when small, else Chunk envelopes. Refuses a message
 * over `maxMessageBytes` on the sending side too, so that an over-cap message is an explicit error, never a silent
 * disconnect.
 */
export function frameMessage(encoded: Uint8Array, streamId: string, limits: Pick<FramingLimits, 'chunkBytes' | 'maxMessageBytes'>): Uint8Array[] {
  if (encoded.byteLength > limits.maxMessageBytes) {
    throw new ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, `message of ${encoded.byteLength} bytes exceeds the ${limits.maxMessageBytes}-byte cap`);
  }
  if (encoded.byteLength <= limits.chunkBytes) return [encoded];
  const total = Math.ceil(encoded.byteLength / limits.chunkBytes);
  const frames: Uint8Array[] = [];
  for (let seq = 0; seq < total; seq++) {
    const data = encoded.subarray(seq * limits.chunkBytes, Math.min(encoded.byteLength, (seq + 1) * limits.chunkBytes));
    frames.push(encodeEnvelope({ chunk: { streamId, seq, total, totalBytes: encoded.byteLength, data } }));
  }
  return frames;
}

/**
 * Memory that completed chunked messages are reassembled into instead of a fresh buffer each: at 40 MB a fresh
 * buffer costs several times the copy into it in first-touch page faults. Lent to one message at a time; one instance
 * may serve every Reassembler of a process, since a message is handled before the next frame event runs. It grows to
 * the largest message reassembled into it (at most the framing cap) and keeps that size.
 */
export class ReassemblyBuffer {
  private memory: Uint8Array | null = null;
  private lent = false;

  /** `bytes` of the buffer, or null while it is lent to a message still being handled (the caller then allocates). */
  borrow(bytes: number): Uint8Array | null {
    if (this.lent) return null;
    if (!this.memory || this.memory.byteLength < bytes) this.memory = new Uint8Array(bytes);
    this.lent = true;
    return this.memory.subarray(0, bytes);
  }

  giveBack(): void {
    this.lent = false;
  }

  get isLent(): boolean {
    return this.lent;
  }
}

interface OpenStream {
  total: number;
  totalBytes: number;
  nextSeq: number;
  written: number;
  /** When its last chunk arrived (Date.now()), for the idle timeout. */
  lastAt: number;
  /**
   * The chunks' data as received (views into their frames, no copy): a declared size costs nothing until its bytes
   * arrive, and the message is copied exactly once, into one buffer of its final size, when it is complete (a buffer
   * grown by doubling copied every byte twice and allocated up to twice the message, which dominated decoding).
   */
  pieces: Uint8Array[];
}

/**
 * Reassembles Chunk envelopes from one peer. Frames of one stream must arrive in order (socket.io preserves the
 * order of one connection); streams may interleave.
 */
export class Reassembler {
  private readonly open = new Map<string, OpenStream>();
  /** Whether the last message returned was reassembled into `reuse`, which release() then gives back. */
  private borrowed = false;

  /**
   * With `reuse`, a chunked message is reassembled into that shared buffer: the envelope returned (its byte fields
   * are views of that memory) is valid only until release() is called; the next message may overwrite it. Without
   * release() the buffer stays lent and later messages get fresh memory, so forgetting it is slow, never unsafe.
   * `admit` may refuse a new chunked message (by throwing a ProtocolError) from its declared size, before any of it
   * is buffered: the coordinator's upload flow control.
   */
  constructor(
    private readonly limits: FramingLimits,
    private readonly reuse?: ReassemblyBuffer,
    private readonly admit?: (streamId: string, totalBytes: number) => void,
  ) {}

  /** Declares every envelope returned so far dead (nothing references them or their byte fields any more). */
  release(): void {
    if (!this.borrowed) return;
    this.borrowed = false;
    this.reuse!.giveBack();
  }

  /**
   * Accepts one received frame. Returns the complete envelope when one is ready, or null while a chunked message is
   * still arriving. Throws ProtocolError (and forgets the stream) on anything malformed or over the cap.
   */
  accept(frame: Uint8Array): fedunlearn.v1.Envelope | null {
    const env = decodeEnvelope(frame);
    if (env.body !== 'chunk') return env;
    // Decoded messages are class instances: every scalar field holds its value or the proto3 default.
    const c = env.chunk as fedunlearn.v1.Chunk;
    const id = c.streamId;
    const totalBytes = Number(c.totalBytes);
    const existing = this.open.get(id);
    const earlierBorrowed = this.borrowed;
    try {
      let s: OpenStream;
      if (existing) {
        s = existing;
      } else {
        if (c.seq !== 0) throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `stream ${id} starts at chunk ${c.seq}`, id);
        if (totalBytes > this.limits.maxMessageBytes) {
          throw new ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, `message of ${totalBytes} bytes exceeds the ${this.limits.maxMessageBytes}-byte cap`, id);
        }
        if (c.total < 1 || totalBytes < 1 || c.total > totalBytes) {
          throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `stream ${id}: ${c.total} chunks for ${totalBytes} bytes`, id);
        }
        const minChunk = minChunkBytesOf(this.limits);
        if (c.total > Math.ceil(totalBytes / minChunk)) {
          throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `stream ${id}: ${c.total} chunks for ${totalBytes} bytes; chunks but the last must hold at least ${minChunk} bytes`, id);
        }
        if (this.open.size >= this.limits.maxOpenStreams) {
          throw new ProtocolError(ErrorCode.RATE_LIMITED, `more than ${this.limits.maxOpenStreams} chunked messages open at once`, id);
        }
        this.admit?.(id, totalBytes);
        // Allocating the declared size up front would let a peer that sent a few tiny frames (before it even said
        // hello) pin maxOpenStreams x maxMessageBytes of memory; the buffer grows as data arrives instead.
        s = { total: c.total, totalBytes, nextSeq: 0, written: 0, lastAt: Date.now(), pieces: [] };
        this.open.set(id, s);
      }
      if (c.seq !== s.nextSeq || c.total !== s.total || totalBytes !== s.totalBytes) {
        throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `stream ${id}: chunk ${c.seq}/${c.total} out of order (expected ${s.nextSeq}/${s.total})`, id);
      }
      if (s.written + c.data.byteLength > s.totalBytes) {
        throw new ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, `stream ${id}: more bytes than the declared ${s.totalBytes}`, id);
      }
      if (c.seq + 1 < s.total && c.data.byteLength < minChunkBytesOf(this.limits)) {
        throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `stream ${id}: chunk ${c.seq} holds ${c.data.byteLength} bytes; chunks but the last must hold at least ${minChunkBytesOf(this.limits)}`, id);
      }
      s.lastAt = Date.now();
      if (c.data.byteLength > 0) s.pieces.push(c.data);
      s.written += c.data.byteLength;
      s.nextSeq++;
      if (s.nextSeq < s.total) return null;
      this.open.delete(id);
      if (s.written !== s.totalBytes) {
        throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `stream ${id}: ${s.written} bytes, declared ${s.totalBytes}`, id);
      }
      const inner = decodeEnvelope(this.concat(s.pieces, s.totalBytes));
      if (inner.body === 'chunk') throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `stream ${id}: nested chunk`, id);
      return inner;
    } catch (e) {
      this.open.delete(id);
      // A message that failed to decode reached nobody; an earlier one still unreleased keeps the buffer lent.
      if (this.borrowed && !earlierBorrowed) this.release();
      throw e;
    }
  }

  private concat(pieces: readonly Uint8Array[], totalBytes: number): Uint8Array {
    if (pieces.length === 1) return pieces[0]!;
    // While an earlier message is unreleased the shared buffer stays lent (borrow gives null): fresh memory then.
    const lent = this.reuse?.borrow(totalBytes) ?? null;
    if (lent) this.borrowed = true;
    const out = lent ?? new Uint8Array(totalBytes);
    let at = 0;
    for (const p of pieces) {
      out.set(p, at);
      at += p.byteLength;
    }
    return out;
  }

  /** Bytes currently held for incomplete messages: exactly the data received so far. */
  get bufferedBytes(): number {
    let n = 0;
    for (const s of this.open.values()) n += s.written;
    return n;
  }

  /** Incomplete messages being received now. */
  get openStreams(): number {
    return this.open.size;
  }

  /** Drops the streams that received nothing for `idleMs` (at `now`); returns their ids. */
  expireIdle(idleMs: number, now = Date.now()): string[] {
    const gone: string[] = [];
    for (const [id, s] of this.open) {
      if (now - s.lastAt >= idleMs) {
        this.open.delete(id);
        gone.push(id);
      }
    }
    return gone;
  }

  clear(): void {
    this.open.clear();
  }
}
