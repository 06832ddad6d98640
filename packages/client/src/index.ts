export * from './dataset.js';
export * from './backend.js';
export * from './trainer.js';
export * from './federated-client.js';
export {
  activeWasmTrainingKernels,
  registerWasmTrainingKernels,
  restoreWasmKernels,
  WASM_TRAINING_KERNELS,
  type WasmTrainingKernel,
} from './wasm-kernels.js';
