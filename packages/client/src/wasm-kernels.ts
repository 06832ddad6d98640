import type {
  BatchMatMulAttrs,
  Conv2DBackpropFilterAttrs,
  Conv2DBackpropInputAttrs,
  DataId,
  KernelConfig,
  KernelFunc,
  NamedAttrMap,
  TensorInfo,
} from '@tensorflow/tfjs';

type Tf = typeof import('@tensorflow/tfjs');

/**
 * Kernels this SDK adds to (or puts in front of) tfjs 4.22's wasm backend so that training runs at the speed of its
 * XNNPACK convolution and matrix multiply. Each is built only from the backend's own kernels (Transpose, Reverse,
 * Slice, Conv2D, BatchMatMul), so the module runs unchanged in Node and in a browser.
 *
 * - `Conv2DBackpropFilter`: missing from the backend, so convolutional models could not train on wasm at all.
 * - `Conv2DBackpropInput`: the backend's kernel is a scalar loop (3.9 GFLOP/s against 35 for its Conv2D); nearly half
 *   of a CNN training step went there.
 * - `BatchMatMul`: the backend hands a matmul with a transposed operand to a plain loop instead of XNNPACK (1.4-2.8
 *   GFLOP/s); every dense layer's gradients (dW = xᵀ·dy, dx = dy·Wᵀ) are such matmuls.
 *
 * MaxPoolGrad stays the backend's (a scalar loop, about a sixth of the CNN's step once the kernels above are in): a
 * version from its MaxPoolWithArgmax, Equal and ScatterNd kernels was slower still (those are scalar loops too, Equal
 * with broadcasting much slower), and MaxPoolWithArgmax starts its search at FLT_MIN, so a window without a positive
 * value gets index 0 of the tensor. The backend's MaxPoolGrad has the same start and misroutes the gradient of a
 * window whose values are all negative (not reached after a ReLU, as in packages/models).
 *
 * MaxPoolGrad, also a plain loop upstream, is left to the backend: after the kernels above it is a few per cent of the
 * CNN's step (`npm run bench -- --only training` prints the split).
 */
export const WASM_TRAINING_KERNELS = ['Conv2DBackpropFilter', 'Conv2DBackpropInput', 'BatchMatMul'] as const;
export type WasmTrainingKernel = (typeof WASM_TRAINING_KERNELS)[number];

/** Marks a kernel config as ours and keeps the backend's kernel it replaced (undefined when there was none). */
interface OurKernelConfig extends KernelConfig {
  fedunlearnReplaces: KernelConfig | undefined;
}

function isOurs(k: KernelConfig | undefined): k is OurKernelConfig {
  return k !== undefined && 'fedunlearnReplaces' in k;
}

/** The slice of the wasm backend these kernels need: freeing the intermediates they allocate. */
interface DisposingBackend {
  disposeData(dataId: DataId): boolean;
}

/**
 * Registers the training kernels on the 'wasm' backend if wasm is the active backend (`only` picks a subset; default
 * all). A kernel already ours is left as it is; `Conv2DBackpropFilter` is only added where the backend has none (a
 * later tfjs may ship its own, which then wins). Kernels the backend has are replaced, and called by ours for the
 * cases ours do not cover. Returns the kernel names it registered. Idempotent.
 */
export function registerWasmTrainingKernels(tf: Tf, only: readonly WasmTrainingKernel[] = WASM_TRAINING_KERNELS): string[] {
  if (tf.getBackend() !== 'wasm') return [];
  const registered: string[] = [];
  for (const name of only) {
    const current = tf.getKernel(name, 'wasm');
    if (isOurs(current)) continue;
    if (name === 'Conv2DBackpropFilter' && current !== undefined) continue;
    const config = makeKernel(tf, name, current);
    // registerKernel warns when a name is taken; the backend's kernel stays reachable through `fedunlearnReplaces`.
    if (current !== undefined) tf.unregisterKernel(name, 'wasm');
    tf.registerKernel(config);
    registered.push(name);
  }
  return registered;
}

