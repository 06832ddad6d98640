import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FederatedClient, initBackend, Trainer, type LocalDataset } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type FederationConfig } from '@fedunlearn/coordinator';
import { builtInDefinition, type ModelDefinition } from '@fedunlearn/models';
import { loadDataset, partition } from '@fedunlearn/sim';

export function tempDir(prefix: string): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), `fedunlearn-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface Scenario {
  def: ModelDefinition;
  test: LocalDataset;
  parts: LocalDataset[];
}

/** Real MNIST digits, a seeded stratified split, partitioned IID over `clients`. */
export function mnistScenario(clients: number, perClass = 100, seed = 1): Scenario {
  const loaded = loadDataset('mnist', { seed, layout: 'flat', limitPerClass: perClass });
  return {
    def: builtInDefinition('mlp', { inputShape: [784], numClasses: 10, seed }),
    test: loaded.test,
    parts: partition(loaded.train, clients, 'iid', seed),
  };
}

export function federation(over: Partial<FederationConfig> = {}): FederationConfig {
  return {
    clientsPerRound: 5,
    minClients: 2,
    roundDeadlineMs: 20_000,
    seed: 1,
    hyper: { learningRate: 0.2, batchSize: 32, localEpochs: 1 },
    maxRoundAttempts: 3,
    waitForClientsMs: 20_000,
    ...over,
  };
}

export async function startCoordinator(dir: string, def: ModelDefinition, fed: FederationConfig, historyInterval = 1): Promise<{ coordinator: Coordinator; url: string }> {
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(dir),
    dataDir: dir,
    model: def,
    federation: fed,
    historyInterval,
    // The scenarios' devices enrol on first hello (trust on first use); test/src/auth.e2e.test.ts covers issued credentials.
    enrolment: 'open',
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  return { coordinator, url };
}

export async function connectClients(url: string, parts: LocalDataset[], prefix = 'device'): Promise<FederatedClient[]> {
  const clients = parts.map((data, i) => new FederatedClient({ url, clientId: `${prefix}-${i}`, secret: `secret-of-${prefix}-${i}`, data, reconnect: { delayMs: 100, maxDelayMs: 500 } }));
  await Promise.all(clients.map((c) => c.connect()));
  return clients;
}

export async function testAccuracy(def: ModelDefinition, weights: Float32Array, test: LocalDataset): Promise<number> {
  const { tf } = await initBackend();
  const trainer = new Trainer({ tf });
  try {
    return (await trainer.evaluate(def.topologyJson, weights, test)).accuracy;
  } finally {
    trainer.dispose();
  }
}

/** Polls `cond` (which may read the asynchronous history store) every 20 ms until it holds. */
export async function waitUntil(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
