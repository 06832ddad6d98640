import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

/**
 * Client secrets are stored only as hashes. A secret a client chose (trust-on-first-use enrolment) may be guessable,
 * so it is kept as a salted scrypt hash, `scrypt$<salt hex>$<hash hex>` (N=16384, r=8, p=1, node's defaults), run on
 * libuv's thread pool so that a reconnect storm queues there instead of blocking the event loop. A secret the
 * coordinator issued holds 256 random bits: no dictionary can reach it, so a slow hash buys nothing and a plain
 * `sha256$<hash hex>` keeps a reconnect storm of a thousand clients to milliseconds of CPU instead of half a minute.
 */

function scryptAsync(secret: string, salt: Buffer, keylen: number): Promise<Buffer> {
  return new Promise((resolve, reject) => scrypt(secret, salt, keylen, (err, key) => (err ? reject(err) : resolve(key))));
}

/** A fresh issued secret: 32 random bytes, base64url (43 characters). */
export function generateSecret(): string {
  return randomBytes(32).toString('base64url');
}

/** The stored form of a secret from generateSecret() (never of a secret a client chose). */
export function hashIssuedSecret(secret: string): string {
  return `sha256$${createHash('sha256').update(secret).digest('hex')}`;
}

export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scryptAsync(secret, salt, 32);
  return `scrypt$${salt.toString('hex')}$${hash.toString('hex')}`;
}

/** Whether `secret` matches a stored hash; a malformed stored value matches nothing. */
export async function verifySecret(secret: string, stored: string): Promise<boolean> {
  const [scheme, saltHex, hashHex, extra] = stored.split('$');
  if (scheme === 'sha256' && saltHex && hashHex === undefined) {
    const expected = Buffer.from(saltHex, 'hex');
    return expected.length === 32 && timingSafeEqual(createHash('sha256').update(secret).digest(), expected);
  }
  if (scheme !== 'scrypt' || !saltHex || !hashHex || extra !== undefined) return false;
  const expected = Buffer.from(hashHex, 'hex');
  if (expected.length < 16) return false;
  const actual = await scryptAsync(secret, Buffer.from(saltHex, 'hex'), expected.length);
  return timingSafeEqual(actual, expected);
}
