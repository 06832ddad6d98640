export * from './architectures.js';
export * from './definition.js';
export * from './quiet.js';
