import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import { DType, decodeTensorInto, encodeTensor, layerView, type WeightLayout } from '@fedunlearn/protocol';

/**
 * Weight blobs on disk: a small header of our own followed by the tensor codec's bytes, layer after layer.
 *
 *   0  magic 'FUWB'            8  layer count   u32 LE
 *   4  format version u8 (1)  12  value count   u32 LE
 *   5  encoding u8            16  int8 only: one f64 LE scale per layer
 *   6  reserved u16 (0)       ..  payload: fp32 / fp16 little-endian, or int8
 *
 * For fp32 the payload is exactly the float32 little-endian bytes a model's sha256 is taken over.
 */

export type BlobEncoding = 'fp32' | 'fp16' | 'int8';

const MAGIC = 0x42575546; // 'FUWB' read as a little-endian u32
const FORMAT_VERSION = 1;
const HEADER_BYTES = 16;
const ENCODING_CODE: Record<BlobEncoding, number> = { fp32: 1, fp16: 2, int8: 3 };
const ENCODING_DTYPE: Record<BlobEncoding, DType> = { fp32: DType.FLOAT32, fp16: DType.FLOAT16, int8: DType.INT8 };
const WIDTH: Record<BlobEncoding, number> = { fp32: 4, fp16: 2, int8: 1 };
/** Largest finite float16: beyond it a value would turn into Infinity. */
const FP16_MAX = 65504;

export class BlobFormatError extends Error {
  override name = 'BlobFormatError';
}

export interface EncodedBlob {
  bytes: Uint8Array;
  /** The encoding actually used: 'fp16' falls back to 'fp32' when a value is out of float16 range. */
  encoding: BlobEncoding;
}

/** Encodes float32 values laid out by `layout`. Non-finite values are refused: they can never be decoded back. */
export function encodeBlob(layout: WeightLayout, values: Float32Array, requested: BlobEncoding): EncodedBlob {
  if (values.length !== layout.totalSize) throw new RangeError(`${values.length} values for a layout of ${layout.totalSize}`);
  let maxAbs = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isFinite(v)) throw new RangeError(`non-finite value at index ${i}`);
    const a = Math.abs(v);
    if (a > maxAbs) maxAbs = a;
  }
  // Quantising to fp16 past its range would store Infinity; keeping such an update exact costs only its size.
  const encoding: BlobEncoding = requested === 'fp16' && maxAbs > FP16_MAX ? 'fp32' : requested;
  const layers = layout.specs.length;
  const scalesBytes = encoding === 'int8' ? layers * 8 : 0;
  const out = new Uint8Array(HEADER_BYTES + scalesBytes + values.length * WIDTH[encoding]);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, MAGIC, true);
  dv.setUint8(4, FORMAT_VERSION);
  dv.setUint8(5, ENCODING_CODE[encoding]);
  dv.setUint16(6, 0, true);
  dv.setUint32(8, layers, true);
  dv.setUint32(12, values.length, true);
  let at = HEADER_BYTES + scalesBytes;
  for (let l = 0; l < layers; l++) {
    const spec = layout.specs[l]!;
    const t = encodeTensor(spec.name, spec.shape, layerView(layout, values, l), ENCODING_DTYPE[encoding]);
    if (encoding === 'int8') dv.setFloat64(HEADER_BYTES + l * 8, t.scale ?? 0, true);
    const data = t.data ?? new Uint8Array(0);
    out.set(data, at);
    at += data.byteLength;
  }
  return { bytes: out, encoding };
}

export interface BlobHeader {
  encoding: BlobEncoding;
  layers: number;
  values: number;
  payloadOffset: number;
}

/** Parses and checks a blob's header against the layout; throws BlobFormatError on any inconsistency. */
export function readBlobHeader(layout: WeightLayout, bytes: Uint8Array): BlobHeader {
  if (bytes.byteLength < HEADER_BYTES) throw new BlobFormatError(`blob of ${bytes.byteLength} bytes is shorter than its header`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dv.getUint32(0, true) !== MAGIC) throw new BlobFormatError('not a weight blob (bad magic)');
  if (dv.getUint8(4) !== FORMAT_VERSION) throw new BlobFormatError(`unknown blob format version ${dv.getUint8(4)}`);
  const code = dv.getUint8(5);
  const encoding = (Object.keys(ENCODING_CODE) as BlobEncoding[]).find((e) => ENCODING_CODE[e] === code);
  if (encoding === undefined) throw new BlobFormatError(`unknown blob encoding ${code}`);
  if (dv.getUint16(6, true) !== 0) throw new BlobFormatError('blob header reserved bytes are not zero');
  const layers = dv.getUint32(8, true);
  const values = dv.getUint32(12, true);
  if (layers !== layout.specs.length || values !== layout.totalSize) {
    throw new BlobFormatError(`blob holds ${layers} layers / ${values} values, the layout ${layout.specs.length} / ${layout.totalSize}`);
  }
  const payloadOffset = HEADER_BYTES + (encoding === 'int8' ? layers * 8 : 0);
  if (bytes.byteLength !== payloadOffset + values * WIDTH[encoding]) {
    throw new BlobFormatError(`blob is ${bytes.byteLength} bytes, expected ${payloadOffset + values * WIDTH[encoding]}`);
  }
  return { encoding, layers, values, payloadOffset };
}

/** The payload bytes (for fp32 blobs: the float32 little-endian weights). */
export function blobPayload(layout: WeightLayout, bytes: Uint8Array): Uint8Array {
  const h = readBlobHeader(layout, bytes);
  return bytes.subarray(h.payloadOffset);
}

