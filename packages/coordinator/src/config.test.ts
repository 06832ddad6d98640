import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, coordinatorOptionsOf, loadConfig, modelOf } from './config.js';

const dir = mkdtempSync(join(tmpdir(), 'fedunlearn-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

/** The ConfigError's issue lines, failing the test when loading succeeds or fails otherwise. */
function issuesOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
    return e.issues;
  }
  assert.fail('the configuration was accepted');
}

const YAML = `
retention: fp16
clientsPerRound: 5
lr: 0.05
inputShape: [28, 28, 1]
model: cnn
operatorToken: from-the-file
`;
const JSON_TEXT = JSON.stringify({ retention: 'fp16', clientsPerRound: 5, lr: 0.05, inputShape: [28, 28, 1], model: 'cnn', operatorToken: 'from-the-file' });

test('the defaults: the built-in mlp for 784 inputs and 10 classes, ./data, port 8080', () => {
  const c = loadConfig({ overrides: {} });
  assert.equal(c.model, 'mlp');
  assert.deepEqual(c.inputShape, [784]);
  assert.equal(c.classes, 10);
  assert.equal(c.data, './data');
  assert.equal(c.port, 8080);
  assert.equal(c.operatorToken, undefined);
});

test('YAML and JSON files with the same settings load to the same config', () => {
  const fromYaml = loadConfig({ file: file('a.yaml', YAML), overrides: {} });
  const fromYml = loadConfig({ file: file('a.yml', YAML), overrides: {} });
  const fromJson = loadConfig({ file: file('a.json', JSON_TEXT), overrides: {} });
  assert.deepEqual(fromYaml, fromJson);
  assert.deepEqual(fromYml, fromJson);
  assert.equal(fromYaml.retention, 'fp16');
  assert.deepEqual(fromYaml.inputShape, [28, 28, 1]);
  // Unset in the file: the defaults fill in.
  assert.deepEqual(fromYaml.port, loadConfig({ overrides: {} }).port);
});

test('flags override the file, the file overrides the defaults, and an absent flag leaves the file value', () => {
  const c = loadConfig({
    file: file('b.yaml', YAML),
    overrides: { lr: 0.2, retention: undefined, inputShape: '32,32,3', port: 0 },
  });
  assert.equal(c.lr, 0.2);
  assert.equal(c.retention, 'fp16');
  assert.equal(c.clientsPerRound, 5);
  assert.deepEqual(c.inputShape, [32, 32, 3]);
  assert.equal(c.port, 0);
  assert.equal(c.operatorToken, 'from-the-file');
  assert.equal(c.host, loadConfig({ overrides: {} }).host);
});

test('a bad value names its field and the allowed values, from a file or from a flag', () => {
  const fromFile = issuesOf(() => loadConfig({ file: file('bad.yaml', 'retention: fp64\n'), overrides: {} }));
  assert.equal(fromFile.length, 1);
  assert.match(fromFile[0]!, /^retention: expected one of fp32\|fp16\|int8\|norms/);
  assert.match(fromFile[0]!, /fp64/);

  const fromFlags = issuesOf(() => loadConfig({ overrides: { lr: 'fast' as unknown as number, enrolment: 'maybe' as 'open' } }));
  assert.ok(fromFlags.some((i) => /^lr: expected number/.test(i)), fromFlags.join('\n'));
  assert.ok(fromFlags.some((i) => /^enrolment: expected one of open\|closed/.test(i)), fromFlags.join('\n'));

  // A flag fixes a bad file value: the merge happens before validation.
  assert.equal(loadConfig({ file: file('bad2.yaml', 'retention: fp64\n'), overrides: { retention: 'int8' } }).retention, 'int8');
});

