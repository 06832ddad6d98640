import type { Trainer } from '@fedunlearn/client';
import type { LocalDataset } from './data/types.js';
import { accuracy, attackSuccessRate, fitLossThreshold, meanCrossEntropy, membershipInference, perExampleLoss } from './verify/metrics.js';

/** The data a model is judged on; the forgotten clients' data is their clean data, without triggered copies. */
export interface EvalSets {
  test: LocalDataset;
  forgotten: LocalDataset | null;
  /** Triggered test images whose true class is not the target. */
  triggered: LocalDataset | null;
  targetClass: number;
  /** Held-out examples standing against the forgotten clients' data in the membership attack. */
  nonMembers: LocalDataset | null;
}

export interface ModelFigures {
  testAccuracy: number;
  testLoss: number;
  forgottenAccuracy: number | null;
  backdoorASR: number | null;
  mia: { auc: number; precision: number; recall: number } | null;
}

export interface Predictions {
  forgottenProbs: Float32Array | null;
  memberLoss: Float64Array | null;
  nonMemberLoss: Float64Array | null;
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
        mia: mia ? { auc: mia.auc, precision: mia.precision, recall: mia.recall } : null,
      },
      predictions: { forgottenProbs, memberLoss, nonMemberLoss },
      threshold,
    };
  }
}
