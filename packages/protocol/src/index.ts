export { fedunlearn } from './gen/proto.js';
export * from './constants.js';
export * from './errors.js';
export * from './weights.js';
export * from './tensor-codec.js';
export * from './envelope.js';
export * from './chunking.js';
export * from './pieces.js';
export * from './channel.js';
