export * from './dataset.js';
export * from './backend.js';
export * from './trainer.js';
export * from './federated-client.js';
export { registerWasmTrainingKernels } from './wasm-conv2d-grad.js';
