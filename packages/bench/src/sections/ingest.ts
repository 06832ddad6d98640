import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Server } from 'socket.io';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { DEFAULT_FRAMING, encodeEnvelope, encodeWeights, socketBufferBytes, WIRE_EVENT } from '@fedunlearn/protocol';
import { connectProtocolClient, connectRawClient, encodedUpdate, wireFrames, type LoadClient } from '../load-clients.js';
import { compare, summarise } from '../measure.js';
import { filled, round } from '../fixtures.js';
import type { SectionOptions, SectionResult } from '../section.js';

const CLIENTS = 100;

/**
 * A real Coordinator (in process, SQLite history in a temp dir, every round's updates kept) running training rounds
 * with 100 socket.io clients on loopback: tasks out, updates in, decoded, validated, aggregated, staged durably and
 * committed. Baseline: the same 100 clients exchange the same frames with a plain socket.io server that only counts
 * bytes (task frames out, update frames back), interleaved with the coordinator's rounds.
 */
export async function run(opts: SectionOptions): Promise<SectionResult> {
  const def = builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed: 1 });
  const layout = def.initial.layout;
  const delta = filled(layout.totalSize, 3, 0.001);
  const template = { delta: encodeWeights({ layout, values: delta }), numExamples: 600 };
  const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-bench-ingest-'));
  const clients: LoadClient[] = [];
  let coordinator: Coordinator | null = null;
  let raw: Server | null = null;
  const rawHttp = createServer();
  try {
    coordinator = await Coordinator.create({
      enrolment: 'open',
      store: openSqliteHistory(dir),
      dataDir: dir,
      model: def,
      federation: {
        clientsPerRound: CLIENTS,
        minClients: CLIENTS,
        roundDeadlineMs: 120_000,
        seed: 1,
        hyper: { learningRate: 0.1, batchSize: 32, localEpochs: 1 },
        maxRoundAttempts: 1,
        waitForClientsMs: 30_000,
      },
      historyInterval: 1,
      retention: 'fp32',
      logger: createLogger({ level: 'silent' }),
    });
    const { url } = await coordinator.listen(0);

    // The raw baseline sends the bytes a task and an update take on the wire, framed the same way.
    const taskFrames = wireFrames(
      encodeEnvelope({
        task: {
          taskId: 'x'.repeat(21),
          kind: 1,
          round: 1,
          modelVersion: 'x'.repeat(21),
          topologyJson: def.topologyJson,
          weights: encodeWeights(def.initial),
          hyper: { learningRate: 0.1, batchSize: 32, localEpochs: 1, seed: 1, optimizer: 'sgd' },
          deadlineUnixMs: Date.now(),
        },
      }),
    );
    const updateFrames = wireFrames(encodedUpdate('x'.repeat(21), template));
    const taskBytes = taskFrames.reduce((n, f) => n + f.byteLength, 0);
    const updateBytes = updateFrames.reduce((n, f) => n + f.byteLength, 0);
    raw = new Server(rawHttp, { maxHttpBufferSize: socketBufferBytes(DEFAULT_FRAMING.chunkBytes), serveClient: false });
    let rawRound: { left: number; done: () => void } | null = null;
    raw.on('connection', (socket) => {
      let got = 0;
      socket.on(WIRE_EVENT, (frame: Uint8Array) => {
        got += frame.byteLength;
        if (got < updateBytes) return;
        got = 0;
        if (rawRound && --rawRound.left === 0) rawRound.done();
      });
    });
    await new Promise<void>((r) => rawHttp.listen(0, '127.0.0.1', r));
    const addr = rawHttp.address();
    const rawUrl = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;

    opts.log(`ingest: connecting ${CLIENTS} clients (model of ${layout.totalSize} values, ${(taskBytes / 1e3).toFixed(0)} kB task, ${(updateBytes / 1e3).toFixed(0)} kB update)`);
    for (let i = 0; i < CLIENTS; i += 20) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(20, CLIENTS - i) }, (_, j) => connectProtocolClient(url, `bench-${i + j}`, template)),
      );
      clients.push(...batch);
      clients.push(...(await Promise.all(batch.map(() => connectRawClient(rawUrl, taskBytes, updateFrames)))));
    }

    const c0 = coordinator;
    let committed = 0;
    const candidate = {
      run: async () => {
        const [r] = await c0.runRounds(1);
        if (!r || r.participants.length !== CLIENTS) throw new Error(`round had ${r?.participants.length} of ${CLIENTS} participants`);
        committed++;
      },
    };
    const rawServer = raw;
    const baseline = {
      run: () =>
        new Promise<void>((done) => {
          rawRound = { left: CLIENTS, done };
          for (const s of rawServer.sockets.sockets.values()) for (const f of taskFrames) s.emit(WIRE_EVENT, f);
        }),
    };
    const c = await compare(candidate, baseline, { warmup: 1, repeats: opts.quick ? 2 : 7 });
    const stats = await coordinator.store.stats();
    const perRound = CLIENTS * (taskBytes + updateBytes);
    return {
      ratioToRawSocket: round(c.ratio, 4),
      clients: CLIENTS,
      params: layout.totalSize,
      roundsCommitted: committed,
      bytesPerRound: perRound,
      coordinatorMBps: round(perRound / (c.candidate.median / 1000) / 1e6, 1),
      rawMBps: round(perRound / (c.baseline.median / 1000) / 1e6, 1),
      updatesStored: stats.updates,
      detail: summarise(c),
    };
  } finally {
    for (const cl of clients) cl.close();
    await coordinator?.stop();
    if (raw) await new Promise<void>((r) => raw!.close(() => r()));
    else rawHttp.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
