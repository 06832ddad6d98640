import type { Trainer } from '@fedunlearn/client';
import type { LocalDataset } from './data/types.js';
import { accuracy, attackSuccessRate, fitLossThreshold, meanCrossEntropy, membershipInference, perExampleLoss } from './verify/metrics.js';
import { tprAtFpr, trueClassProbs, type ModelOutputs, type WitnessFigures } from './verify/mia.js';

/** The data a model is judged on; the forgotten clients' data is their clean data, without triggered copies. */
export interface EvalSets {
  test: LocalDataset;
  forgotten: LocalDataset | null;
  /** Triggered test images whose true class is not the target. */
  triggered: LocalDataset | null;
  targetClass: number;
  /** Held-out examples standing against the forgotten clients' data in the membership attack. */
  nonMembers: LocalDataset | null;
  /** Held-out examples, disjoint from nonMembers, that the per-example witness (RMIA) compares each example with. */
  population: LocalDataset | null;
}

export interface ModelFigures {
  testAccuracy: number;
  testLoss: number;
  forgottenAccuracy: number | null;
  backdoorASR: number | null;
  /** Loss-threshold attack (threshold fitted on the original model); tprAt1: the loss attack's TPR at 1 % FPR. */
  mia: { auc: number; precision: number; recall: number; tprAt1: number } | null;
  /** The per-example witness (RMIA against reference models; verify/mia.ts); null without members. */
  witness: WitnessFigures | null;
}

export interface Predictions {
  forgottenProbs: Float32Array | null;
  memberLoss: Float64Array | null;
  nonMemberLoss: Float64Array | null;
  /** True-label probabilities on members, non-members and population, for the per-example witness. */
  outputs: ModelOutputs | null;
}

export class Evaluator {
  constructor(
    private readonly trainer: Trainer,
    private readonly topologyJson: string,
    private readonly sets: EvalSets,
  ) {}

  private probs(weights: Float32Array, d: LocalDataset): Promise<Float32Array> {
    return this.trainer.predict(this.topologyJson, weights, d.x, d.count);
  }

  /** The model's true-label probabilities on the witness's three sets (null when the run forgets nobody). */
  async outputs(weights: Float32Array): Promise<ModelOutputs | null> {
    const { forgotten, nonMembers, population } = this.sets;
    if (!forgotten || !nonMembers || !population) return null;
    const p = async (d: LocalDataset) => trueClassProbs(await this.probs(weights, d), d.y, d.numClasses);
    return { members: await p(forgotten), nonMembers: await p(nonMembers), population: await p(population) };
  }

  async test(weights: Float32Array): Promise<{ accuracy: number; loss: number }> {
    const t = this.sets.test;
    const p = await this.probs(weights, t);
    return { accuracy: accuracy(p, t.y, t.numClasses), loss: meanCrossEntropy(p, t.y, t.numClasses) };
  }

  /**
   * Every figure of one model. The membership attack applies `attack.threshold`, or with 'fit' fits the threshold on
   * this model's own losses first (the original model's, which every other row is then judged with).
   */
  async figures(weights: Float32Array, attack: { threshold: number | null } | 'fit'): Promise<{ figures: ModelFigures; predictions: Predictions; threshold: number | null }> {
    const { test, forgotten, triggered, nonMembers, targetClass } = this.sets;
    const t = await this.test(weights);
    let forgottenAccuracy: number | null = null;
    let forgottenProbs: Float32Array | null = null;
    let memberLoss: Float64Array | null = null;
    let nonMemberLoss: Float64Array | null = null;
    if (forgotten) {
      forgottenProbs = await this.probs(weights, forgotten);
      forgottenAccuracy = accuracy(forgottenProbs, forgotten.y, forgotten.numClasses);
      memberLoss = perExampleLoss(forgottenProbs, forgotten.y, forgotten.numClasses);
    }
    if (nonMembers) {
      const p = await this.probs(weights, nonMembers);
      nonMemberLoss = perExampleLoss(p, nonMembers.y, nonMembers.numClasses);
    }
    const backdoorASR = triggered ? attackSuccessRate(await this.probs(weights, triggered), test.numClasses, targetClass) : null;
    const threshold = attack === 'fit' ? (memberLoss && nonMemberLoss ? fitLossThreshold(memberLoss, nonMemberLoss) : null) : attack.threshold;
    const mia = memberLoss && nonMemberLoss && threshold !== null ? membershipInference(memberLoss, nonMemberLoss, threshold) : null;
    return {
      figures: {
        testAccuracy: t.accuracy,
        testLoss: t.loss,
        forgottenAccuracy,
        backdoorASR,
        // Lower loss ⇒ member, hence the negated losses as scores.
        mia: mia ? { auc: mia.auc, precision: mia.precision, recall: mia.recall, tprAt1: tprAtFpr(memberLoss!.map((l) => -l), nonMemberLoss!.map((l) => -l), 0.01) } : null,
        // Filled in by the caller once the reference models are known.
        witness: null,
      },
      predictions: { forgottenProbs, memberLoss, nonMemberLoss, outputs: await this.outputs(weights) },
      threshold,
    };
  }
}

/** The witnesses of forgetting a row's figures hold: name, value (null when the run has no such figure), kind. */
export function witnessValues(f: ModelFigures): { name: string; value: number | null; kind: 'rate' | 'auc' }[] {
  return [
    { name: 'backdoor ASR', value: f.backdoorASR, kind: 'rate' },
    { name: 'forgotten-data accuracy', value: f.forgottenAccuracy, kind: 'rate' },
    { name: 'loss-threshold MIA AUC', value: f.mia?.auc ?? null, kind: 'auc' },
    { name: 'loss-threshold MIA TPR at 1% FPR', value: f.mia?.tprAt1 ?? null, kind: 'rate' },
    { name: 'RMIA TPR at 0.1% FPR', value: f.witness?.tprAt0_1 ?? null, kind: 'rate' },
    { name: 'RMIA TPR at 1% FPR', value: f.witness?.tprAt1 ?? null, kind: 'rate' },
    { name: 'RMIA AUC', value: f.witness?.auc ?? null, kind: 'auc' },
  ];
}