test('cross-field and unknown-field errors name the field', () => {
  // A client's forget request must be able to run on the history kept: refused at start, not at the first request.
  assert.match(issuesOf(() => loadConfig({ overrides: { clientForgetMethod: 'fedrecover' } }))[0]!, /^clientForgetMethod: fedrecover needs every round's full updates/);
  assert.match(issuesOf(() => loadConfig({ overrides: { clientForgetMethod: 'replay', retention: 'norms' } }))[0]!, /^clientForgetMethod: replay re-applies stored updates/);
  assert.equal(loadConfig({ overrides: { clientForgetMethod: 'fedrecover', historyInterval: 1 } }).clientForgetMethod, 'fedrecover');
  assert.equal(coordinatorOptionsOf(loadConfig({ overrides: { clientForgetMethod: 'sifu' } })).clientForgetMethod, 'sifu');
  assert.match(issuesOf(() => loadConfig({ overrides: { clientForgetMethod: 'erase' as 'sifu' } }))[0]!, /^clientForgetMethod: expected one of federaser\|replay/);
  assert.match(issuesOf(() => loadConfig({ overrides: { clientsPerRound: 3, minClients: 4 } }))[0]!, /^minClients: must be at most clientsPerRound \(3\)/);
  assert.match(issuesOf(() => loadConfig({ overrides: { model: 'cnn' } }))[0]!, /^inputShape: cnn needs/);
  assert.match(issuesOf(() => loadConfig({ overrides: { inputShape: '28,x' } }))[0]!, /^inputShape\.1: expected number, got "x"/);
  assert.match(issuesOf(() => loadConfig({ overrides: { host: '' } }))[0]!, /^host: must not be empty/);
  assert.match(issuesOf(() => loadConfig({ overrides: { port: 70000 } }))[0]!, /^port: must be <= 65535/);
  assert.match(issuesOf(() => loadConfig({ file: file('typo.json', '{"retension": "fp16"}'), overrides: {} }))[0]!, /unknown field retension/);
});

test('a bad operator token is named but never echoed', () => {
  const [issue] = issuesOf(() => loadConfig({ overrides: { operatorToken: 'hunter2' } }));
  assert.match(issue!, /^operatorToken: must be at least 8 characters/);
  assert.doesNotMatch(issue!, /hunter2/);
});

test('file problems are ConfigErrors: missing, unparsable, wrong extension, not an object', () => {
  assert.match(issuesOf(() => loadConfig({ file: join(dir, 'nope.yaml'), overrides: {} }))[0]!, /^config: cannot read/);
  assert.match(issuesOf(() => loadConfig({ file: file('broken.json', '{"port": '), overrides: {} }))[0]!, /not valid JSON/);
  assert.match(issuesOf(() => loadConfig({ file: file('c.toml', 'port = 1'), overrides: {} }))[0]!, /\.yaml, \.yml or \.json/);
  assert.match(issuesOf(() => loadConfig({ file: file('list.yaml', '- 1\n- 2\n'), overrides: {} }))[0]!, /must hold an object/);
  // An empty YAML file sets nothing.
  assert.deepEqual(loadConfig({ file: file('empty.yaml', ''), overrides: {} }), loadConfig({ overrides: {} }));
});

test("a relative data directory in a file is the file's neighbour; from a flag it is the working directory's", () => {
  const f = file('d.yaml', 'data: state\n');
  assert.equal(loadConfig({ file: f, overrides: {} }).data, join(dir, 'state'));
  assert.equal(loadConfig({ file: f, overrides: { data: 'elsewhere' } }).data, 'elsewhere');
  assert.equal(coordinatorOptionsOf(loadConfig({ file: f, overrides: { data: 'elsewhere' } })).dataDir, resolve('elsewhere'));
});

test('the quorum defaults to min(2, clientsPerRound)', () => {
  assert.equal(loadConfig({ overrides: { clientsPerRound: 1 } }).minClients, 1);
  assert.equal(loadConfig({ overrides: { clientsPerRound: 8 } }).minClients, 2);
  assert.equal(loadConfig({ overrides: { clientsPerRound: 8, minClients: 5 } }).minClients, 5);
});

test('a config becomes the coordinator options and the model it names', () => {
  const c = loadConfig({
    overrides: {
      clientsPerRound: 4,
      minClients: 3,
      roundDeadlineMs: 1234,
      seed: 7,
      lr: 0.3,
      batchSize: 16,
      localEpochs: 2,
      historyInterval: 3,
      retention: 'int8',
      enrolment: 'closed',
      operatorToken: 'a-long-token',
      model: 'cnn',
      inputShape: [28, 28, 1],
      classes: 26,
    },
  });
  const o = coordinatorOptionsOf(c);
  assert.deepEqual(o.federation, {
    clientsPerRound: 4,
    minClients: 3,
    roundDeadlineMs: 1234,
    seed: 7,
    hyper: { learningRate: 0.3, batchSize: 16, localEpochs: 2 },
    maxRoundAttempts: c.maxRoundAttempts,
    waitForClientsMs: c.waitForClientsMs,
  });
  assert.equal(o.historyInterval, 3);
  assert.equal(o.retention, 'int8');
  assert.equal(o.enrolment, 'closed');
  assert.equal(o.operatorToken, 'a-long-token');
  assert.equal(o.metricsAuth, false, '/metrics is open unless asked');
  assert.equal(coordinatorOptionsOf(loadConfig({ overrides: { metricsAuth: true } })).metricsAuth, true);
  assert.deepEqual(modelOf(c), { name: 'cnn', options: { inputShape: [28, 28, 1], numClasses: 26, seed: 7 } });
  // No token configured: the option is absent, not an empty string that would read as "a token is required".
  assert.equal('operatorToken' in coordinatorOptionsOf(loadConfig({ overrides: {} })), false);
});

test('security: enrolment is closed unless asked; limits default field by field; bad limits are named', () => {
  const d = loadConfig({ overrides: {} });
  assert.equal(d.enrolment, 'closed');
  assert.deepEqual(coordinatorOptionsOf(d).limits, {});
  assert.equal('tls' in coordinatorOptionsOf(d), false);
  const f = file('limits.yaml', 'enrolment: open\nlimits:\n  handshakeBurst: 50\n  forgetRequestsPerHour: 1\n');
  const c = loadConfig({ file: f, overrides: {} });
  assert.equal(c.enrolment, 'open');
  assert.deepEqual(coordinatorOptionsOf(c).limits, { handshakeBurst: 50, forgetRequestsPerHour: 1 });
  const bad = issuesOf(() => loadConfig({ file: file('bad-limits.yaml', 'limits:\n  handshakeBurst: 0\n  authLockoutMs: 5000\n  authMaxLockoutMs: 10\n  nonsense: 1\n'), overrides: {} }));
  assert.ok(bad.some((i) => /^limits\.handshakeBurst: must be > 0/.test(i)), bad.join('\n'));
  assert.ok(bad.some((i) => /^limits: unknown field nonsense/.test(i)), bad.join('\n'));
  const cross = issuesOf(() => loadConfig({ file: file('cross-limits.yaml', 'limits:\n  authLockoutMs: 5000\n  authMaxLockoutMs: 10\n'), overrides: {} }));
  assert.ok(cross.some((i) => /^limits\.authMaxLockoutMs: must be at least authLockoutMs/.test(i)), cross.join('\n'));
});

test('security: HTTP bounds (event streams, request deadlines) are limits like the others; a header deadline beyond the request deadline is named', () => {
  const f = file('http-limits.yaml', 'limits:\n  eventStreamsPerAddress: 2\n  eventStreams: 10\n  httpHeadersTimeoutMs: 2000\n  httpRequestTimeoutMs: 5000\n  httpKeepAliveTimeoutMs: 7000\n');
  assert.deepEqual(coordinatorOptionsOf(loadConfig({ file: f, overrides: {} })).limits, {
    eventStreamsPerAddress: 2,
    eventStreams: 10,
    httpHeadersTimeoutMs: 2000,
    httpRequestTimeoutMs: 5000,
    httpKeepAliveTimeoutMs: 7000,
  });
  const zero = issuesOf(() => loadConfig({ file: file('zero-streams.yaml', 'limits:\n  eventStreamsPerAddress: 0\n'), overrides: {} }));
  assert.ok(zero.some((i) => /^limits\.eventStreamsPerAddress: must be > 0/.test(i)), zero.join('\n'));
  // Only one given: the other's default (30 s request deadline) is what it is compared with.
  const cross = issuesOf(() => loadConfig({ file: file('cross-http.yaml', 'limits:\n  httpHeadersTimeoutMs: 40000\n'), overrides: {} }));
  assert.ok(cross.some((i) => /^limits\.httpRequestTimeoutMs: must be at least httpHeadersTimeoutMs \(40000\)/.test(i)), cross.join('\n'));
});

test('uploads: flow control options default field by field, 0 turns grants off, bad ones are named', () => {
  assert.deepEqual(coordinatorOptionsOf(loadConfig({ overrides: {} })).uploads, {});
  const c = loadConfig({ file: file('uploads.yaml', 'uploads:\n  windowBytes: 1048576\n  grantAboveBytes: 0\n'), overrides: {} });
  assert.deepEqual(coordinatorOptionsOf(c).uploads, { windowBytes: 1048576, grantAboveBytes: 0 });
  const bad = issuesOf(() => loadConfig({ file: file('bad-uploads.yaml', 'uploads:\n  windowBytes: 0\n  grantAboveBytes: -1\n  nonsense: 1\n'), overrides: {} }));
  assert.ok(bad.some((i) => /^uploads\.windowBytes: must be > 0/.test(i)), bad.join('\n'));
  assert.ok(bad.some((i) => /^uploads\.grantAboveBytes: /.test(i)), bad.join('\n'));
  assert.ok(bad.some((i) => /^uploads: unknown field nonsense/.test(i)), bad.join('\n'));
});

test('tls: certificate paths in a file are its neighbours and are read into the options; an unreadable one is named', () => {
  const sub = join(dir, 'tls');
  mkdirSync(sub, { recursive: true });
  writeFileSync(join(sub, 'cert.pem'), 'CERT PEM');
  writeFileSync(join(sub, 'key.pem'), 'KEY PEM');
  const f = join(sub, 'tls.yaml');
  writeFileSync(f, 'tls:\n  cert: cert.pem\n  key: key.pem\n');
  const c = loadConfig({ file: f, overrides: {} });
  assert.deepEqual(c.tls, { cert: join(sub, 'cert.pem'), key: join(sub, 'key.pem') });
  assert.deepEqual(coordinatorOptionsOf(c).tls, { cert: 'CERT PEM', key: 'KEY PEM' });
  const missing = loadConfig({ overrides: { tls: { cert: join(sub, 'cert.pem'), key: join(sub, 'nope.pem') } } });
  const issues = issuesOf(() => coordinatorOptionsOf(missing));
  assert.match(issues[0]!, /^tls\.key: cannot read .*nope\.pem/);
  assert.ok(issuesOf(() => loadConfig({ overrides: { tls: { cert: 'c.pem' } as never } })).some((i) => /^tls\.key: expected string/.test(i)));
});

test('forget jobs and offline clients: a bounded wait (default 5 min) and a policy (default fail), from a file or a flag; a bad policy is named', () => {
  assert.deepEqual(coordinatorOptionsOf(loadConfig({ overrides: {} })).jobs, { waitMs: 300_000, policy: 'fail' });
  const c = loadConfig({ file: file('jobs.yaml', 'jobWaitForClientsMs: 60000\njobOfflinePolicy: server-side\n'), overrides: { jobWaitForClientsMs: 5000 } });
  assert.deepEqual(coordinatorOptionsOf(c).jobs, { waitMs: 5000, policy: 'server-side' });
  const bad = issuesOf(() => loadConfig({ overrides: { jobOfflinePolicy: 'wait-forever' as 'fail', jobWaitForClientsMs: -1 } }));
  assert.ok(bad.some((i) => /^jobOfflinePolicy: expected one of fail\|server-side, got "wait-forever"/.test(i)), bad.join('\n'));
  assert.ok(bad.some((i) => /^jobWaitForClientsMs: must be >= 0/.test(i)), bad.join('\n'));
});

test('aggregation and update bounds: the strategy a config names, its parameters checked, the bounds passed on', () => {
  assert.equal(coordinatorOptionsOf(loadConfig({ overrides: {} })).strategy!.name, 'fedavg');
  const file1 = file('robust.yaml', 'aggregation:\n  strategy: trimmed-mean\n  trimFraction: 0.2\nupdates:\n  maxNorm: 100\n  medianFactor: 5\n');
  const o = coordinatorOptionsOf(loadConfig({ file: file1, overrides: {} }));
  assert.equal(o.strategy!.name, 'trimmed-mean');
  assert.deepEqual(o.updateBounds, { maxNorm: 100, medianFactor: 5 });
  assert.match(issuesOf(() => loadConfig({ file: file('clip.yaml', 'aggregation:\n  strategy: clipped-fedavg\n'), overrides: {} }))[0]!, /^aggregation\.clipNorm: clipped-fedavg needs/);
  assert.match(issuesOf(() => loadConfig({ file: file('trim.yaml', 'aggregation:\n  strategy: trimmed-mean\n  trimFraction: 0.5\n'), overrides: {} }))[0]!, /^aggregation\.trimFraction/);
  assert.match(issuesOf(() => loadConfig({ file: file('agg.yaml', 'aggregation:\n  strategy: krum\n'), overrides: {} }))[0]!, /^aggregation\.strategy/);
});

test("an unknown field of a nested section lists that section's fields as allowed, not the top-level keys", () => {
  const limits = issuesOf(() => loadConfig({ overrides: { limits: { bogus: 1 } as never } }));
  assert.equal(limits.length, 1, limits.join('\n'));
  assert.match(limits[0]!, /^limits: unknown field bogus \(allowed: handshakeBurst, handshakeRefillPerSecond, authMaxFailures, .*operatorMutationsPerMinute, connectionsPerAddress, eventStreamsPerAddress, .*httpKeepAliveTimeoutMs\)$/);
  assert.doesNotMatch(limits[0]!, /clientsPerRound/);
  const uploads = issuesOf(() => loadConfig({ overrides: { uploads: { bogus: 1 } as never } }));
  assert.match(uploads[0]!, /^uploads: unknown field bogus \(allowed: windowBytes, grantAboveBytes, uploadTimeoutMs\)$/);
  const tls = issuesOf(() => loadConfig({ overrides: { tls: { cert: 'a', key: 'b', bogus: 1 } as never } }));
  assert.match(tls[0]!, /^tls: unknown field bogus \(allowed: cert, key, ca\)$/);
  // The top level still lists the top-level keys.
  assert.match(issuesOf(() => loadConfig({ overrides: { bogus: 1 } as never }))[0]!, /^config: unknown field bogus \(allowed: port, host, data, .*\)$/);
});

test('round cadence, stopping rule and model retention: defaults that do not fill a disk, and flags or keys that change them', () => {
  const d = loadConfig({ overrides: {} });
  assert.equal(d.roundIntervalMs, 60_000);
  assert.equal(d.maxRounds, 0);
  assert.equal(d.patienceRounds, 0);
  assert.equal(d.keepLastModels, 10);
  assert.equal(d.keepModelsEvery, 100);
  const o = coordinatorOptionsOf(loadConfig({ file: file('cadence.yaml', 'roundIntervalMs: 5000\nmaxRounds: 50\nkeepLastModels: 3\n'), overrides: { patienceRounds: 4, minDelta: 0.01, keepModelsEvery: 0 } }));
  assert.equal(o.roundIntervalMs, 5_000);
  assert.deepEqual(o.stopping, { maxRounds: 50, patienceRounds: 4, minDelta: 0.01 });
  assert.deepEqual(o.modelRetention, { keepLast: 3, keepEvery: 0 });
  assert.match(issuesOf(() => loadConfig({ overrides: { maxRounds: -1 } }))[0]!, /^maxRounds: must be >= 0/);
});
