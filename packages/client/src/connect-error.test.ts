import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeConnectError, explainConnectError } from './connect-error.js';

/** socket.io-client's connect_error from its websocket transport: a TransportError whose description is the ws event. */
function transportError(description: unknown): Error {
  return Object.assign(new Error('websocket error'), { type: 'TransportError', description });
}

test('describeConnectError names the cause the transport carries', () => {
  const url = 'http://coordinator.example:8080';
  const sys = (code: string, message: string) => transportError({ error: Object.assign(new Error(message), { code }), message });
  assert.equal(describeConnectError(url, sys('ECONNREFUSED', 'connect ECONNREFUSED 10.0.0.1:8080')), `cannot connect to ${url}: connection refused (nothing listens at coordinator.example:8080: is the coordinator running, and on this port?)`);
  assert.equal(describeConnectError(url, sys('ENOTFOUND', 'getaddrinfo ENOTFOUND coordinator.example')), `cannot connect to ${url}: DNS: no address found for coordinator.example`);
  assert.match(describeConnectError(url, sys('EAI_AGAIN', 'getaddrinfo EAI_AGAIN coordinator.example')), /DNS: the lookup of coordinator\.example failed/);
  assert.match(describeConnectError(url, sys('DEPTH_ZERO_SELF_SIGNED_CERT', 'self-signed certificate')), /TLS: DEPTH_ZERO_SELF_SIGNED_CERT self-signed certificate \(.*`ca`/);
  assert.match(describeConnectError(url, transportError({ error: new Error('Unexpected server response: 403'), message: 'Unexpected server response: 403' })), /answered HTTP 403 instead of opening a WebSocket/);
  assert.match(describeConnectError(url, sys('EHOSTUNREACH', 'connect EHOSTUNREACH')), /coordinator\.example:8080 is unreachable \(EHOSTUNREACH\)/);
});

test('describeConnectError in a browser, where the WebSocket error event says nothing, tells where to look', () => {
  // What a browser's transport reports: the DOM error event, with no code or message.
  const msg = describeConnectError('https://c.example', transportError({ isTrusted: true, type: 'error' }));
  assert.match(msg, /^cannot connect to https:\/\/c\.example: the WebSocket could not be opened, and the browser does not say why/);
  // Other errors keep their own message (socket.io-client's own connect timeout, a middleware's refusal).
  assert.equal(describeConnectError('http://c', new Error('timeout')), 'cannot connect to http://c: timeout');
});

test('explainConnectError: causes retrying cannot cure fail connect() at once, passing ones are retried', () => {
  const sys = (code: string) => transportError({ error: Object.assign(new Error(code), { code }), message: code });
  for (const code of ['ECONNREFUSED', 'ENOTFOUND', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'EPROTO']) assert.equal(explainConnectError('http://c', sys(code)).final, true, code);
  for (const code of ['ECONNRESET', 'ETIMEDOUT', 'EAI_AGAIN']) assert.equal(explainConnectError('http://c', sys(code)).final, false, code);
  assert.equal(explainConnectError('http://c', transportError({ isTrusted: true })).final, false);
  assert.equal(explainConnectError('http://c', new Error('timeout')).final, false);
});
