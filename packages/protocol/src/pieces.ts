import { ErrorCode, ProtocolError } from './errors.js';
import { fedunlearn } from './gen/proto.js';
import type { Envelope } from './envelope.js';
import type { FramingLimits } from './chunking.js';
import type { WireTensor } from './tensor-codec.js';

/**
 * Envelopes encoded as lists of byte pieces whose concatenation is exactly protobufjs's encoding, with tensor data as
 * views of the caller's memory, and chunk frames cut straight from those pieces. A large Update or Task is thus
 * copied once, into its frames, instead of into a full-size message buffer and then again into frames; and a
 * dispatcher encodes the global weights once per round for all of its clients.
 */

const pb = fedunlearn.v1;

/** Wire type 2 (length-delimited) tags. */
const TAG_UPDATE_DELTA = (2 << 3) | 2;
const TAG_TASK_WEIGHTS = (6 << 3) | 2;
const TAG_TENSOR_DATA = (4 << 3) | 2;
const TAG_ENVELOPE_TASK = (4 << 3) | 2;
const TAG_ENVELOPE_UPDATE = (5 << 3) | 2;
const TAG_ENVELOPE_CHUNK = (10 << 3) | 2;
const TAG_CHUNK_DATA = (5 << 3) | 2;

/** The encoded elements of one repeated Tensor field (tag, length and bytes of each tensor). */
export interface TensorListBytes {
  readonly pieces: readonly Uint8Array[];
  readonly byteLength: number;
}

