import type {
  Conv2DBackpropFilterAttrs,
  DataId,
  KernelConfig,
  KernelFunc,
  NamedAttrMap,
  TensorInfo,
} from '@tensorflow/tfjs';

type Tf = typeof import('@tensorflow/tfjs');

/** The slice of the wasm backend this kernel needs: freeing the intermediates it allocates. */
interface DisposingBackend {
  disposeData(dataId: DataId): boolean;
}

/**
 * Kernels tfjs 4.22's wasm backend lacks but training a conv net needs, each paired with the gradient formulation that
 * replaces it. Everything else the CNN's training step uses (MaxPoolGrad, Conv2DBackpropInput, Step, ...) ships with
 * the backend, which the tests check by training the CNN on wasm.
 */
export const WASM_TRAINING_KERNELS = ['Conv2DBackpropFilter'] as const;

/**
 * Registers the missing training kernels on the 'wasm' backend, if wasm is the active backend and they are not
 * registered yet (a later tfjs may ship its own; that one wins). Returns the kernel names it registered.
 */
export function registerWasmTrainingKernels(tf: Tf): string[] {
  if (tf.getBackend() !== 'wasm') return [];
  const registered: string[] = [];
  if (tf.getKernel(tf.Conv2DBackpropFilter, 'wasm') === undefined) {
    tf.registerKernel(conv2DBackpropFilterConfig(tf));
    registered.push(tf.Conv2DBackpropFilter);
  }
  return registered;
}

/**
 * Conv2DBackpropFilter for the wasm backend, computed with one forward convolution.
 *
 * dW[kh,kw,ci,co] = sum_{b,y,x} X[b, y*s + kh - padTop, x*s + kw - padLeft, ci] * dY[b,y,x,co]
 *
 * Read the batch axis as channels and the input channels as the batch: with X' = X as [Ci, H, W, B] and
 * F' = dY as [outH, outW, B, Co], that sum is conv2d(X', F') with stride 1 and dilation s (the forward stride),
 * output [Ci, KH, KW, Co] — a 2-D convolution the wasm backend (XNNPACK) runs natively, so the gradient costs about
 * what a forward pass does instead of a JavaScript loop.
 */
export function conv2DBackpropFilterConfig(tf: Tf): KernelConfig {
  const kernelFunc: KernelFunc = ({ inputs, backend, attrs }) => {
    const x = inputs['x'];
    const dy = inputs['dy'];
    if (x === undefined || dy === undefined) throw new Error('Conv2DBackpropFilter needs inputs x and dy');
    const { strides, pad, dataFormat, dimRoundingMode, filterShape } = attrs as unknown as Conv2DBackpropFilterAttrs;
    const info = tf.backend_util.computeConv2DInfo(
      x.shape as [number, number, number, number],
      filterShape,
      strides,
      1,
      pad,
      dimRoundingMode,
      false,
      tf.backend_util.convertConv2DDataFormat(dataFormat),
    );
    const be = backend as DisposingBackend;
    const run = (name: string, ins: Record<string, TensorInfo>, at: NamedAttrMap): TensorInfo => {
      const k = tf.getKernel(name, 'wasm');
      if (k === undefined) throw new Error(`wasm backend has no ${name} kernel`);
      const out = k.kernelFunc({ inputs: ins, backend, attrs: at });
      if (Array.isArray(out)) throw new Error(`${name} returned several outputs`);
      return out;
    };
    const temps: TensorInfo[] = [];
    const keep = (t: TensorInfo): TensorInfo => {
      temps.push(t);
      return t;
    };
    try {
      const channelsLast = info.dataFormat === 'channelsLast';
      // [Ci, H, W, B] and [outH, outW, B, Co] from either layout.
      const xT = keep(run(tf.Transpose, { x }, { perm: channelsLast ? [3, 1, 2, 0] : [1, 2, 3, 0] }));
      const dyT = keep(run(tf.Transpose, { x: dy }, { perm: channelsLast ? [1, 2, 0, 3] : [2, 3, 0, 1] }));
      const kh = info.filterHeight;
      const kw = info.filterWidth;
      // Rows the convolution must see to produce exactly kh outputs: (kh-1) + (outH-1)*s + 1. Rows past the input
      // are zero padding; when the input runs longer (valid padding with a stride that does not divide it), the
      // extra outputs are cut off below rather than the input sliced, since the output is the smaller tensor.
      const padBottom = kh + (info.outHeight - 1) * info.strideHeight - info.padInfo.top - info.inHeight;
      const padRight = kw + (info.outWidth - 1) * info.strideWidth - info.padInfo.left - info.inWidth;
      const explicit: [[number, number], [number, number], [number, number], [number, number]] = [
        [0, 0],
        [info.padInfo.top, Math.max(0, padBottom)],
        [info.padInfo.left, Math.max(0, padRight)],
        [0, 0],
      ];
      let dw = keep(
        run(
          tf.Conv2D,
          { x: xT, filter: dyT },
          {
            strides: [1, 1],
            dilations: [info.strideHeight, info.strideWidth],
            pad: explicit,
            dataFormat: 'NHWC',
          } as unknown as NamedAttrMap,
        ),
      );
      if (dw.shape[1] !== kh || dw.shape[2] !== kw) {
        dw = keep(run(tf.Slice, { x: dw }, { begin: [0, 0, 0, 0], size: [info.inChannels, kh, kw, info.outChannels] }));
      }
      const out = run(tf.Transpose, { x: dw }, { perm: [1, 2, 0, 3] });
      return out;
    } finally {
      for (const t of temps) be.disposeData(t.dataId);
    }
  };
  return { kernelName: tf.Conv2DBackpropFilter, backendName: 'wasm', kernelFunc };
}
