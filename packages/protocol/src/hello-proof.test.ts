import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac, scryptSync } from 'node:crypto';
import { scrypt as nobleScrypt } from '@noble/hashes/scrypt.js';
import { ErrorCode, ProtocolError } from './errors.js';
import { answerChallenge, HELLO_PROOF_CONTEXT, helloProof, issuedSecretKey, KeyDerivation, scryptSecretKey } from './hello-proof.js';

// The hello proof against independent computations with node:crypto, in the layout the proto documents:
// HMAC-SHA256(key, context 0x00 nonce session_id 0x00 client_id).

const nonce = Uint8Array.from({ length: 32 }, (_, i) => (i * 37 + 11) & 0xff);

function reference(key: Uint8Array, sessionId: string, clientId: string): Buffer {
  return createHmac('sha256', key)
    .update(Buffer.concat([Buffer.from(HELLO_PROOF_CONTEXT), Buffer.from([0]), nonce, Buffer.from(sessionId), Buffer.from([0]), Buffer.from(clientId)]))
    .digest();
}

test('an issued secret: key sha256(secret), proof the documented HMAC; any change of nonce, session or id changes it', async () => {
  const secret = 'kQ3v-issued-secret-of-43-characters-xxxxxxx';
  assert.deepEqual(Buffer.from(issuedSecretKey(secret)), createHash('sha256').update(secret).digest());
  const answer = await answerChallenge({ nonce, sessionId: 'sess-1', keyDerivation: KeyDerivation.SHA256 }, 'device-1', secret);
  assert.deepEqual(Buffer.from(answer.proof!), reference(issuedSecretKey(secret), 'sess-1', 'device-1'));
  assert.equal(answer.enrolKey, undefined, 'no key leaves the client unless it enrols');
  const key = issuedSecretKey(secret);
  const p = Buffer.from(helloProof(key, nonce, 'sess-1', 'device-1'));
  assert.notDeepEqual(Buffer.from(helloProof(key, nonce, 'sess-2', 'device-1')), p);
  assert.notDeepEqual(Buffer.from(helloProof(key, nonce, 'sess-1', 'device-2')), p);
  // The separators keep a session id and a client id from trading characters.
  assert.notDeepEqual(Buffer.from(helloProof(key, nonce, 'sess-1d', 'evice-1')), p);
  assert.notDeepEqual(Buffer.from(helloProof(key, nonce.map((b, i) => (i === 0 ? b ^ 1 : b)), 'sess-1', 'device-1')), p);
});

test('a chosen secret: key scrypt(secret, salt) equal to node:crypto and to the pure-JS fallback; an enrolment sends the key, never the secret', async () => {
  const secret = 'chosen secret é';
  const salt = Uint8Array.from({ length: 16 }, (_, i) => i);
  const key = await scryptSecretKey(secret, salt);
  assert.deepEqual(Buffer.from(key), scryptSync(secret, salt, 32, { N: 2 ** 14, r: 8, p: 1 }));
  assert.deepEqual(Buffer.from(nobleScrypt(new TextEncoder().encode(secret), salt, { N: 2 ** 14, r: 8, p: 1, dkLen: 32 })), Buffer.from(key), 'the browser path derives the same key');
  const answer = await answerChallenge({ nonce, sessionId: 's', keyDerivation: KeyDerivation.SCRYPT, salt, scryptLog2N: 14, scryptR: 8, scryptP: 1, enrol: true }, 'me', secret);
  assert.deepEqual(Buffer.from(answer.enrolKey!), Buffer.from(key));
  assert.deepEqual(Buffer.from(answer.proof!), reference(key, 's', 'me'));
  assert.ok(!Buffer.from(answer.enrolKey!).includes(Buffer.from(secret)));
});

test('a challenge the client cannot or must not answer is refused: short nonce, unknown derivation, scrypt cost out of bounds', async () => {
  const refused = async (c: Parameters<typeof answerChallenge>[0], what: RegExp) => {
    await assert.rejects(answerChallenge(c, 'me', 'secret-123'), (e: unknown) => e instanceof ProtocolError && e.code === ErrorCode.INVALID_ARGUMENT && what.test(e.message));
  };
  await refused({ nonce: new Uint8Array(8), keyDerivation: KeyDerivation.SHA256 }, /nonce of 8 bytes/);
  await refused({ nonce, keyDerivation: 0 }, /unknown key derivation/);
  // A hostile coordinator cannot make a client allocate gigabytes (2^30 x 8 x 128 bytes).
  await refused({ nonce, keyDerivation: KeyDerivation.SCRYPT, salt: new Uint8Array(16), scryptLog2N: 30, scryptR: 8, scryptP: 1 }, /out of bounds/);
  await refused({ nonce, keyDerivation: KeyDerivation.SCRYPT, salt: new Uint8Array(2), scryptLog2N: 14, scryptR: 8, scryptP: 1 }, /salt 2 bytes/);
});
