import { randomBytes, scryptSync } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateSecret, hashIssuedSecret, hashSecret, storedKey, verifySecret } from './credentials.js';

test('an issued secret is 32 random bytes in base64url, different each time', () => {
  const a = generateSecret();
  assert.match(a, /^[A-Za-z0-9_-]{43}$/);
  assert.equal(Buffer.from(a, 'base64url').length, 32);
  assert.notEqual(generateSecret(), a);
});

test('a hash verifies its secret only, is salted, and never contains the secret', async () => {
  const secret = generateSecret();
  const [h1, h2] = await Promise.all([hashSecret(secret), hashSecret(secret)]);
  assert.notEqual(h1, h2, 'salted');
  assert.equal(h1.includes(secret), false);
  assert.equal(await verifySecret(secret, h1), true);
  assert.equal(await verifySecret(secret, h2), true);
  assert.equal(await verifySecret(secret + 'x', h1), false);
  assert.equal(await verifySecret('', h1), false);
});

test('hashes written by the synchronous scrypt of earlier versions still verify', async () => {
  const salt = randomBytes(16);
  const legacy = `scrypt$${salt.toString('hex')}$${scryptSync('old-device-secret', salt, 32).toString('hex')}`;
  assert.equal(await verifySecret('old-device-secret', legacy), true);
  assert.equal(await verifySecret('old-device-secreT', legacy), false);
});

test('a malformed stored hash matches nothing', async () => {
  for (const bad of ['', 'plain', 'bcrypt$aa$bb', 'scrypt$$', 'scrypt$00$00', 'scrypt$aa$bb$cc']) assert.equal(await verifySecret('x', bad), false, bad);
});

test('hashing runs off the event loop: timers keep firing while hashes are computed', async () => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    await Promise.all(Array.from({ length: 8 }, () => hashSecret('s')));
  } finally {
    clearInterval(timer);
  }
  // Eight synchronous scrypts would have held the loop for their whole duration: not one tick in between.
  assert.ok(ticks > 0, `event loop ticks during hashing: ${ticks}`);
});

test('an issued secret is kept as its sha256 and verifies only itself', async () => {
  const secret = generateSecret();
  const stored = hashIssuedSecret(secret);
  assert.match(stored, /^sha256\$[0-9a-f]{64}$/);
  assert.ok(!stored.includes(secret));
  assert.equal(await verifySecret(secret, stored), true);
  assert.equal(await verifySecret(generateSecret(), stored), false);
  assert.equal(await verifySecret(secret, `${stored}$extra`), false);
  assert.equal(await verifySecret(secret, 'sha256$abcd'), false, 'a truncated digest matches nothing');
});

test('a stored credential is the key a client derives from its secret: issued (sha256) and chosen (scrypt, protocol 1 records too)', async () => {
  const { issuedSecretKey, scryptSecretKey, KeyDerivation } = await import('@fedunlearn/protocol');
  const issued = generateSecret();
  const k1 = storedKey(hashIssuedSecret(issued))!;
  assert.equal(k1.derivation, KeyDerivation.SHA256);
  assert.deepEqual(Buffer.from(k1.key), Buffer.from(issuedSecretKey(issued)));
  // A record protocol 1 stored for an enrolled client: the client reaches the same key with the salt it is sent.
  const chosen = 'my own secret, é and all';
  const k2 = storedKey(await hashSecret(chosen))!;
  assert.equal(k2.derivation, KeyDerivation.SCRYPT);
  assert.deepEqual(Buffer.from(await scryptSecretKey(chosen, k2.salt!)), Buffer.from(k2.key));
  assert.notDeepEqual(Buffer.from(await scryptSecretKey(chosen + 'x', k2.salt!)), Buffer.from(k2.key));
  for (const bad of ['', 'sha256$abcd', 'scrypt$00$11', 'md5$x', `sha256$${'0'.repeat(64)}$x`]) assert.equal(storedKey(bad), null, bad);
});
