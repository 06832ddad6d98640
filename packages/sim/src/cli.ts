#!/usr/bin/env node
import { Command, Option } from 'commander';
import { METHOD_NAMES, type MethodName } from '@fedunlearn/coordinator';
import { applyScenario, DEFAULT_CONFIG, SCENARIOS, type SimConfig } from './config.js';
import type { DatasetName } from './data/datasets.js';
import { runSimulation } from './run.js';
import { runSeeds } from './seeds.js';

const list = (v: string) => v.split(',').map((s) => s.trim()).filter(Boolean);
const ints = (v: string) => list(v).map((s) => Number(s));
const d = DEFAULT_CONFIG;

const program = new Command('fedunlearn-sim')
  .description('Federated training with N virtual clients on real data, then unlearning side by side')
  .addOption(new Option('--dataset <name>', 'data set').choices(['mnist', 'fashion-mnist']).default(d.dataset))
  .addOption(new Option('--model <name>', 'architecture').choices(['mlp', 'cnn']).default(d.model))
  .option('--clients <n>', 'virtual clients', Number, d.clients)
  .option('--clients-per-round <k>', 'clients per round (default: all)', Number)
  .option('--rounds <t>', 'training rounds', Number, d.rounds)
  .option('--local-epochs <e>', 'local epochs per round', Number, d.localEpochs)
  .option('--batch-size <b>', 'local batch size', Number, d.batchSize)
  .option('--lr <x>', 'SGD learning rate', Number, d.lr)
  .option('--partition <spec>', 'iid | dirichlet:ALPHA | shards:S', d.partition)
  .option('--seed <s>', 'seed of data split, partition, model and schedule', Number, d.seed)
  .option('--seeds <s,t>', 'run once per seed (OUT/seed-S) and report each row\'s mean and spread (OUT/seeds.json, .md, .svg)', ints)
  .addOption(new Option('--scenario <name>', 'preset (explicit flags override it); memorise: 10 clients of ~200 examples, 5 local epochs x 20 rounds, forget client 0').choices(Object.keys(SCENARIOS)))
  .option('--test-fraction <f>', 'share of each class held out (test set, membership non-members and population)', Number)
  .option('--history-interval <dt>', 'keep full client updates every DT rounds (FedEraser Δt)', Number, d.historyInterval)
  .addOption(new Option('--retention <kind>', 'how stored updates are kept').choices(['fp32', 'fp16', 'int8', 'norms']).default(d.retention))
  .option('--out <dir>', 'output directory (report.json, plots)', d.out)
  .option('--forget <i,j>', 'indices of the clients to forget after training', ints, d.forget)
  .option('--forget-join-round <r>', 'the forgotten clients join at round R (not selected before it); adds full-history rows to compare', Number, d.forgetJoinRound)
  .option('--methods <list>', `unlearning methods: ${METHOD_NAMES.join(',')}`, list, d.methods)
  .option('--fedrecover <Tw,Tc,Tf>', 'FedRecover: warm-up rounds, correction period, final tuning rounds', ints, [d.fedrecover.warmupRounds, d.fedrecover.correctionPeriod, d.fedrecover.finalTuningRounds])
  .option('--tune-rounds <n,m>', 'ordinary rounds after each approximate method (a row per value)', ints, d.tuneRounds)
  .option('--calibration-ratio <r>', 'FedEraser calibration ratio r (epochs r*E)', Number, d.calibrationRatio)
  .option('--sifu-sigma <s>', 'SIFU: standard deviation of the noise per weight', Number, d.sifuSigma)
  .option('--reuse-first-round', 'FedEraser: apply the first stored round as stored', d.reuseFirstRound)
  .option('--backdoor', 'the forgotten clients also hold triggered, relabelled copies of their images', d.backdoor)
  .option('--noise-floor', 'a second exact retrain with other shuffles, for fidelity', d.noiseFloor)
  .option('--limit-per-class <n>', 'use at most N examples of each class', Number)
  .option('--threads <n>', 'worker threads for the fleet', Number)
  .option('--round-deadline-ms <ms>', 'per-round deadline', Number, d.roundDeadlineMs)
  .option('--quiet', 'no progress output', false)
  .option('--keep-data', 'keep OUT/data (the coordinators\' histories) after the run; deleted by default', false);

program.parse();
const o = program.opts();
const given: SimConfig = {
  ...d,
  dataset: o.dataset as DatasetName,
  model: o.model,
  clients: o.clients,
  clientsPerRound: o.clientsPerRound ?? o.clients,
  rounds: o.rounds,
  localEpochs: o.localEpochs,
  batchSize: o.batchSize,
  lr: o.lr,
  partition: o.partition,
  seed: o.seed,
  historyInterval: o.historyInterval,
  retention: o.retention,
  out: o.out,
  forget: o.forget,
  forgetJoinRound: o.forgetJoinRound,
  methods: o.methods as MethodName[],
  tuneRounds: o.tuneRounds,
  calibrationRatio: o.calibrationRatio,
  sifuSigma: o.sifuSigma,
  reuseFirstRound: Boolean(o.reuseFirstRound),
  fedrecover: { warmupRounds: o.fedrecover[0], correctionPeriod: o.fedrecover[1], finalTuningRounds: o.fedrecover[2] },
  backdoor: Boolean(o.backdoor),
  noiseFloor: Boolean(o.noiseFloor),
  ...(o.limitPerClass ? { limitPerClass: o.limitPerClass } : {}),
  ...(o.testFraction ? { testFraction: o.testFraction } : {}),
  ...(o.threads ? { threads: o.threads } : {}),
  roundDeadlineMs: o.roundDeadlineMs,
  quiet: Boolean(o.quiet),
  keepData: Boolean(o.keepData),
};

// A scenario's values replace the defaults, never a flag the user gave (--clients alone also sets clients per round).
const explicit = new Set(Object.keys(o).filter((k) => program.getOptionValueSource(k) === 'cli'));
if (explicit.has('clients') && !explicit.has('clientsPerRound')) explicit.add('clientsPerRound');
const config = o.scenario ? applyScenario(given, o.scenario as string, explicit) : given;

(o.seeds ? runSeeds(config, o.seeds as number[]) : runSimulation(config)).then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`fedunlearn-sim: ${(e as Error).message}\n`);
    if (process.env.DEBUG) console.error(e);
    process.exit(1);
  },
);
