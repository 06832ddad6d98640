import { hmac } from '@noble/hashes/hmac.js';
import { scryptAsync } from '@noble/hashes/scrypt.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { ErrorCode, ProtocolError } from './errors.js';
import { fedunlearn } from './gen/proto.js';

/**
 * Challenge-response authentication of a Hello (protocol 2; the message flow is in the proto file). Shared by the SDK,
 * the coordinator and test peers so that all three compute one proof. Pure JavaScript (@noble/hashes), so it runs in
 * browsers too; Node's native scrypt is used when present because it is a few times faster.
 *
 * What it guarantees: the secret never crosses the wire; a proof is valid for one nonce, and the coordinator issues
 * each nonce to one connection and accepts one proof for it, so a captured Hello + HelloProof is useless on any other
 * connection. What it does not: the coordinator stores the key itself (sha256(secret) or scrypt(secret, salt)), so a
 * copy of its database authenticates as every client (rotate the credentials after such a leak; before protocol 2 a
 * stolen sha256 did not, a stolen Hello did). A captured exchange allows offline guessing of a guessable secret at
 * the cost of the key derivation per guess: nothing for an issued 256-bit secret, one scrypt per guess for a chosen one.
 */

export const KeyDerivation = fedunlearn.v1.KeyDerivation;
export type KeyDerivation = fedunlearn.v1.KeyDerivation;

/** The context string every proof starts with: a proof made for something else never verifies as a hello proof. */
export const HELLO_PROOF_CONTEXT = 'fedunlearn/v2/hello-proof';
export const HELLO_NONCE_BYTES = 32;
export const HELLO_KEY_BYTES = 32;
/** scrypt cost for chosen secrets: node's defaults (N = 2^14, r = 8, p = 1), as protocol 1 stored them. */
export const SCRYPT_DEFAULTS = { log2N: 14, r: 8, p: 1 } as const;
/** The most a challenge may ask a client to spend on scrypt (N = 2^17 at r = 8: 128 MiB): a hostile coordinator
 *  cannot make a client allocate without bound. */
const MAX_SCRYPT_LOG2N = 17;

const utf8 = new TextEncoder();

/** The HMAC key for a secret the coordinator issued: sha256 of its UTF-8 bytes (32 bytes). */
export function issuedSecretKey(secret: string): Uint8Array {
  return sha256(utf8.encode(secret));
}

export interface ScryptCost {
  log2N: number;
  r: number;
  p: number;
}

/** The HMAC key for a secret a client chose: scrypt(secret, salt, cost), 32 bytes. Throws INVALID_ARGUMENT on a cost
 *  outside sane bounds. */
export async function scryptSecretKey(secret: string, salt: Uint8Array, cost: ScryptCost = SCRYPT_DEFAULTS): Promise<Uint8Array> {
  const { log2N, r, p } = cost;
  if (!(log2N >= 10 && log2N <= MAX_SCRYPT_LOG2N && r >= 1 && r <= 32 && p >= 1 && p <= 4 && salt.byteLength >= 8 && salt.byteLength <= 64)) {
    throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, `scrypt parameters out of bounds (log2N ${log2N}, r ${r}, p ${p}, salt ${salt.byteLength} bytes)`);
  }
  const N = 2 ** log2N;
  const native = await nodeScrypt();
  if (native) {
    return new Promise((resolve, reject) =>
      native(secret, salt, HELLO_KEY_BYTES, { N, r, p, maxmem: 256 * N * r + 1024 * 1024 }, (err, key) => (err ? reject(err) : resolve(new Uint8Array(key.buffer, key.byteOffset, key.byteLength)))),
    );
  }
  return scryptAsync(utf8.encode(secret), salt, { N, r, p, dkLen: HELLO_KEY_BYTES });
}

type NodeScrypt = (password: string, salt: Uint8Array, keylen: number, options: { N: number; r: number; p: number; maxmem: number }, cb: (err: Error | null, key: Buffer) => void) => void;
let nodeScryptFn: Promise<NodeScrypt | null> | null = null;
function nodeScrypt(): Promise<NodeScrypt | null> {
  const isNode = typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === 'string';
  nodeScryptFn ??= isNode ? import('node:crypto').then((c) => c.scrypt as unknown as NodeScrypt, () => null) : Promise.resolve(null);
  return nodeScryptFn;
}

/** The bytes a hello proof authenticates: context, nonce, session id and client id, separated so none can be shifted. */
function proofMessage(nonce: Uint8Array, sessionId: string, clientId: string): Uint8Array {
  const ctx = utf8.encode(HELLO_PROOF_CONTEXT);
  const sid = utf8.encode(sessionId);
  const cid = utf8.encode(clientId);
  const out = new Uint8Array(ctx.length + 1 + nonce.length + sid.length + 1 + cid.length);
  let at = 0;
  for (const part of [ctx, new Uint8Array([0]), nonce, sid, new Uint8Array([0]), cid]) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** HMAC-SHA256(key, context 0x00 nonce session_id 0x00 client_id): 32 bytes. */
export function helloProof(key: Uint8Array, nonce: Uint8Array, sessionId: string, clientId: string): Uint8Array {
  return hmac(sha256, key, proofMessage(nonce, sessionId, clientId));
}

/** Constant-time equality of two byte strings (false when their lengths differ). */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  let d = 0;
  for (let i = 0; i < a.byteLength; i++) d |= a[i]! ^ b[i]!;
  return d === 0;
}

/**
 * The client's answer to a Challenge: derives the key the challenge names from `secret` and proves it. Throws
 * INVALID_ARGUMENT on a challenge it cannot answer (no nonce, an unknown derivation, scrypt cost out of bounds).
 */
export async function answerChallenge(challenge: fedunlearn.v1.IChallenge, clientId: string, secret: string): Promise<fedunlearn.v1.IHelloProof> {
  const nonce = challenge.nonce ?? new Uint8Array(0);
  if (nonce.byteLength < 16) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, `challenge nonce of ${nonce.byteLength} bytes`);
  let key: Uint8Array;
  switch (challenge.keyDerivation) {
    case KeyDerivation.SHA256:
      key = issuedSecretKey(secret);
      break;
    case KeyDerivation.SCRYPT:
      key = await scryptSecretKey(secret, challenge.salt ?? new Uint8Array(0), { log2N: challenge.scryptLog2N ?? 0, r: challenge.scryptR ?? 0, p: challenge.scryptP ?? 0 });
      break;
    default:
      throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, `unknown key derivation ${challenge.keyDerivation}`);
  }
  const proof = helloProof(key, nonce, challenge.sessionId ?? '', clientId);
  return challenge.enrol ? { proof, enrolKey: key } : { proof };
}