/**
 * Puts the backend's own kernels back in place of ours (`Conv2DBackpropFilter`, which has none, stays unless named in
 * `only`). For side-by-side measurements and tests; returns the kernel names it restored or removed.
 */
export function restoreWasmKernels(tf: Tf, only: readonly WasmTrainingKernel[] = ['Conv2DBackpropInput', 'BatchMatMul']): string[] {
  const restored: string[] = [];
  for (const name of only) {
    const current = tf.getKernel(name, 'wasm');
    if (!isOurs(current)) continue;
    tf.unregisterKernel(name, 'wasm');
    if (current.fedunlearnReplaces !== undefined) tf.registerKernel(current.fedunlearnReplaces);
    restored.push(name);
  }
  return restored;
}

/** Which of the training kernels are ours right now. */
export function activeWasmTrainingKernels(tf: Tf): WasmTrainingKernel[] {
  return WASM_TRAINING_KERNELS.filter((n) => isOurs(tf.getKernel(n, 'wasm')));
}

function makeKernel(tf: Tf, name: WasmTrainingKernel, replaces: KernelConfig | undefined): OurKernelConfig {
  switch (name) {
    case 'Conv2DBackpropFilter':
      return { ...conv2DBackpropFilterConfig(tf), fedunlearnReplaces: replaces };
    case 'Conv2DBackpropInput':
      if (replaces === undefined) throw new Error('the wasm backend has no Conv2DBackpropInput kernel to fall back on');
      return { ...conv2DBackpropInputConfig(tf, replaces.kernelFunc), fedunlearnReplaces: replaces };
    case 'BatchMatMul':
      if (replaces === undefined) throw new Error('the wasm backend has no BatchMatMul kernel to build on');
      return { ...batchMatMulConfig(tf, replaces.kernelFunc), fedunlearnReplaces: replaces };
  }
}

/** Runs backend kernels by name and frees the intermediates a kernel function allocated. */
class KernelScope {
  private readonly temps: TensorInfo[] = [];

  constructor(
    private readonly tf: Tf,
    private readonly backend: unknown,
  ) {}

  /** Runs the wasm kernel `name`; the result is freed by `dispose()` unless returned via `run(...)` last. */
  run(name: string, inputs: Record<string, TensorInfo>, attrs: NamedAttrMap): TensorInfo {
    const k = this.tf.getKernel(name, 'wasm');
    if (k === undefined) throw new Error(`wasm backend has no ${name} kernel`);
    return this.call(k.kernelFunc, name, inputs, attrs);
  }

  call(fn: KernelFunc, name: string, inputs: Record<string, TensorInfo>, attrs: NamedAttrMap): TensorInfo {
    const out = fn({ inputs, backend: this.backend as never, attrs });
    if (Array.isArray(out)) throw new Error(`${name} returned several outputs`);
    return out;
  }

  /** Like `run`, and the result is freed by `dispose()`. */
  temp(name: string, inputs: Record<string, TensorInfo>, attrs: NamedAttrMap): TensorInfo {
    const t = this.run(name, inputs, attrs);
    this.temps.push(t);
    return t;
  }

  dispose(): void {
    for (const t of this.temps) (this.backend as DisposingBackend).disposeData(t.dataId);
    this.temps.length = 0;
  }
}

type Pad4 = [[number, number], [number, number], [number, number], [number, number]];