/** Decodes a blob to float32, dequantising fp16 / int8. */
export function decodeBlob(layout: WeightLayout, bytes: Uint8Array): { values: Float32Array; encoding: BlobEncoding } {
  const h = readBlobHeader(layout, bytes);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(layout.totalSize);
  const width = WIDTH[h.encoding];
  for (let l = 0; l < h.layers; l++) {
    const spec = layout.specs[l]!;
    const off = layout.offsets[l]!;
    const size = layout.sizes[l]!;
    const data = bytes.subarray(h.payloadOffset + off * width, h.payloadOffset + (off + size) * width);
    const scale = h.encoding === 'int8' ? dv.getFloat64(HEADER_BYTES + l * 8, true) : undefined;
    decodeTensorInto({ name: spec.name, shape: [...spec.shape], dtype: ENCODING_DTYPE[h.encoding], data, scale }, spec.shape, layerView(layout, out, l));
  }
  return { values: out, encoding: h.encoding };
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** sha256 of float32 values as little-endian bytes (the model hash). */
export function weightsSha256(values: Float32Array): string {
  const t = encodeTensor('w', [values.length], values, DType.FLOAT32);
  return sha256Hex(t.data ?? new Uint8Array(0));
}

// ---------------------------------------------------------------------------------------------------------------
// Durable files. A blob becomes visible under its final name only once its bytes are on disk: write a temporary
// name, fsync it, rename, fsync the directory (the rename is only durable once the directory entry is).

/**
 * The calls that make writes durable: fsync(2) of a file or of a directory (its entries), and the commit of a
 * metadata transaction. A seam, not a mock: the store takes one so that a test can record which blobs and directories
 * were flushed, and in which order against the commit (history/durability.test.ts); `kernelSync` does the real thing,
 * and a recorder must call through to it. A process kill keeps the page cache, so no crash test can see a missing
 * fsync: this order is what shows that a commit never refers to bytes that a power loss could take back.
 */
export interface DiskSync {
  /** Flushes the open file or directory `fd` (opened from `file`) to disk. */
  fsyncSync(fd: number, file: string): void;
  /** The same off the event loop. */
  fsync(handle: fsp.FileHandle, file: string): Promise<void>;
  /**
   * Runs a metadata commit. `synchronous` is SQLite's PRAGMA synchronous on the committing connection at that moment
   * (2 = FULL: the WAL is fsynced before the commit returns; 0 = OFF would leave it to the page cache).
   */
  commit(run: () => void, synchronous: number): void;
}

/** The kernel's fsync, and the commit as it is. */
export const kernelSync: DiskSync = {
  fsyncSync: (fd) => fs.fsyncSync(fd),
  fsync: (handle) => handle.sync(),
  commit: (run) => run(),
};

/** Marks temporary files so that garbage collection after a crash can recognise them. */
export const TEMP_MARK = '.tmp-';

function tempNameFor(file: string): string {
  return `${file}${TEMP_MARK}${randomBytes(6).toString('hex')}`;
}

/** Creates a directory (and parents), fsyncing each parent whose entries changed. */
export function ensureDirSync(dir: string, sync: DiskSync = kernelSync): void {
  if (fs.existsSync(dir)) return;
  ensureDirSync(path.dirname(dir), sync);
  try {
    fs.mkdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  fsyncPathSync(path.dirname(dir), sync);
}

/** Flushes a file's data, or a directory's entries, to disk. */
export function fsyncPathSync(file: string, sync: DiskSync = kernelSync): void {
  const fd = fs.openSync(file, 'r');
  try {
    sync.fsyncSync(fd, file);
  } finally {
    fs.closeSync(fd);
  }
}

/** Flushes a file's data, or a directory's entries, to disk, off the event loop. */
export async function fsyncPath(file: string, sync: DiskSync = kernelSync): Promise<void> {
  const h = await fsp.open(file, 'r');
  try {
    await sync.fsync(h, file);
  } finally {
    await h.close();
  }
}

/** Writes `data` to `file` durably and atomically (synchronous: for commits, which are synchronous). */
export function writeFileDurableSync(file: string, data: Uint8Array, sync: DiskSync = kernelSync): void {
  const dir = path.dirname(file);
  ensureDirSync(dir, sync);
  const tmp = tempNameFor(file);
  try {
    const fd = fs.openSync(tmp, 'wx');
    try {
      let done = 0;
      while (done < data.byteLength) done += fs.writeSync(fd, data, done, data.byteLength - done);
      sync.fsyncSync(fd, tmp);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fsyncPathSync(dir, sync);
}

/**
 * Writes `data` to a new file `file` without fsyncing it, off the event loop: for files nothing refers to until they
 * are made durable (fsyncPath of the file and of its directory), so that a crash in between leaves only garbage.
 * Throws the write's own error (EEXIST when `file` exists, which is left as it was; ENOSPC when the disk is full, and
 * then no partial file is left).
 */
export async function writeFileUnsynced(file: string, data: Uint8Array, sync: DiskSync = kernelSync): Promise<void> {
  ensureDirSync(path.dirname(file), sync);
  try {
    await fsp.writeFile(file, data, { flag: 'wx' });
  } catch (e) {
    // A partial file (disk full) is ours to remove; a file that was there before ('wx' refused it) is not.
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') await fsp.rm(file, { force: true });
    throw e;
  }
}

/** Unlinks files (missing ones are skipped) and fsyncs their directories; returns the bytes freed. */
export async function unlinkDurable(files: readonly string[], sync: DiskSync = kernelSync): Promise<number> {
  let freed = 0;
  const dirs = new Set<string>();
  for (const f of files) {
    try {
      const st = await fsp.stat(f);
      await fsp.unlink(f);
      freed += st.size;
      dirs.add(path.dirname(f));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
  for (const d of dirs) await fsyncPath(d, sync);
  return freed;
}
