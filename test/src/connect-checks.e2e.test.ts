import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import type { Coordinator } from '@fedunlearn/coordinator';
import { federation, mnistScenario, startCoordinator, tempDir, waitUntil } from './support.js';

/**
 * The SDK refuses at connect what cannot work, and says why: data the federation's model cannot take (it used to
 * connect, then fail every task while the coordinator kept choosing it), and a coordinator it cannot reach (it used
 * to wait for the timeout and report `no welcome ... within N ms` whatever the cause).
 */

const WAIT_MS = 10_000;
const scenario = mnistScenario(2, 10);
let coordinator: Coordinator;
let url: string;
let tmp: { dir: string; cleanup(): void };
const open: FederatedClient[] = [];

before(async () => {
  tmp = tempDir('connect-checks');
  ({ coordinator, url } = await startCoordinator(tmp.dir, scenario.def, federation({ minClients: 1 })));
});
after(async () => {
  await Promise.all(open.map((c) => c.close()));
  await coordinator.stop();
  tmp.cleanup();
});

function client(id: string, data: LocalDataset, at = url): FederatedClient {
  const c = new FederatedClient({ url: at, clientId: id, secret: `secret-of-${id}`, data, reconnect: { delayMs: 100, maxDelayMs: 500 } });
  open.push(c);
  return c;
}

/** `count` examples of `inputShape` with labels below `numClasses`. */
function synthetic(inputShape: number[], numClasses: number, count = 8): LocalDataset {
  const size = inputShape.reduce((a, b) => a * b, 1);
  const y = Int32Array.from({ length: count }, (_, i) => i % numClasses);
  return { x: new Float32Array(count * size).fill(0.5), y, inputShape, numClasses, count };
}

test('data whose examples do not fit the federation\'s model: connect() rejects with both shapes and the client leaves', async () => {
  const wrongShape = client('wrong-shape', synthetic([10], 10));
  await assert.rejects(wrongShape.connect(WAIT_MS), /dataset examples are \[10\], the federation's model takes \[784\]/);
  const image = client('image-layout', synthetic([28, 28, 1], 10));
  await assert.rejects(image.connect(WAIT_MS), /dataset examples are \[28,28,1\], the federation's model takes \[784\]/);
  const tooManyClasses = client('too-many-classes', synthetic([784], 12, 12));
  await assert.rejects(tooManyClasses.connect(WAIT_MS), /dataset has 12 classes, the federation's model 10/);
  // None of them stays where the coordinator would choose it for a round.
  await waitUntil(() => ['wrong-shape', 'image-layout', 'too-many-classes'].every((id) => !coordinator.registry.get(id)), WAIT_MS, 'the refused clients to leave');

  // A device with fewer classes than the model is fine, and so is the right shape: it trains a round.
  const fits = client('fits', { ...scenario.parts[0]!, numClasses: 10 });
  await fits.connect(WAIT_MS);
  assert.deepEqual(fits.federationModel, { inputShape: [784], numClasses: 10 });
  const fewer = client('fewer-classes', synthetic([784], 3));
  await fewer.connect(WAIT_MS);
  const [round] = await coordinator.runRounds(1);
  assert.deepEqual([...round!.participants].sort(), ['fewer-classes', 'fits']);
  assert.deepEqual(round!.missing, []);
});

test('a coordinator that cannot be reached: connect() rejects at once with the cause, not a timeout', async (t) => {
  const data = scenario.parts[1]!;
  await t.test('connection refused', async () => {
    // A port that was just free: nothing listens there.
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const port = (probe.address() as AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    await assert.rejects(client('refused', data, `http://127.0.0.1:${port}`).connect(WAIT_MS), (e: Error) => {
      assert.match(e.message, new RegExp(`^cannot connect to http://127\\.0\\.0\\.1:${port}: connection refused \\(nothing listens at 127\\.0\\.0\\.1:${port}`));
      return true;
    });
  });
  await t.test('DNS', async () => {
    // .invalid never resolves (RFC 6761): at once. Without a DNS server the lookup fails as EAI_AGAIN instead, which
    // may pass, so the SDK retries it until the timeout and then names it.
    await assert.rejects(client('dns', data, 'http://fedunlearn-nowhere.invalid:8080').connect(WAIT_MS), (e: Error) => {
      assert.match(e.message, /cannot connect to http:\/\/fedunlearn-nowhere\.invalid:8080: DNS: .*fedunlearn-nowhere\.invalid/);
      return true;
    });
  });
  await t.test('TLS spoken to a plain HTTP coordinator', async () => {
    const https = url.replace('http://', 'https://');
    await assert.rejects(client('tls', data, https).connect(WAIT_MS), (e: Error) => {
      assert.match(e.message, /^cannot connect to https:\/\/127\.0\.0\.1:\d+: TLS: /);
      return true;
    });
  });
  await t.test('a web server that is not a coordinator', async () => {
    const other = createServer((_req, res) => res.writeHead(404).end('not here'));
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    try {
      const at = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
      await assert.rejects(client('not-a-coordinator', data, at).connect(WAIT_MS), /the server answered HTTP 404 instead of opening a WebSocket \(is http:\/\/127\.0\.0\.1:\d+ a fedunlearn coordinator\?\)/);
    } finally {
      other.closeAllConnections();
      await new Promise<void>((r) => other.close(() => r()));
    }
  });
});
