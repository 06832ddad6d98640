import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { layerNorms, layoutOf } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import type { HistoryConfig, HistoryStore, MissingClient, ParticipantInput, Retention } from './store.js';

/**
 * The HistoryStore contract: the behaviour every store must show (the embedded SQLite + files one, PostgreSQL, ...),
 * as node:test tests registered for a store factory. A store's own test file calls `historyStoreContract` with a
 * factory over fresh, empty storage; what only one store has (SQLite's WAL checkpoint, file-level garbage, crash
 * pause points, the high-water mark) stays in that store's own tests.
 *
 * Blob keys: the contract looks at the blob storage through `raw` and expects keys of the form
 * `models/<version>[.<anything>]` and `updates/<roundId>/<clientId>[.<anything>]` (ids as given, when they are
 * [A-Za-z0-9_-]).
 */

/** What a store test sees of the blob storage under the store, bypassing the store. */
export interface RawBlobs {
  /** Keys held under `prefix` ('' for all, else ending in '/'), committed and staged alike. */
  keys(prefix: string): Promise<string[]>;
  /** Bytes held under `key`. */
  size(key: string): Promise<number>;
  /** Flips the lowest bit of byte `at` of the blob (a corruption the store must detect). */
  flipByte(key: string, at: number): Promise<void>;
  /** Removes a blob behind the store's back (a lost file or object). */
  remove(key: string): Promise<void>;
}

/** Fresh, empty storage for one test. */
export interface StoreFixture {
  /** A new, unopened store instance over this storage; calling it again after closing the previous one is a restart. */
  store(opts?: { now?: () => number }): Promise<HistoryStore>;
  raw: RawBlobs;
  /** Optional: whether any file or table the store keeps its metadata in still holds these bytes (the purge must
   *  leave none of a forgotten client's rows behind). */
  metadataHolds?(bytes: Uint8Array): Promise<boolean>;
  /** Removes the storage. */
  cleanup(): Promise<void>;
}

export type StoreFactory = () => Promise<StoreFixture>;

/** The version a model blob key names. */
function versionOfKey(key: string): string {
  return key.split('/')[1]!.split('.')[0]!;
}
/** The client an update blob key names. */
function clientOfKey(key: string): string {
  return key.split('/')[2]!.split('.')[0]!;
}

const layout = layoutOf([
  { name: 'conv/kernel', shape: [3, 3, 1, 2] },
  { name: 'conv/bias', shape: [2] },
  { name: 'dense/kernel', shape: [6, 4] },
  { name: 'dense/bias', shape: [4] },
]);
const topologyJson = JSON.stringify({ name: 'tiny', layers: ['conv', 'dense'] });

/** Seeded, so that every figure a test compares against is recomputed from the seed, never remembered. */
const rng = (seed: number): (() => number) => seedrandom(String(seed));

function randomWeights(r: () => number, scale = 1): Float32Array {
  const v = new Float32Array(layout.totalSize);
  for (let i = 0; i < v.length; i++) v[i] = (r() * 2 - 1) * scale;
  return v;
}

function bytesOf(v: Float32Array): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

const missingLayout = layoutOf([
  { name: 'dense/kernel', shape: [3, 2] },
  { name: 'dense/bias', shape: [2] },
]);

async function openMissingStore(fx: StoreFixture): Promise<HistoryStore> {
  const store = await fx.store();
  await store.open({ topologyJson: JSON.stringify({ name: 'tiny-missing' }), layout: missingLayout, initialWeights: new Float32Array(missingLayout.totalSize), config: { historyInterval: 1, retention: 'fp32' } });
  return store;
}

async function commitWithMissing(store: HistoryStore, participants: string[], missing: MissingClient[]): Promise<void> {
  const head = await store.head();
  await store.commitRound({
    round: head.round + 1,
    roundId: `r${head.round + 1}`,
    modelBefore: head.version,
    weights: new Float32Array(missingLayout.totalSize).fill(head.round + 1),
    participants: participants.map((clientId) => ({ clientId, numExamples: 3, norms: [1, 1] })),
    missing,
    metrics: {},
    startedAt: 0,
  });
}

interface Ledger {
  init: Float32Array;
  models: Map<string, Float32Array>; // version -> weights
  updates: Map<string, Float32Array>; // `${roundId}/${clientId}` -> the update staged
  participants: Map<string, ParticipantInput[]>; // roundId -> as committed
}

async function open(fx: StoreFixture, config: HistoryConfig, init: Float32Array, now?: () => number) {
  const store = await fx.store(now ? { now } : {});
  const opened = await store.open({ topologyJson, layout, initialWeights: init, config });
  return { store, ...opened };
}

/** Trains `rounds` rounds with `clients`, staging updates where the policy keeps them, and records what was sent. */
async function train(store: HistoryStore, ledger: Ledger, r: () => number, rounds: number, clients: string[], tag = 'r'): Promise<void> {
  for (let k = 0; k < rounds; k++) {
    const head = await store.head();
    const round = head.round + 1;
    const roundId = `${tag}${round}-${head.lineage.slice(0, 6)}`;
    const participants: ParticipantInput[] = [];
    for (const clientId of clients) {
      const update = randomWeights(r, 0.1);
      if (await store.keepsUpdates(round)) {
        await store.stageUpdate(roundId, clientId, update);
        ledger.updates.set(`${roundId}/${clientId}`, update);
      }
      participants.push({ clientId, numExamples: 10 + Math.floor(r() * 90), norms: layerNorms(layout, update), metrics: { loss: r() } });
    }
    const weights = randomWeights(r);
    const mv = await store.commitRound({ round, roundId, modelBefore: head.version, weights, participants, metrics: { loss: r(), acc: r() }, startedAt: 1000 + round });
    ledger.models.set(mv.version, weights);
    ledger.participants.set(roundId, participants);
  }
}

