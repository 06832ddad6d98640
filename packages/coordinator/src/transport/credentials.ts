import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { KeyDerivation } from '@fedunlearn/protocol';

/**
 * Client secrets are stored only as hashes. A secret a client chose (trust-on-first-use enrolment) may be guessable,
 * so it is kept as a salted scrypt hash, `scrypt$<salt hex>$<hash hex>` (N=16384, r=8, p=1, node's defaults), run on
 * libuv's thread pool so that a reconnect storm queues there instead of blocking the event loop. A secret the
 * coordinator issued holds 256 random bits: no dictionary can reach it, so a slow hash buys nothing and a plain
 * `sha256$<hash hex>` keeps a reconnect storm of a thousand clients to milliseconds of CPU instead of half a minute.
 *
 * From protocol 2 on, the stored hash is the HMAC key of the client's hello proofs (storedKey): the client derives the
 * same key from its secret (sha256, or scrypt with the salt the coordinator's Challenge names) and the secret itself
 * never crosses the wire. The price: the stored value now authenticates by itself, so the database must be kept as
 * secret as the credentials (rotate them after a leak).
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

/** The HMAC key a stored credential holds, with how a client derives it (the salt for scrypt); null when malformed. */
export function storedKey(stored: string): { derivation: KeyDerivation; key: Uint8Array; salt?: Uint8Array } | null {
  const [scheme, a, b, extra] = stored.split('$');
  if (scheme === 'sha256' && a && b === undefined) {
    const key = Buffer.from(a, 'hex');
    return key.length === 32 ? { derivation: KeyDerivation.SHA256, key } : null;
  }
  if (scheme === 'scrypt' && a && b && extra === undefined) {
    const salt = Buffer.from(a, 'hex');
    const key = Buffer.from(b, 'hex');
    // Hello proofs derive 32-byte keys with node's default cost, which is what hashSecret stored.
    return key.length === 32 && salt.length >= 8 ? { derivation: KeyDerivation.SCRYPT, key, salt } : null;
  }
  return null;
}