/**
 * Conv2DBackpropFilter for the wasm backend, computed with one forward convolution.
 *
 * dW[kh,kw,ci,co] = sum_{b,y,x} X[b, y*s + kh - padTop, x*s + kw - padLeft, ci] * dY[b,y,x,co]
 *
 * Read the batch axis as channels and the input channels as the batch: with X' = X as [Ci, H, W, B] and
 * F' = dY as [outH, outW, B, Co], that sum is conv2d(X', F') with stride 1 and dilation s (the forward stride),
 * output [Ci, KH, KW, Co] — a 2-D convolution the wasm backend (XNNPACK) runs natively, so the gradient costs about
 * what a forward pass does instead of a JavaScript loop. Upstream: tfjs-backend-wasm registers no such kernel.
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
    const scope = new KernelScope(tf, backend);
    try {
      const channelsLast = info.dataFormat === 'channelsLast';
      // [Ci, H, W, B] and [outH, outW, B, Co] from either layout.
      const xT = scope.temp(tf.Transpose, { x }, { perm: channelsLast ? [3, 1, 2, 0] : [1, 2, 3, 0] });
      const dyT = scope.temp(tf.Transpose, { x: dy }, { perm: channelsLast ? [1, 2, 0, 3] : [2, 3, 0, 1] });
      const kh = info.filterHeight;
      const kw = info.filterWidth;
      // Rows the convolution must see to produce exactly kh outputs: (kh-1) + (outH-1)*s + 1. Rows past the input
      // are zero padding; when the input runs longer (valid padding with a stride that does not divide it), the
      // extra outputs are cut off below rather than the input sliced, since the output is the smaller tensor.
      const padBottom = kh + (info.outHeight - 1) * info.strideHeight - info.padInfo.top - info.inHeight;
      const padRight = kw + (info.outWidth - 1) * info.strideWidth - info.padInfo.left - info.inWidth;
      const explicit: Pad4 = [
        [0, 0],
        [info.padInfo.top, Math.max(0, padBottom)],
        [info.padInfo.left, Math.max(0, padRight)],
        [0, 0],
      ];
      let dw = scope.temp(tf.Conv2D, { x: xT, filter: dyT }, {
        strides: [1, 1],
        dilations: [info.strideHeight, info.strideWidth],
        pad: explicit,
        dataFormat: 'NHWC',
      } as unknown as NamedAttrMap);
      if (dw.shape[1] !== kh || dw.shape[2] !== kw) {
        dw = scope.temp(tf.Slice, { x: dw }, { begin: [0, 0, 0, 0], size: [info.inChannels, kh, kw, info.outChannels] });
      }
      return scope.run(tf.Transpose, { x: dw }, { perm: [1, 2, 0, 3] });
    } finally {
      scope.dispose();
    }
  };
  return { kernelName: tf.Conv2DBackpropFilter, backendName: 'wasm', kernelFunc };
}

/**
 * Conv2DBackpropInput (the input gradient dX of a convolution, also conv2dTranspose) as one XNNPACK convolution.
 *
 * For stride 1: dX[b,i,j,ci] = sum_{kh,kw,co} dY[b, i + padTop - kh, j + padLeft - kw, co] * W[kh,kw,ci,co], which is
 * conv2d(dY, W'), W'[a,c,co,ci] = W[KH-1-a, KW-1-c, ci, co] (the filter reversed in space, its channel axes swapped),
 * with padding KH-1-padTop above and KH-1-padBottom below (likewise left and right) — the standard "full"
 * correlation identity (Dumoulin and Visin, A guide to convolution arithmetic for deep learning, 2016, section 4).
 * W' costs a Reverse and a Transpose of the filter, small next to the convolution.
 *
 * Upstream: tfjs-backend-wasm's kernel is a scalar loop. Strides above 1 and channels-first data, which this
 * identity does not cover without dilating dY, and padding wider than the filter (negative "full" padding) go to
 * the backend's kernel, as before.
 */