function newLedger(init: Float32Array): Ledger {
  return { init, models: new Map(), updates: new Map(), participants: new Map() };
}

/** Registers the HistoryStore contract tests for `factory` under `name`. */
export function historyStoreContract(name: string, factory: StoreFactory): void {
  describe(`HistoryStore contract: ${name}`, () => {
    test('keepsUpdates follows Δt and retention', async () => {
      const fx = await factory();
      try {
        const cases: [HistoryConfig, number[]][] = [
          [{ historyInterval: 1, retention: 'fp32' }, [1, 2, 3, 4, 5, 6, 7]],
          [{ historyInterval: 2, retention: 'int8' }, [1, 3, 5, 7]],
          [{ historyInterval: 3, retention: 'fp16' }, [1, 4, 7]],
          [{ historyInterval: 2, retention: 'norms' }, []],
        ];
        for (const [config, kept] of cases) {
          const each = await factory();
          try {
            const { store } = await open(each, config, randomWeights(rng(1)));
            const got: number[] = [];
            for (const t of [1, 2, 3, 4, 5, 6, 7]) if (await store.keepsUpdates(t)) got.push(t);
            assert.deepEqual(got, kept, JSON.stringify(config));
            assert.equal(await store.keepsUpdates(0), false);
            await store.close();
          } finally {
            await each.cleanup();
          }
        }
      } finally {
        await fx.cleanup();
      }
    });

    test('committed rounds read back bit-exact after reopening (fp32)', async () => {
      const fx = await factory();
      try {
        const r = rng(7);
        const config: HistoryConfig = { historyInterval: 2, retention: 'fp32' };
        const init = randomWeights(r);
        let clock = 5000;
        const first = await open(fx, config, init, () => clock++);
        assert.equal(first.resumed, false);
        assert.equal(first.head.cause, 'init');
        assert.equal(first.head.round, 0);
        assert.equal(first.head.parent, null);
        const ledger = newLedger(init);
        ledger.models.set(first.head.version, init);
        await train(first.store, ledger, r, 5, ['alice', 'bob', 'carol']);
        const roundsBefore = await first.store.listRounds();
        const modelsBefore = await first.store.listModels();
        await first.store.close();

        const { store, resumed, head, meta } = await open(fx, config, randomWeights(rng(99)));
        assert.equal(resumed, true);
        assert.equal(head.round, 5);
        assert.deepEqual(meta.layout, layout);
        assert.equal(meta.topologyJson, topologyJson);
        assert.deepEqual(meta.config, config);
        assert.deepEqual((await store.listRounds()), roundsBefore);
        assert.deepEqual((await store.listModels()), modelsBefore);
        assert.equal(modelsBefore.length, 6);

        // Every model: bytes identical, hash = sha256 of its float32 little-endian bytes, parents chain to the init model.
        for (const m of (await store.listModels())) {
          const expected = ledger.models.get(m.version)!;
          const got = await store.readModel(m.version);
          assert.deepEqual(bytesOf(got), bytesOf(expected));
          assert.equal(m.sha256, createHash('sha256').update(bytesOf(expected)).digest('hex'));
        }
        const rounds = await store.listRounds();
        assert.deepEqual(rounds.map((x) => x.round), [1, 2, 3, 4, 5]);
        let prev = first.head.version;
        for (const rec of rounds) {
          assert.equal(rec.modelBefore, prev);
          const after = (await store.getModel(rec.modelAfter))!;
          assert.equal(after.parent, prev);
          assert.equal(after.round, rec.round);
          assert.equal(after.cause, 'round');
          assert.equal(after.lineage, first.head.lineage);
          prev = rec.modelAfter;
          assert.equal(rec.updatesStored, rec.round % 2 === 1);
          const sent = ledger.participants.get(rec.roundId)!;
          assert.deepEqual(
            rec.participants.map((p) => ({ clientId: p.clientId, numExamples: p.numExamples, norms: p.norms, metrics: p.metrics })),
            sent.map((p) => ({ clientId: p.clientId, numExamples: p.numExamples, norms: Array.from(p.norms), metrics: p.metrics })),
          );
          for (const p of rec.participants) {
            assert.equal(p.hasUpdate, rec.updatesStored);
            const u = await store.readUpdate(rec.roundId, p.clientId);
            if (rec.updatesStored) assert.deepEqual(bytesOf(u!), bytesOf(ledger.updates.get(`${rec.roundId}/${p.clientId}`)!));
            else assert.equal(u, null);
          }
        }
        assert.equal(prev, head.version);
        assert.deepEqual((await store.getRound(3)), rounds[2]);
        assert.equal((await store.getRound(6)), null);
        assert.deepEqual((await store.listRounds({ from: 2, to: 3 })).map((x) => x.round), [2, 3]);

        const s = await store.stats();
        assert.equal(s.models, 6);
        assert.equal(s.rounds, 5);
        assert.equal(s.updates, 9); // rounds 1, 3, 5 × 3 clients
        let onDisk = 0;
        for (const k of await fx.raw.keys('updates/')) onDisk += await fx.raw.size(k);
        assert.equal(s.updateBytes, onDisk);
        assert.deepEqual(s.updateBytesByDtype, { fp32: onDisk });
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });

    for (const retention of ['fp16', 'int8'] as const satisfies readonly Retention[]) {
      test(`${retention} retention reads updates back within quantisation error and in less space`, async () => {
        const fx = await factory();
        try {
          const r = rng(retention === 'fp16' ? 3 : 4);
          const config: HistoryConfig = { historyInterval: 1, retention };
          const init = randomWeights(r);
          const first = await open(fx, config, init);
          const ledger = newLedger(init);
          await train(first.store, ledger, r, 2, ['a', 'b']);
          await first.store.close();
          const { store } = await open(fx, config, init);
          for (const rec of (await store.listRounds())) {
            for (const p of rec.participants) {
              const sent = ledger.updates.get(`${rec.roundId}/${p.clientId}`)!;
              const got = (await store.readUpdate(rec.roundId, p.clientId))!;
              for (let l = 0; l < layout.specs.length; l++) {
                const off = layout.offsets[l]!;
                const end = off + layout.sizes[l]!;
                let maxAbs = 0;
                for (let i = off; i < end; i++) maxAbs = Math.max(maxAbs, Math.abs(sent[i]!));
                for (let i = off; i < end; i++) {
                  const err = Math.abs(got[i]! - sent[i]!);
                  const bound = retention === 'fp16' ? Math.abs(sent[i]!) * 1e-3 + 1e-7 : maxAbs / 127;
                  assert.ok(err <= bound, `${retention} layer ${l} index ${i}: ${sent[i]} -> ${got[i]}`);
                }
              }
              // The stored norms stay those of the exact update, not of its quantised copy.
              assert.deepEqual(p.norms, Array.from(layerNorms(layout, sent)));
            }
          }
          const s = await store.stats();
          const width = retention === 'fp16' ? 2 : 1;
          assert.ok(s.updateBytes < 4 * 4 * layout.totalSize, 'smaller than 4 fp32 payloads');
          assert.ok(s.updateBytes >= 4 * width * layout.totalSize);
          assert.deepEqual(Object.keys(s.updateBytesByDtype), [retention]);
          await store.close();
        } finally {
          await fx.cleanup();
        }
      });
    }

    test('staged but uncommitted updates vanish after reopening, and the round can still commit afterwards', async () => {
      const fx = await factory();
      try {
        const r = rng(11);
        const config: HistoryConfig = { historyInterval: 1, retention: 'fp32' };
        const init = randomWeights(r);
        const first = await open(fx, config, init);
        const ledger = newLedger(init);
        await train(first.store, ledger, r, 1, ['a', 'b']);
        const committedFiles = (await fx.raw.keys('')).sort();
        await first.store.stageUpdate('open-round', 'a', randomWeights(r));
        await first.store.stageUpdate('open-round', 'b', randomWeights(r));
        assert.equal((await fx.raw.keys('')).length, committedFiles.length + 2);
        await first.store.close();

        const { store, head } = await open(fx, config, init);
        assert.deepEqual((await fx.raw.keys('')).sort(), committedFiles);
        assert.deepEqual(await fx.raw.keys('updates/open-round/'), []);
        const u = randomWeights(r);
        await store.stageUpdate('open-round', 'a', u);
        (await store.commitRound({
          round: 2,
          roundId: 'open-round',
          modelBefore: head.version,
          weights: randomWeights(r),
          participants: [{ clientId: 'a', numExamples: 5, norms: layerNorms(layout, u) }],
          metrics: {},
          startedAt: 0,
        }));
        assert.deepEqual(await store.readUpdate('open-round', 'a'), u);
        assert.equal(await store.readUpdate('open-round', 'b'), null);
        assert.deepEqual((await store.getRound(2))!.participants.map((p) => [p.clientId, p.hasUpdate]), [['a', true]]);
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('staging is idempotent per client; discarded and unlisted stagings leave no file; a committed round refuses more', async () => {
      const fx = await factory();
      try {
        const r = rng(12);
        const { store, head } = await open(fx, { historyInterval: 1, retention: 'fp32' }, randomWeights(r));
        const first = randomWeights(r);
        const second = randomWeights(r);
        await store.stageUpdate('R1', 'a', first);
        await store.stageUpdate('R1', 'a', second);
        assert.equal((await fx.raw.keys('updates/R1/')).length, 1);
        await store.stageUpdate('R1', 'dropped', randomWeights(r));
        await store.stageUpdate('R1', 'unlisted', randomWeights(r));
        assert.equal((await fx.raw.keys('updates/R1/')).length, 3);
        await store.discardStaged('R1', 'dropped');
        assert.equal((await fx.raw.keys('updates/R1/')).length, 2);
        (await store.commitRound({
          round: 1,
          roundId: 'R1',
          modelBefore: head.version,
          weights: randomWeights(r),
          participants: [{ clientId: 'a', numExamples: 1, norms: layerNorms(layout, second) }],
          metrics: {},
          startedAt: 0,
        }));
        assert.equal((await fx.raw.keys('updates/R1/')).length, 1, 'only the listed participant is kept');
        assert.deepEqual(await store.readUpdate('R1', 'a'), second);
        assert.equal(await store.readUpdate('R1', 'unlisted'), null);
        await assert.rejects(store.stageUpdate('R1', 'late', randomWeights(r)), /already committed/);
        assert.equal((await fx.raw.keys('updates/R1/')).length, 1);

        // A staging still in flight when its round commits is not part of the commit, and cleans up after itself.
        const v1 = await store.head();
        const inFlight = store.stageUpdate('R2', 'slow', randomWeights(r));
        await store.commitRound({ round: 2, roundId: 'R2', modelBefore: v1.version, weights: randomWeights(r), participants: [{ clientId: 'slow', numExamples: 1, norms: [0, 0, 0, 0] }], metrics: {}, startedAt: 0 });
        await assert.rejects(inFlight, /was not included/);
        assert.equal((await store.getRound(2))!.participants[0]!.hasUpdate, false);
        assert.equal((await fx.raw.keys('updates/R2/')).length, 0);

        await store.stageUpdate('R3', 'a', randomWeights(r));
        await store.discardStaged('R3');
        assert.equal((await fx.raw.keys('updates/R3/')).length, 0);
        const bad = randomWeights(r);
        bad[2] = Number.POSITIVE_INFINITY;
        await assert.rejects(store.stageUpdate('R3', 'a', bad), /non-finite/);
        await assert.rejects(store.stageUpdate('R3', 'a', new Float32Array(3)), /values for a layout/);
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('commitRound refuses out-of-order rounds, stale models and bad participants, and leaves nothing behind', async () => {
      const fx = await factory();
      try {
        const r = rng(13);
        const { store, head } = await open(fx, { historyInterval: 1, retention: 'fp32' }, randomWeights(r));
        const ok = (round: number, modelBefore: string, roundId = `id${round}`) => ({
          round,
          roundId,
          modelBefore,
          weights: randomWeights(r),
          participants: [{ clientId: 'a', numExamples: 3, norms: [1, 2, 3, 4] }],
          metrics: {},
          startedAt: 0,
        });
        const filesAtStart = (await fx.raw.keys('')).length;
        await assert.rejects(async () => (await store.commitRound(ok(2, head.version))), /out of order/);
        await assert.rejects(async () => (await store.commitRound(ok(0, head.version))), /out of order/);
        await assert.rejects(async () => (await store.commitRound(ok(1, 'nope'))), /head is/);
        await assert.rejects(async () => (await store.commitRound({ ...ok(1, head.version), participants: [{ clientId: 'a', numExamples: 1, norms: [1] }] })), /1 norms for 4 layers/);
        await assert.rejects(async () => (await store.commitRound({ ...ok(1, head.version), weights: new Float32Array(2) })), /values, the layout/);
        assert.deepEqual((await store.head()), head);
        assert.equal((await store.listRounds()).length, 0);
        assert.equal((await fx.raw.keys('')).length, filesAtStart);

        const v1 = await store.commitRound(ok(1, head.version));
        await assert.rejects(async () => (await store.commitRound(ok(1, head.version, 'other'))), /out of order/);
        await assert.rejects(async () => (await store.commitRound(ok(2, v1.version, 'id1'))), /already committed/);
        await assert.rejects(async () => (await store.commitRound(ok(2, head.version))), /head is/);
        assert.equal((await store.commitRound(ok(2, v1.version))).round, 2);
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('readModel and readUpdate detect a flipped byte and never serve it', async () => {
      const fx = await factory();
      try {
        const r = rng(14);
        const config: HistoryConfig = { historyInterval: 1, retention: 'int8' };
        const first = await open(fx, config, randomWeights(r));
        await train(first.store, newLedger(new Float32Array()), r, 1, ['a']);
        const round = (await first.store.getRound(1))!;
        await first.store.close();
        const { store } = await open(fx, config, randomWeights(r));
        const flip = (key: string, at: number) => fx.raw.flipByte(key, at);
        const modelFile = (await fx.raw.keys('models/')).find((k) => versionOfKey(k) === round.modelAfter)!;
        const size = await fx.raw.size(modelFile);
        await store.readModel(round.modelAfter); // intact: reads
        await flip(modelFile, size - 5); // inside the weights
        await assert.rejects(store.readModel(round.modelAfter), /corrupted \(sha256 mismatch/);
        await flip(modelFile, size - 5);
        await store.readModel(round.modelAfter);
        await flip(modelFile, 0); // the header
        await assert.rejects(store.readModel(round.modelAfter), /corrupted/);

        const [updateFile] = (await fx.raw.keys('updates/'));
        await store.readUpdate(round.roundId, 'a');
        await flip(updateFile!, 20); // an int8 scale: the decoded values would look plausible, so only the hash can tell
        await assert.rejects(store.readUpdate(round.roundId, 'a'), /corrupted/);
        await fx.raw.remove(updateFile!);
        await assert.rejects(store.readUpdate(round.roundId, 'a'), /cannot read/);
        await assert.rejects(store.readModel('unknown'), /unknown model/);
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('commitUnlearning starts a new lineage that listRounds follows, keeps the old one, and training continues on it', async () => {
      const fx = await factory();
      try {
        const r = rng(15);
        const config: HistoryConfig = { historyInterval: 2, retention: 'fp32' };
        const init = randomWeights(r);
        const first = await open(fx, config, init);
        const initVersion = first.head.version;
        const ledger = newLedger(init);
        await train(first.store, ledger, r, 4, ['u', 'k1', 'k2']);
        const oldHead = await first.store.head();
        const oldRounds = await first.store.listRounds();
        const store = first.store;

        // Replay stored rounds 1 and 3 without u: calibrated updates staged under fresh round ids.
        const replay = [1, 3].map((round) => {
          const updates = new Map(['k1', 'k2'].map((c) => [c, randomWeights(r, 0.05)] as const));
          return { round, roundId: `replay-${round}`, updates };
        });
        for (const rp of replay) for (const [c, u] of rp.updates) await store.stageUpdate(rp.roundId, c, u);
        const mid = randomWeights(r);
        const result = randomWeights(r);
        const job = 'job-1';
        const unlearned = await store.commitUnlearning({
          jobId: job,
          weights: result,
          rounds: replay.map((rp, i) => ({
            round: rp.round,
            roundId: rp.roundId,
            modelBefore: i === 0 ? initVersion : '',
            participants: [...rp.updates].map(([clientId, u]) => ({ clientId, numExamples: 20, norms: layerNorms(layout, u) })),
            metrics: { calibrated: 2 },
            startedAt: 10 + i,
            closedAt: 20 + i,
          })),
          intermediateModels: [{ round: 1, weights: mid }],
        });
        assert.equal(unlearned.cause, 'unlearning');
        assert.equal(unlearned.jobId, job);
        assert.equal(unlearned.parent, oldHead.version);
        assert.equal(unlearned.round, 3);
        assert.notEqual(unlearned.lineage, oldHead.lineage);
        assert.deepEqual((await store.head()), unlearned);

        const check = async (s: HistoryStore) => {
          const rounds = await s.listRounds();
          assert.deepEqual(rounds.map((x) => [x.round, x.roundId, x.lineage]), [
            [1, 'replay-1', unlearned.lineage],
            [3, 'replay-3', unlearned.lineage],
          ]);
          const [r1, r3] = rounds as [(typeof rounds)[0], (typeof rounds)[0]];
          assert.equal(r1.modelBefore, initVersion);
          assert.equal(r3.modelBefore, r1.modelAfter);
          assert.equal(r3.modelAfter, unlearned.version);
          const midModel = (await s.getModel(r1.modelAfter))!;
          assert.deepEqual([midModel.cause, midModel.jobId, midModel.lineage, midModel.round, midModel.parent], ['unlearning', job, unlearned.lineage, 1, initVersion]);
          assert.deepEqual(await s.readModel(r1.modelAfter), mid);
          assert.deepEqual(await s.readModel(unlearned.version), result);
          assert.deepEqual((await s.listModels({ lineage: unlearned.lineage })).map((m) => m.version), [r1.modelAfter, unlearned.version]);
          for (const [i, rec] of rounds.entries()) {
            assert.equal(rec.updatesStored, true);
            assert.deepEqual(rec.participants.map((p) => p.clientId), ['k1', 'k2']);
            for (const [c, u] of replay[i]!.updates) assert.deepEqual(await s.readUpdate(rec.roundId, c), u);
          }
          // The old lineage stays readable for audit, u included.
          assert.deepEqual((await s.listRounds({ lineage: oldHead.lineage })), oldRounds);
          assert.deepEqual(await s.readModel(oldHead.version), ledger.models.get(oldHead.version));
        };
        await check(store);

        // Training resumes on the new lineage, numbered after its last round.
        await assert.rejects(
          async () => (await store.commitRound({ round: 5, roundId: 'x', modelBefore: unlearned.version, weights: result, participants: [], metrics: {}, startedAt: 0 })),
          /out of order/,
        );
        await train(store, ledger, r, 1, ['k1', 'k2'], 'after');
        const resumedRound = (await store.getRound(4))!;
        assert.equal(resumedRound.lineage, unlearned.lineage);
        assert.equal(resumedRound.modelBefore, unlearned.version);
        assert.equal(resumedRound.updatesStored, false); // 4 is not 1 + kΔt
        await store.close();

        const { store: reopened, head } = await open(fx, config, init);
        assert.equal(head.lineage, unlearned.lineage);
        assert.equal(head.round, 4);
        assert.deepEqual((await reopened.listRounds()).map((x) => x.round), [1, 3, 4]);
        await reopened.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('commitUnlearning rejects inconsistent replays without leaving blobs', async () => {
      const fx = await factory();
      try {
        const r = rng(16);
        const { store, head } = await open(fx, { historyInterval: 1, retention: 'fp32' }, randomWeights(r));
        const files = (await fx.raw.keys('')).length;
        const round = (n: number, modelBefore = '') => ({ round: n, roundId: `x${n}`, modelBefore, participants: [], metrics: {}, startedAt: 0, closedAt: 0 });
        const w = randomWeights(r);
        await assert.rejects(store.commitUnlearning({ jobId: 'j', weights: w, rounds: [round(2), round(1)] }), /ascend/);
        await assert.rejects(store.commitUnlearning({ jobId: 'j', weights: w, rounds: [round(1, 'missing')] }), /unknown model/);
        await assert.rejects(
          store.commitUnlearning({ jobId: 'j', weights: w, rounds: [round(1), round(2)], intermediateModels: [{ round: 2, weights: w }] }),
          /last replayed round/,
        );
        await assert.rejects(
          store.commitUnlearning({ jobId: 'j', weights: w, rounds: [round(1), round(2, head.version)], intermediateModels: [{ round: 1, weights: w }] }),
          /ended at/,
        );
        assert.deepEqual((await store.head()), head);
        assert.equal((await fx.raw.keys('')).length, files);
        // Without intermediate models the chain is simply unknown ('').
        const v = await store.commitUnlearning({ jobId: 'j', weights: w, rounds: [round(1, head.version), round(2)] });
        assert.deepEqual((await store.listRounds()).map((x) => [x.modelBefore, x.modelAfter]), [
          [head.version, ''],
          ['', v.version],
        ]);
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('purgeClients removes a client from every lineage, on disk too, and leaves the others intact', async () => {
      const fx = await factory();
      try {
        const r = rng(17);
        const config: HistoryConfig = { historyInterval: 1, retention: 'fp16' };
        const init = randomWeights(r);
        const first = await open(fx, config, init);
        const store = first.store;
        const ledger = newLedger(init);
        await store.upsertClient({ clientId: 'u', secretHash: 'h-u', numExamples: 50, seenAt: 100 });
        await train(store, ledger, r, 2, ['u', 'k']);
        // An unlearning that (deliberately, for this test) still lists u, so u has rows in two lineages.
        const u = randomWeights(r, 0.1);
        await store.stageUpdate('replay-1', 'u', u);
        await store.stageUpdate('replay-1', 'k', u);
        await store.commitUnlearning({
          jobId: 'j',
          weights: randomWeights(r),
          rounds: [
            {
              round: 1,
              roundId: 'replay-1',
              modelBefore: first.head.version,
              participants: ['u', 'k'].map((clientId) => ({ clientId, numExamples: 1, norms: layerNorms(layout, u) })),
              metrics: {},
              startedAt: 0,
              closedAt: 0,
            },
          ],
        });
        await store.stageUpdate('open', 'u', u); // staged in a round still open: purged too

        const lineages = [...new Set((await store.listModels()).map((m) => m.lineage))];
        assert.equal(lineages.length, 2);
        const rowsOf = async (c: string) => (await Promise.all(lineages.map((l) => store.listRounds({ lineage: l })))).flat().flatMap((x) => x.participants.filter((p) => p.clientId === c));
        const uFiles = (await fx.raw.keys('updates/')).filter((k) => clientOfKey(k) === 'u');
        assert.equal(uFiles.length, 4); // rounds 1, 2, replay-1, open
        let uBytes = 0;
        for (const k of uFiles) uBytes += await fx.raw.size(k);
        const kRowsBefore = await rowsOf('k');
        // u's norms as the database stores them (float64 little-endian), to look for in its files.
        const uNorms = Buffer.from(new Float64Array((await rowsOf('u'))[0]!.norms).buffer);
        // Where the store can search its metadata's storage, the purge must leave no copy of the rows there.
        if (fx.metadataHolds) assert.ok(await fx.metadataHolds(uNorms), 'the search finds the norms before the purge');
        const statsBefore = await store.stats();

        const summary = await store.purgeClients(['u', 'u']);
        assert.deepEqual(summary, { clientIds: ['u'], updatesDeleted: 3, bytesDeleted: uBytes, participantRowsDeleted: 3, modelsErased: [], modelBytesDeleted: 0, complete: true });
        const left = await fx.raw.keys('updates/');
        for (const k of uFiles) assert.ok(!left.includes(k), k);
        assert.deepEqual((await rowsOf('u')), []);
        if (fx.metadataHolds) assert.ok(!(await fx.metadataHolds(uNorms)), 'no copy of the norms is left in the metadata storage');
        assert.deepEqual((await rowsOf('k')), kRowsBefore);
        for (const roundId of ['r1-', 'r2-']) {
          const id = (await store.listRounds({ lineage: first.head.lineage })).find((x) => x.roundId.startsWith(roundId))!.roundId;
          assert.equal(await store.readUpdate(id, 'u'), null);
          assert.notEqual(await store.readUpdate(id, 'k'), null);
        }
        assert.equal(await store.readUpdate('replay-1', 'u'), null);
        assert.equal((await store.stats()).updates, statsBefore.updates - 3);
        const tomb = (await store.getClient('u'))!;
        assert.deepEqual([tomb.forgotten, tomb.secretHash, tomb.numExamples], [true, null, 0]);
        await store.close();

        const { store: reopened } = await open(fx, config, init);
        assert.equal((await fx.raw.keys('updates/')).filter((k) => clientOfKey(k) === 'u').length, 0);
        assert.equal((await reopened.getClient('u'))!.forgotten, true);
        await reopened.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('purgeClients with eraseModels erases the weights of every model a client shaped, and only those', async () => {
      const fx = await factory();
      try {
        const r = rng(23);
        const config: HistoryConfig = { historyInterval: 1, retention: 'fp32' };
        const init = randomWeights(r);
        let clock = 5_000;
        const first = await open(fx, config, init, () => clock);
        const store = first.store;
        const ledger = newLedger(init);
        // Lineage 1: u takes part in rounds 3 and 4 only.
        await train(store, ledger, r, 2, ['k']);
        await train(store, ledger, r, 2, ['u', 'k']);
        await train(store, ledger, r, 1, ['k']);
        const old = await store.listModels({ lineage: first.head.lineage });
        assert.deepEqual(old.map((m) => m.round), [0, 1, 2, 3, 4, 5]);
        assert.ok(old.every((m) => m.erasedAt === null));

        // Erasing while the head still holds u's contribution is refused, and changes nothing.
        await assert.rejects(store.purgeClients(['u'], { eraseModels: true }), /head model .* unlearn them before/);
        assert.equal((await store.listRounds()).flatMap((x) => x.participants).filter((p) => p.clientId === 'u').length, 2);
        assert.equal((await store.stats()).modelsErased, 0);

        // Lineage 2: an unlearning without u, with an intermediate model.
        const replayed = [1, 2].map((round) => ({
          round,
          roundId: `replay-${round}`,
          modelBefore: '',
          participants: [{ clientId: 'k', numExamples: 3, norms: layerNorms(layout, randomWeights(r, 0.1)) }],
          metrics: {},
          startedAt: 0,
          closedAt: 0,
        }));
        const after = await store.commitUnlearning({ jobId: 'j', weights: randomWeights(r), rounds: replayed, intermediateModels: [{ round: 1, weights: randomWeights(r) }] });
        const fresh = await store.listModels({ lineage: after.lineage });
        const statsBefore = await store.stats();
        const modelFiles = async () => (await fx.raw.keys('models/')).map(versionOfKey).sort();
        assert.equal((await modelFiles()).length, old.length + fresh.length);

        clock = 9_000;
        const summary = await store.purgeClients(['u'], { eraseModels: true });
        const shaped = old.filter((m) => m.round >= 3).map((m) => m.version);
        assert.deepEqual(summary.modelsErased, shaped, 'the models after the rounds u took part in, in creation order');
        assert.ok(summary.modelBytesDeleted > 0);
        assert.deepEqual(await modelFiles(), [...old.filter((m) => m.round < 3), ...fresh].map((m) => m.version).sort(), 'only their files are gone');
        for (const m of old) {
          const now = (await store.getModel(m.version))!;
          if (m.round >= 3) {
            assert.equal(now.erasedAt, 9_000);
            assert.equal(now.sha256, m.sha256, 'the record stays for the audit');
            await assert.rejects(store.readModel(m.version), (e: Error) => e.name === 'ModelErasedError' && /forgotten client/.test(e.message));
          } else {
            assert.equal(now.erasedAt, null);
            assert.deepEqual(await store.readModel(m.version), m.cause === 'init' ? init : ledger.models.get(m.version));
          }
        }
        for (const m of fresh) await store.readModel(m.version);
        const stats = await store.stats();
        assert.equal(stats.models, statsBefore.models);
        assert.equal(stats.modelsErased, 3);
        assert.equal(stats.modelBytes, statsBefore.modelBytes - summary.modelBytesDeleted);

        // Idempotent, and it survives a reopen (the next open's garbage sweep keeps every kept blob).
        assert.deepEqual((await store.purgeClients(['u'], { eraseModels: true })).modelsErased, []);
        await store.close();
        const { store: reopened } = await open(fx, config, init);
        assert.deepEqual((await reopened.listModels()).filter((m) => m.erasedAt !== null).map((m) => m.version), shaped);
        for (const m of (await reopened.listModels())) if (m.erasedAt === null) await reopened.readModel(m.version);
        await reopened.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('reopening with another topology, layout or history config is refused with a clear error', async () => {
      const fx = await factory();
      try {
        const config: HistoryConfig = { historyInterval: 2, retention: 'fp32' };
        await (await open(fx, config, randomWeights(rng(1)))).store.close();
        const attempt = async (init: Partial<Parameters<HistoryStore['open']>[0]>) => {
          const s = await fx.store();
          try {
            await s.open({ topologyJson, layout, initialWeights: new Float32Array(layout.totalSize), config, ...init });
          } finally {
            await s.close();
          }
        };
        await assert.rejects(async () => (await attempt({ topologyJson: JSON.stringify({ name: 'other' }) })), /different topology/);
        await assert.rejects(async () => (await attempt({ layout: layoutOf([{ name: 'conv/kernel', shape: [3, 3, 1, 3] }]) })), /layout differs/);
        await assert.rejects(async () => (await attempt({ config: { historyInterval: 1, retention: 'fp32' } })), /historyInterval 2/);
        // Same topology written with other whitespace / key order is the same federation.
        const s = await fx.store();
        assert.equal((await s.open({ topologyJson: '{ "layers": ["conv","dense"], "name": "tiny" }', layout, initialWeights: new Float32Array(0), config })).resumed, true);
        await s.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('jobs and clients persist across reopening', async () => {
      const fx = await factory();
      try {
        let clock = 1_000;
        const config: HistoryConfig = { historyInterval: 1, retention: 'norms' };
        const { store } = await open(fx, config, randomWeights(rng(2)), () => clock++);
        const created = await store.createJob({
          jobId: 'j1',
          kind: 'forget',
          state: 'queued',
          clientIds: ['u'],
          requestedBy: 'operator',
          method: 'federaser',
          params: { r: 0.5, dt: 2 },
          progress: { step: 0, total: 5 },
          checkpoint: null,
          report: null,
          error: null,
        });
        await store.createJob({ ...created, jobId: 'j2', state: 'queued' });
        await assert.rejects(async () => (await store.createJob({ ...created })), /already exists/);
        const updated = await store.updateJob('j1', { state: 'running', progress: { step: 2, total: 5, message: 'round 3' }, checkpoint: { j: 2, model: 'abc' } });
        assert.ok(updated.updatedAt > updated.createdAt);
        await store.updateJob('j2', { state: 'failed', error: 'client offline', report: { partial: true } });
        await assert.rejects(async () => (await store.updateJob('nope', { state: 'done' })), /unknown job/);
        await store.upsertClient({ clientId: 'c1', secretHash: 'h1', numExamples: 10, seenAt: 50 });
        (await store.upsertClient({ clientId: 'c1', seenAt: 40 })); // an older sighting neither rewinds lastSeen nor clears fields
        await store.upsertClient({ clientId: 'c2', seenAt: 60, numExamples: 3 });
        await store.upsertClient({ clientId: 'c2', seenAt: 70, secretHash: 'h2' });
        await store.upsertClient({ clientId: 'c2', seenAt: 65, revoked: true });
        const jobs = await store.listJobs();
        const clients = await store.listClients();
        await store.close();

        const { store: again } = await open(fx, config, new Float32Array(0));
        assert.deepEqual((await again.listJobs()), jobs);
        assert.deepEqual((await again.getJob('j1')), updated);
        assert.deepEqual((await again.listJobs({ state: 'failed' })).map((j) => [j.jobId, j.error, j.report]), [['j2', 'client offline', { partial: true }]]);
        assert.deepEqual((await again.listJobs({ state: 'done' })), []);
        assert.deepEqual((await again.listClients()), clients);
        assert.deepEqual((await again.getClient('c1')), { clientId: 'c1', secretHash: 'h1', numExamples: 10, firstSeen: 40, lastSeen: 50, forgotten: false, revoked: false });
        assert.deepEqual((await again.getClient('c2')), { clientId: 'c2', secretHash: 'h2', numExamples: 3, firstSeen: 60, lastSeen: 70, forgotten: false, revoked: true });
        assert.equal((await again.getClient('nobody')), null);
        await again.close();
      } finally {
        await fx.cleanup();
      }
    });

    test("retention 'norms' keeps no update files but every norm, and metrics keep non-finite values", async () => {
      const fx = await factory();
      try {
        const r = rng(18);
        const { store, head } = await open(fx, { historyInterval: 1, retention: 'norms' }, randomWeights(r));
        const u = randomWeights(r);
        await store.stageUpdate('R1', 'a', u);
        (await store.commitRound({
          round: 1,
          roundId: 'R1',
          modelBefore: head.version,
          weights: randomWeights(r),
          participants: [{ clientId: 'a', numExamples: 1, norms: layerNorms(layout, u), metrics: { loss: Number.NaN } }],
          metrics: { loss: Number.POSITIVE_INFINITY, acc: 0.5 },
          startedAt: 0,
        }));
        assert.equal((await fx.raw.keys('updates/')).length, 0);
        const rec = (await store.getRound(1))!;
        assert.equal(rec.updatesStored, false);
        assert.deepEqual(rec.participants[0]!.norms, Array.from(layerNorms(layout, u)));
        assert.deepEqual(rec.metrics, { loss: Number.POSITIVE_INFINITY, acc: 0.5 });
        assert.ok(Number.isNaN(rec.participants[0]!.metrics!.loss));
        assert.equal(await store.readUpdate('R1', 'a'), null);
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('a round keeps who was missing and why, across reopening; a purge drops the forgotten client from the list', async () => {
      const fx = await factory();
      try {
        let store = await openMissingStore(fx);
        const missing: MissingClient[] = [
          { clientId: 'b', reason: 'disconnected', detail: 'ping timeout' },
          { clientId: 'c', reason: 'deadline' },
          { clientId: 'x_1', reason: 'offline' },
        ];
        await commitWithMissing(store, ['a'], missing);
        await commitWithMissing(store, ['a', 'b'], []);
        await store.close();
        store = await openMissingStore(fx);
        assert.deepEqual((await store.getRound(1))!.missing, missing);
        assert.deepEqual((await store.getRound(2))!.missing, []);
        await store.purgeClients(['b']);
        assert.deepEqual((await store.getRound(1))!.missing, missing.filter((m) => m.clientId !== 'b'));
        // 'x_1' contains a LIKE wildcard: purging 'x11' must not touch it.
        await store.purgeClients(['x11']);
        assert.equal((await store.getRound(1))!.missing.length, 2);
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('commitRound refuses a missing list that overlaps the participants, repeats a client or gives no known reason', async () => {
      const fx = await factory();
      try {
        const store = await openMissingStore(fx);
        await assert.rejects(commitWithMissing(store, ['a'], [{ clientId: 'a', reason: 'deadline' }]), /both a participant and missing/);
        await assert.rejects(commitWithMissing(store, ['a'], [{ clientId: 'b', reason: 'deadline' }, { clientId: 'b', reason: 'offline' }]), /missing twice/);
        await assert.rejects(commitWithMissing(store, ['a'], [{ clientId: 'b', reason: 'asleep' as MissingClient['reason'] }]), /unknown reason/);
        assert.equal((await store.head()).round, 0);
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });

    test('job steps are appended one row each, replaced when redone, and read back in order', async () => {
      const fx = await factory();
      try {
        const store = await fx.store();
        await store.open({ topologyJson, layout, initialWeights: new Float32Array(layout.totalSize), config: { historyInterval: 1, retention: 'norms' } });
        await store.createJob({ jobId: 'job-1', kind: 'forget', state: 'running', clientIds: ['u'], requestedBy: 'operator', method: 'replay', params: {}, progress: { step: 0, total: 0 }, checkpoint: { steps: 1 }, report: null, error: null });
        await store.appendJobStep('job-1', { step: 0, data: { a: 0 } }, { steps: 1 });
        await store.appendJobStep('job-1', { step: 1, data: { a: 1 } }, { steps: 2 });
        await store.appendJobStep('job-1', { step: 1, data: { a: 'again' } }, { steps: 2 });
        assert.deepEqual(await store.jobSteps('job-1'), [{ step: 0, data: { a: 0 } }, { step: 1, data: { a: 'again' } }]);
        assert.deepEqual((await store.getJob('job-1'))!.checkpoint, { steps: 2 });
        await assert.rejects(store.appendJobStep('nope', { step: 0, data: {} }, {}), /unknown job/);
        await assert.rejects(store.appendJobStep('job-1', { step: -1, data: {} }, {}), /non-negative/);
        await store.clearJobSteps('job-1');
        assert.deepEqual(await store.jobSteps('job-1'), []);
        await store.close();
      } finally {
        await fx.cleanup();
      }
    });
  });
}
