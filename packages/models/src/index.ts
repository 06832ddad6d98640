export * from './architectures.js';
export * from './definition.js';