function varintLength(n: number): number {
  let len = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

function writeVarint(out: Uint8Array, at: number, n: number): number {
  while (n >= 0x80) {
    out[at++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  out[at++] = n;
  return at;
}

function tagAndLength(tag: number, len: number): Uint8Array {
  const out = new Uint8Array(1 + varintLength(len));
  out[0] = tag;
  writeVarint(out, 1, len);
  return out;
}

/** The fields of `obj` named in `keys` that are set, as protobufjs's fromObject would see them. */
function pick<T extends object>(obj: T, keys: readonly (keyof T)[]): Partial<T> {
  const out: Partial<T> = {};
  for (const k of keys) if (obj[k] != null) out[k] = obj[k];
  return out;
}

/** Every field but `keys`: the fields that follow a message's tensor list (protobuf writes fields in number order), so
 *  that a field added to the schema later is never left out of the pieces. */
function omit<T extends object>(obj: T, keys: readonly (keyof T)[]): Partial<T> {
  const out: Partial<T> = { ...obj };
  for (const k of keys) delete out[k];
  return out;
}

function encodeTensorElement(tag: number, t: WireTensor, pieces: Uint8Array[]): number {
  const head = pb.Tensor.encode(pb.Tensor.fromObject(pick(t, ['name', 'dtype', 'shape']) as Record<string, unknown>)).finish();
  const tail = pb.Tensor.encode(pb.Tensor.fromObject(omit(t, ['name', 'dtype', 'shape', 'data']) as Record<string, unknown>)).finish();
  const data = t.data;
  const dataField = data != null ? tagAndLength(TAG_TENSOR_DATA, data.byteLength) : null;
  const len = head.byteLength + (dataField ? dataField.byteLength + data!.byteLength : 0) + tail.byteLength;
  const prefix = tagAndLength(tag, len);
  pieces.push(prefix, head);
  if (dataField) pieces.push(dataField, data!);
  if (tail.byteLength > 0) pieces.push(tail);
  return prefix.byteLength + len;
}

function tensorList(tag: number, tensors: readonly WireTensor[]): TensorListBytes {
  const pieces: Uint8Array[] = [];
  let n = 0;
  for (const t of tensors) n += encodeTensorElement(tag, t, pieces);
  return { pieces, byteLength: n };
}

/** A Task's `weights`, encoded once (data as views) for every client of a dispatch. */
export function encodeTaskWeights(tensors: readonly WireTensor[]): TensorListBytes {
  return tensorList(TAG_TASK_WEIGHTS, tensors);
}

function spliced(envTag: number, head: Uint8Array, list: TensorListBytes, tail: Uint8Array): Uint8Array[] {
  const inner = head.byteLength + list.byteLength + tail.byteLength;
  return [tagAndLength(envTag, inner), head, ...list.pieces, tail];
}

/**
 * `msg` encoded as pieces (concatenated: exactly encodeEnvelope(msg)). For a Task, `weights` may be passed
 * pre-encoded (encodeTaskWeights), in which case msg.task.weights must be absent.
 */
export function envelopePieces(msg: Envelope, taskWeights?: TensorListBytes): Uint8Array[] {
  if (msg.update && (msg.update.delta?.length ?? 0) > 0) {
    const u = msg.update;
    const head = pb.Update.encode(pb.Update.fromObject(pick(u, ['taskId']) as Record<string, unknown>)).finish();
    const tail = pb.Update.encode(pb.Update.fromObject(omit(u, ['taskId', 'delta']) as Record<string, unknown>)).finish();
    return spliced(TAG_ENVELOPE_UPDATE, head, tensorList(TAG_UPDATE_DELTA, u.delta!), tail);
  }
  if (msg.task && (taskWeights || (msg.task.weights?.length ?? 0) > 0)) {
    const t = msg.task;
    if (taskWeights && (t.weights?.length ?? 0) > 0) throw new RangeError('weights given both in the task and pre-encoded');
    const head = pb.Task.encode(pb.Task.fromObject(pick(t, ['taskId', 'kind', 'round', 'modelVersion', 'topologyJson']) as Record<string, unknown>)).finish();
    const tail = pb.Task.encode(pb.Task.fromObject(omit(t, ['taskId', 'kind', 'round', 'modelVersion', 'topologyJson', 'weights']) as Record<string, unknown>)).finish();
    return spliced(TAG_ENVELOPE_TASK, head, taskWeights ?? encodeTaskWeights(t.weights!), tail);
  }
  return [pb.Envelope.encode(pb.Envelope.fromObject(msg as Record<string, unknown>)).finish()];
}

export function piecesLength(pieces: readonly Uint8Array[]): number {
  let n = 0;
  for (const p of pieces) n += p.byteLength;
  return n;
}

type NodeBufferCtor = { allocUnsafeSlow(size: number): Uint8Array };
const NodeBuffer = (globalThis as { Buffer?: NodeBufferCtor }).Buffer;

/**
 * `n` bytes of new memory whose every byte the caller writes. Under Node without zeroing (malloc, not calloc): a
 * zeroed 512 KB frame is fresh pages, so encoding paid a page fault per 4 KB on top of the copy (frames cost 3 to 6
 * times a memcpy of their bytes, unzeroed ones about 2 to 3). A plain Uint8Array view, never a pooled Buffer slice.
 */
function uninitialised(n: number): Uint8Array {
  if (!NodeBuffer) return new Uint8Array(n);
  const b = NodeBuffer.allocUnsafeSlow(n);
  return new Uint8Array(b.buffer, b.byteOffset, n);
}

/**
 * The frames to send for a message given as pieces: byte for byte what frameMessage gives for their concatenation,
 * each frame allocated at its final size and filled straight from the pieces.
 */
export function framePieces(pieces: readonly Uint8Array[], streamId: string, limits: Pick<FramingLimits, 'chunkBytes' | 'maxMessageBytes'>): Uint8Array[] {
  const totalBytes = piecesLength(pieces);
  if (totalBytes > limits.maxMessageBytes) {
    throw new ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, `message of ${totalBytes} bytes exceeds the ${limits.maxMessageBytes}-byte cap`);
  }
  if (totalBytes <= limits.chunkBytes) {
    if (pieces.length === 1) return [pieces[0]!];
    const one = new Uint8Array(totalBytes);
    let at = 0;
    for (const p of pieces) {
      one.set(p, at);
      at += p.byteLength;
    }
    return [one];
  }
  const total = Math.ceil(totalBytes / limits.chunkBytes);
  const frames: Uint8Array[] = [];
  let piece = 0;
  let within = 0;
  for (let seq = 0; seq < total; seq++) {
    const n = Math.min(limits.chunkBytes, totalBytes - seq * limits.chunkBytes);
    const head = pb.Chunk.encode(pb.Chunk.fromObject({ streamId, seq, total, totalBytes })).finish();
    const chunkLen = head.byteLength + 1 + varintLength(n) + n;
    const frame = uninitialised(1 + varintLength(chunkLen) + chunkLen);
    frame[0] = TAG_ENVELOPE_CHUNK;
    let at = writeVarint(frame, 1, chunkLen);
    frame.set(head, at);
    at += head.byteLength;
    frame[at++] = TAG_CHUNK_DATA;
    at = writeVarint(frame, at, n);
    let left = n;
    while (left > 0) {
      const p = pieces[piece]!;
      const take = Math.min(left, p.byteLength - within);
      frame.set(take === p.byteLength ? p : p.subarray(within, within + take), at);
      at += take;
      left -= take;
      within += take;
      if (within === p.byteLength) {
        piece++;
        within = 0;
      }
    }
    frames.push(frame);
  }
  return frames;
}
