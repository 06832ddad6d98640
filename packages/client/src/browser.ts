// The browser entry (package.json `exports`, condition `browser`): the same API as the Node entry. Bundlers that
// target browsers also swap backend.ts for backend.browser.ts (package.json `browser`), so nothing Node-only
// (tfjs-node, fs, path, module) reaches a page: the backends are webgl, then wasm, then cpu.
import './browser-globals.js';

export * from './index.js';