export function conv2DBackpropInputConfig(tf: Tf, fallback: KernelFunc): KernelConfig {
  const kernelFunc: KernelFunc = (args) => {
    const { inputs, backend, attrs } = args;
    const dy = inputs['dy'];
    const filter = inputs['filter'];
    if (dy === undefined || filter === undefined) throw new Error('Conv2DBackpropInput needs inputs dy and filter');
    const { strides, pad, dataFormat, dimRoundingMode, inputShape } = attrs as unknown as Conv2DBackpropInputAttrs;
    const info = tf.backend_util.computeConv2DInfo(
      inputShape,
      filter.shape as [number, number, number, number],
      strides,
      1,
      pad,
      dimRoundingMode,
      false,
      tf.backend_util.convertConv2DDataFormat(dataFormat),
    );
    const kh = info.filterHeight;
    const kw = info.filterWidth;
    const full: Pad4 = [
      [0, 0],
      [kh - 1 - info.padInfo.top, kh - 1 - info.padInfo.bottom],
      [kw - 1 - info.padInfo.left, kw - 1 - info.padInfo.right],
      [0, 0],
    ];
    const covered =
      info.strideHeight === 1 &&
      info.strideWidth === 1 &&
      info.dataFormat === 'channelsLast' &&
      dy.dtype === 'float32' &&
      full.every(([a, b]) => a >= 0 && b >= 0);
    if (!covered) return fallback(args);
    const scope = new KernelScope(tf, backend);
    try {
      const reversed = scope.temp(tf.Reverse, { x: filter }, { dims: [0, 1] });
      const flipped = scope.temp(tf.Transpose, { x: reversed }, { perm: [0, 1, 3, 2] });
      const dx = scope.run(tf.Conv2D, { x: dy, filter: flipped }, {
        strides: [1, 1],
        dilations: [1, 1],
        pad: full,
        dataFormat: 'NHWC',
      } as unknown as NamedAttrMap);
      const [b, h, w, c] = info.inShape;
      if (dx.shape[0] !== b || dx.shape[1] !== h || dx.shape[2] !== w || dx.shape[3] !== c) {
        (backend as DisposingBackend).disposeData(dx.dataId);
        throw new Error(`Conv2DBackpropInput produced [${dx.shape}], expected [${info.inShape}]`);
      }
      return dx;
    } finally {
      scope.dispose();
    }
  };
  return { kernelName: tf.Conv2DBackpropInput, backendName: 'wasm', kernelFunc };
}

/**
 * BatchMatMul whose transposed operands are transposed explicitly (the backend's Transpose kernel) before the
 * backend's own BatchMatMul, so the product always takes XNNPACK's fast path. A transpose moves m·k values against
 * the product's m·k·n multiply-adds.
 *
 * Upstream: tfjs-backend-wasm's BatchMatMul sends any product with transposeA or transposeB to a plain loop.
 */
export function batchMatMulConfig(tf: Tf, backendMatMul: KernelFunc): KernelConfig {
  const kernelFunc: KernelFunc = (args) => {
    const { inputs, backend, attrs } = args;
    const a = inputs['a'];
    const b = inputs['b'];
    if (a === undefined || b === undefined) throw new Error('BatchMatMul needs inputs a and b');
    const { transposeA, transposeB } = attrs as unknown as BatchMatMulAttrs;
    // Non-float32 products go to the backend as they are, for its own error.
    if ((!transposeA && !transposeB) || a.dtype !== 'float32' || b.dtype !== 'float32') return backendMatMul(args);
    const scope = new KernelScope(tf, backend);
    try {
      const swapLast = (t: TensorInfo): TensorInfo => {
        const r = t.shape.length;
        const perm = Array.from({ length: r }, (_, i) => (i < r - 2 ? i : i === r - 2 ? r - 1 : r - 2));
        return scope.temp(tf.Transpose, { x: t }, { perm });
      };
      return scope.call(backendMatMul, tf.BatchMatMul, { a: transposeA ? swapLast(a) : a, b: transposeB ? swapLast(b) : b }, {
        ...attrs,
        transposeA: false,
        transposeB: false,
      });
    } finally {
      scope.dispose();
    }
  };
  return { kernelName: tf.BatchMatMul, backendName: 'wasm', kernelFunc };
}
