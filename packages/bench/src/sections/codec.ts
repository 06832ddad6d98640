import {
  decodeWeights,
  DEFAULT_FRAMING,
  encodeTensor,
  envelopePieces,
  expectBody,
  framePieces,
  layerView,
  Reassembler,
  ReassemblyBuffer,
} from '@fedunlearn/protocol';
import { compare, spreadOf, summarise } from '../measure.js';
import { denseLayout, filled, round } from '../fixtures.js';
import type { SectionOptions, SectionResult } from '../section.js';

/**
 * Encode plus decode of one client update through the real wire path (tensors from per-layer views, the Update
 * envelope cut straight into chunk frames, reassembly into the coordinator's shared reassembly buffer, decode and
 * validation into a float32 buffer, as the dispatcher does), against copying the same bytes once with Uint8Array.set.
 */
export async function run(opts: SectionOptions): Promise<SectionResult> {
  const layout = denseLayout(10_000_000);
  const P = layout.totalSize;
  opts.log(`codec: an update of ${P} float32 values (${(P * 4 / 1e6).toFixed(1)} MB), ${DEFAULT_FRAMING.chunkBytes}-byte chunks`);
  const delta = filled(P, 7);
  const frameBytes = { total: 0, frames: 0 };
  const target = new Float32Array(P);
  // Shared by every connection of a coordinator (transport/socket-server.ts), so it outlives each message.
  const reassembly = new ReassemblyBuffer();
  let sink = 0;

  const encodeMs: number[] = [];
  const decodeMs: number[] = [];
  const candidate = {
    run: () => {
      const t0 = performance.now();
      const tensors = layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, delta, i)));
      // As Channel.send does it: the Update as pieces (tensor data as views), cut straight into chunk frames.
      const pieces = envelopePieces({ update: { taskId: 'task-0123456789', delta: tensors, numExamples: 600, metrics: { loss: 0.5 } } });
      const frames = framePieces(pieces, 'bench-strm', DEFAULT_FRAMING);
      const t1 = performance.now();
      const reassembler = new Reassembler(DEFAULT_FRAMING, reassembly);
      let env = null;
      frameBytes.total = 0;
      for (const f of frames) {
        frameBytes.total += f.byteLength;
        env = reassembler.accept(f);
      }
      frameBytes.frames = frames.length;
      if (!env) throw new Error('the reassembler did not complete the message');
      const update = expectBody(env, 'update');
      // Into a reused buffer, as the dispatcher decodes answers (its buffers are recycled once an answer is folded).
      const out = decodeWeights(update.delta ?? [], layout, target);
      // As Channel.receive does once the handler returned: the reassembled bytes are dead, the next message reuses them.
      reassembler.release();
      sink += out[P - 1]!;
      encodeMs.push(t1 - t0);
      decodeMs.push(performance.now() - t1);
    },
  };
  const src = new Uint8Array(delta.buffer, delta.byteOffset, delta.byteLength);
  const dst = new Uint8Array(src.byteLength);
  const memcpy = {
    run: () => {
      dst.set(src);
      sink += dst[dst.length - 1]!;
    },
  };
  const c = await compare(candidate, memcpy, { warmup: 1, repeats: opts.quick ? 3 : 11 });
  // The same copy into freshly allocated memory: what any path that must hand out new buffers (frames to the socket,
  // the reassembled message) pays in first-touch page faults on top of the copy.
  const freshCopy = {
    run: () => {
      const d = new Uint8Array(src.byteLength);
      d.set(src);
      sink += d[d.length - 1]!;
    },
  };
  const fresh = await compare(freshCopy, memcpy, { warmup: 1, repeats: opts.quick ? 3 : 11 });
  const med = (xs: number[]) => spreadOf(xs.slice(1)).median;
  if (!Number.isFinite(sink)) throw new Error('codec produced a non-finite value');
  return {
    ratioToMemcpy: round(c.ratio, 4),
    params: P,
    payloadBytes: P * 4,
    wireBytes: frameBytes.total,
    frames: frameBytes.frames,
    encodeDecodeMBps: round((P * 4) / (c.candidate.median / 1000) / 1e6, 1),
    memcpyMBps: round((P * 4) / (c.baseline.median / 1000) / 1e6, 1),
    encodeMs: round(med(encodeMs), 2),
    decodeMs: round(med(decodeMs), 2),
    memcpyMs: round(c.baseline.median, 2),
    freshCopyRatioToMemcpy: round(fresh.ratio, 4),
    detail: summarise(c),
  };
}
