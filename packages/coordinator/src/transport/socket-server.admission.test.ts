import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { io, type Socket } from 'socket.io-client';
import { Channel, DEFAULT_FRAMING, ErrorCode, fedunlearn, KeyDerivation, PROTOCOL_VERSION } from '@fedunlearn/protocol';
import { createLogger } from '../logger.js';
import { ClientRegistry } from './client-registry.js';
import { SocketServer } from './socket-server.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('hellos queue for their credential lookup: one waiting beyond the hello timeout is still welcomed, the overflow is told RATE_LIMITED', async () => {
  const http = createServer();
  const registry = new ClientRegistry();
  let checking = 0;
  let peak = 0;
  const server = new SocketServer(
    http,
    registry,
    {
      // A slow credential lookup (a busy store); the proof itself is accepted.
      plan: async () => {
        peak = Math.max(peak, ++checking);
        await sleep(400);
        checking--;
        return { keyDerivation: KeyDerivation.SHA256, enrol: false, stored: null };
      },
      verify: async () => undefined,
    },
    { update: () => undefined, uploadRequest: () => undefined, admitStream: () => undefined, grantAboveBytes: () => 0, forgetRequest: () => undefined, clientError: () => undefined },
    { framing: DEFAULT_FRAMING, helloTimeoutMs: 500, heartbeatIntervalMs: 5_000, coordinatorVersion: 'test', maxPendingHellos: 1, helloConcurrency: 1 },
    createLogger({ level: 'silent' }),
  );
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  const sockets: Socket[] = [];
  try {
    const answers = await Promise.all(
      [0, 1, 2, 3].map(async (i) => {
        const socket = io(url, { transports: ['websocket'], reconnection: false });
        sockets.push(socket);
        const first = new Promise<fedunlearn.v1.Envelope>((resolve) => {
          const channel: Channel = new Channel(
            socket,
            { message: (env) => (env.body === 'challenge' ? channel.send({ helloProof: { proof: new Uint8Array(32) } }) : resolve(env)) },
            DEFAULT_FRAMING,
          );
          socket.on('connect', () => {
            channel.send({ hello: { clientId: `c${i}`, sdkVersion: 't', numExamples: 1, backend: 'cpu', protocolVersion: PROTOCOL_VERSION } });
          });
        });
        const env = await first;
        return env.body === 'welcome' ? 'welcome' : fedunlearn.v1.ErrorCode[env.error!.code ?? 0];
      }),
    );
    // One check runs, one waits (800 ms in all: longer than the 500 ms hello timeout, which the client met), the
    // other two are refused at once. Which two is up to arrival order.
    assert.deepEqual([...answers].sort(), ['RATE_LIMITED', 'RATE_LIMITED', 'welcome', 'welcome']);
    assert.equal(peak, 1, 'credential checks ran one at a time');
    assert.equal(registry.size, 2);
    assert.equal(server.counters.refused[fedunlearn.v1.ErrorCode[ErrorCode.RATE_LIMITED]], 2);
  } finally {
    for (const s of sockets) s.disconnect();
    await server.close();
    await new Promise((r) => http.close(r));
  }
});
