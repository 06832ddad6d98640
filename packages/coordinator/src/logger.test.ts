import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger, logFormatFromEnv, type LogFormat } from './logger.js';

/** A destination that keeps what the logger wrote. */
function capture(): { stream: Writable; text(): string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _enc, done) {
      chunks.push(chunk.toString());
      done();
    },
  });
  return { stream, text: () => chunks.join('') };
}

const SECRET = 's3cr3t-value-that-must-not-leak';

for (const format of ['json', 'pretty'] as LogFormat[]) {
  test(`secrets are censored wherever a log call puts them (${format})`, async () => {
    const out = capture();
    const log = createLogger({ level: 'debug', format, destination: out.stream });
    log.info({ secret: SECRET }, 'top level');
    log.info({ hello: { clientId: 'c1', secret: SECRET } }, 'a hello');
    log.info({ client: { secret: SECRET, secretHash: SECRET } }, 'nested');
    log.info({ operatorToken: SECRET, config: { operatorToken: SECRET } }, 'config');
    log.debug({ req: { method: 'GET', headers: { authorization: `Bearer ${SECRET}` } } }, 'request');
    log.child({ component: 'x' }).warn({ token: SECRET }, 'child');
    await new Promise((r) => setImmediate(r));
    const text = out.text();
    assert.ok(!text.includes(SECRET), `a secret reached the log:\n${text}`);
    assert.equal(text.split('[Redacted]').length - 1, 8, 'every secret field is there, censored');
    assert.match(text, /c1/, 'the rest of the object is kept');
    if (format === 'json') {
      const lines = text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.equal(lines.length, 6);
      assert.deepEqual(lines[1]!.hello, { clientId: 'c1', secret: '[Redacted]' });
    } else {
      assert.ok(!text.trimStart().startsWith('{'), 'pretty output is not JSON lines');
    }
  });
}

test('the level filters, and FEDUNLEARN_LOG_FORMAT is validated', async () => {
  const out = capture();
  const log = createLogger({ level: 'warn', format: 'json', destination: out.stream });
  log.info('hidden');
  log.warn('shown');
  await new Promise((r) => setImmediate(r));
  assert.match(out.text(), /shown/);
  assert.doesNotMatch(out.text(), /hidden/);
  assert.equal(logFormatFromEnv({}), undefined);
  assert.equal(logFormatFromEnv({ FEDUNLEARN_LOG_FORMAT: 'pretty' }), 'pretty');
  assert.throws(() => logFormatFromEnv({ FEDUNLEARN_LOG_FORMAT: 'xml' }), /json or pretty/);
});
