import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

/**
 * Client secrets are stored only as salted scrypt hashes: `scrypt$<salt hex>$<hash hex>` (N=16384, r=8, p=1, node's
 * defaults). Hashing runs on libuv's thread pool: a reconnect storm queues there instead of blocking the event loop.
 */

function scryptAsync(secret: string, salt: Buffer, keylen: number): Promise<Buffer> {
  return new Promise((resolve, reject) => scrypt(secret, salt, keylen, (err, key) => (err ? reject(err) : resolve(key))));
}

/** A fresh issued secret: 32 random bytes, base64url (43 characters). */
export function generateSecret(): string {
  return randomBytes(32).toString('base64url');
}

export async function hashSecret(secret: string): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scryptAsync(secret, salt, 32);
  return `scrypt$${salt.toString('hex')}$${hash.toString('hex')}`;
}

/** Whether `secret` matches a stored hash; a malformed stored value matches nothing. */
export async function verifySecret(secret: string, stored: string): Promise<boolean> {
  const [scheme, saltHex, hashHex, extra] = stored.split('$');
  if (scheme !== 'scrypt' || !saltHex || !hashHex || extra !== undefined) return false;
  const expected = Buffer.from(hashHex, 'hex');
  if (expected.length < 16) return false;
  const actual = await scryptAsync(secret, Buffer.from(saltHex, 'hex'), expected.length);
  return timingSafeEqual(actual, expected);
}
