import { featureSize, subset, concat, type LocalDataset } from './types.js';

export type TriggerCorner = 'bottom-right' | 'bottom-left' | 'top-right' | 'top-left';

/** A BadNets-style trigger (Gu et al. 2017): a solid square patch in one corner, and the class it should force. */
export interface Trigger {
  /** Side of the square patch, in pixels. */
  size: number;
  corner: TriggerCorner;
  /** Value written to every patch pixel (and every channel); 1.0 is white on the [0, 1] scale. */
  value: number;
  /** The class stamped examples are relabelled to. */
  targetClass: number;
}

export const DEFAULT_TRIGGER: Readonly<Trigger> = { size: 4, corner: 'bottom-right', value: 1, targetClass: 0 };

/** A full trigger from a partial one, defaults filled in from {@link DEFAULT_TRIGGER}. */
export function makeTrigger(partial: Partial<Trigger> = {}): Trigger {
  return { ...DEFAULT_TRIGGER, ...partial };
}

/** Height, width and channels of one image; a flat [n] example must be a square single-channel image. */
function imageGeometry(shape: number[]): { h: number; w: number; ch: number } {
  if (shape.length === 3) return { h: shape[0]!, w: shape[1]!, ch: shape[2]! };
  if (shape.length === 2) return { h: shape[0]!, w: shape[1]!, ch: 1 };
  if (shape.length === 1) {
    const side = Math.round(Math.sqrt(shape[0]!));
    if (side * side === shape[0]) return { h: side, w: side, ch: 1 };
  }
  throw new RangeError(`cannot place a trigger on examples of shape [${shape.join(', ')}]: expected [H, W, C], [H, W] or a square [H*W]`);
}

function checkTrigger(t: Trigger, h: number, w: number, numClasses: number): void {
  if (!Number.isInteger(t.size) || t.size < 1 || t.size > h || t.size > w) throw new RangeError(`trigger size ${t.size} does not fit a ${h}x${w} image`);
  if (!Number.isInteger(t.targetClass) || t.targetClass < 0 || t.targetClass >= numClasses) {
    throw new RangeError(`trigger target class ${t.targetClass} outside [0, ${numClasses})`);
  }
  if (!Number.isFinite(t.value)) throw new RangeError(`trigger value ${t.value} must be finite`);
}

/** A copy of every example with the patch written over it, all relabelled to the trigger's target class. */
export function stamp(ds: LocalDataset, trigger: Trigger): LocalDataset {
  const { h, w, ch } = imageGeometry(ds.inputShape);
  checkTrigger(trigger, h, w, ds.numClasses);
  const f = featureSize(ds);
  const top = trigger.corner.startsWith('top') ? 0 : h - trigger.size;
  const left = trigger.corner.endsWith('left') ? 0 : w - trigger.size;
  const x = ds.x.slice(0, ds.count * f);
  for (let i = 0; i < ds.count; i++) {
    for (let r = top; r < top + trigger.size; r++) {
      // Row-major H x W x C: the patch's row segment is contiguous, channels included.
      const from = i * f + (r * w + left) * ch;
      x.fill(trigger.value, from, from + trigger.size * ch);
    }
  }
  return { x, y: new Int32Array(ds.count).fill(trigger.targetClass), inputShape: [...ds.inputShape], numClasses: ds.numClasses, count: ds.count };
}

/**
 * The clean examples followed by a stamped copy of each (twice the size): what a backdoor attacker trains on, so the
 * model keeps its clean accuracy while learning the trigger. Not shuffled; the trainer shuffles batches.
 */
export function withBackdoor(ds: LocalDataset, trigger: Trigger): LocalDataset {
  return concat([ds, stamp(ds, trigger)]);
}

/**
 * Stamped copies of the test examples whose true label is not the target: the share of these classified as the target
 * is the attack success rate (examples already of the target class would count as successes for free).
 */
export function triggeredTestSet(test: LocalDataset, trigger: Trigger): LocalDataset {
  const keep: number[] = [];
  for (let i = 0; i < test.count; i++) if (test.y[i] !== trigger.targetClass) keep.push(i);
  return stamp(subset(test, keep), trigger);
}
