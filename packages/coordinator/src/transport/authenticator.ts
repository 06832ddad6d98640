import { randomBytes, timingSafeEqual } from 'node:crypto';
import { ErrorCode, fedunlearn, helloProof, HELLO_KEY_BYTES, KeyDerivation, ProtocolError, SCRYPT_DEFAULTS } from '@fedunlearn/protocol';
import type { ClientRecord } from '../history/store.js';
import { storedKey } from './credentials.js';
import type { Lockout } from './rate-limit.js';

/** How a client must answer its Challenge, decided from its Hello before any proof is asked for. */
export interface ChallengePlan {
  keyDerivation: KeyDerivation;
  salt?: Uint8Array;
  cost?: { log2N: number; r: number; p: number };
  /** Open enrolment of an unknown id: the proof carries the key to store. */
  enrol: boolean;
  /** The stored credential the proof will be checked against (null when enrolling); a change meanwhile refuses it. */
  stored: string | null;
}

/** The challenge as sent on one connection: its nonce is valid for one proof on that connection only. */
export interface IssuedChallenge extends ChallengePlan {
  nonce: Uint8Array;
  sessionId: string;
}

/** Challenge-response authentication of hellos (see the proto's Challenge); the socket server drives the two steps. */
export interface Authenticator {
  /** Whether `hello` may be challenged, and how its key is derived; rejects with a ProtocolError otherwise.
   *  `address` is the peer's remote address (lockouts are kept per id and address). */
  plan(hello: fedunlearn.v1.Hello, address: string): Promise<ChallengePlan>;
  /** Checks the proof for the challenge this connection was sent; rejects with a ProtocolError (UNAUTHENTICATED, ...). */
  verify(hello: fedunlearn.v1.Hello, challenge: IssuedChallenge, proof: fedunlearn.v1.HelloProof, address: string): Promise<void>;
}

export interface CredentialAuthenticatorDeps {
  getClient(id: string): Promise<ClientRecord | null | undefined>;
  upsertClient(c: { clientId: string; secretHash?: string | null; numExamples?: number; seenAt: number }): Promise<unknown>;
  isForgotten(id: string): Promise<boolean>;
  enrolment: 'open' | 'closed';
  /** Wrong proofs per client id and address... */
  authLockout: Lockout;
  /** ...and per client id from anywhere. */
  clientLockout: Lockout;
}

/** A client id and a remote address, as one lockout key (client ids cannot contain a space: transport/client-id.ts). */
export function lockoutKey(clientId: string, address: string): string {
  return `${clientId} ${address}`;
}

/** A fresh challenge for `plan`: 32 random bytes of nonce and the session id the proof opens. */
export function issueChallenge(plan: ChallengePlan, sessionId: string): IssuedChallenge {
  return { ...plan, nonce: randomBytes(32), sessionId };
}

export function challengeMessage(c: IssuedChallenge): fedunlearn.v1.IChallenge {
  return {
    nonce: c.nonce,
    sessionId: c.sessionId,
    keyDerivation: c.keyDerivation,
    enrol: c.enrol,
    ...(c.salt ? { salt: c.salt, scryptLog2N: c.cost!.log2N, scryptR: c.cost!.r, scryptP: c.cost!.p } : {}),
  };
}

/**
 * Hellos checked against the credentials in the history store. The coordinator keeps, per client, the HMAC key of
 * its proofs: sha256(secret) for issued secrets, scrypt(secret, salt) for chosen ones (the forms protocol 1 stored,
 * so existing credentials keep working). Verifying a proof is one HMAC: no slow hash runs on the coordinator any more
 * (a chosen secret's scrypt now runs on the client).
 */
export class CredentialAuthenticator implements Authenticator {
  constructor(private readonly deps: CredentialAuthenticatorDeps) {}

  /** Enrolments, one at a time (see verify). One process's queue, like the coordinator's credential changes. */
  private enrolling: Promise<unknown> = Promise.resolve();

  private enrolOne(fn: () => Promise<void>): Promise<void> {
    const run = this.enrolling.then(fn);
    this.enrolling = run.catch(() => undefined);
    return run;
  }

  async plan(hello: fedunlearn.v1.Hello, address: string): Promise<ChallengePlan> {
    const id = hello.clientId;
    if (hello.secret) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, 'a protocol 2 hello must not carry the secret: it is proven with HelloProof, never sent');
    if (await this.deps.isForgotten(id)) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `client ${id} was forgotten at its request`);
    await this.assertNotLocked(id, address);
    const known = await this.deps.getClient(id);
    if (known?.revoked) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `the credential of client ${id} was revoked`);
    if (known?.secretHash) {
      const key = storedKey(known.secretHash);
      if (!key) throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `the stored credential of client ${id} cannot be proven; the operator must rotate it`);
      return { keyDerivation: key.derivation, ...(key.salt ? { salt: key.salt, cost: SCRYPT_DEFAULTS } : {}), enrol: false, stored: known.secretHash };
    }
    if (this.deps.enrolment === 'closed') {
      if (!known) throw new ProtocolError(ErrorCode.UNKNOWN_CLIENT, `unknown client ${id}`);
      throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `no credential was issued to client ${id}`);
    }
    // Open enrolment: the client derives a key from the secret it chose with a fresh salt; only that key is stored.
    return { keyDerivation: KeyDerivation.SCRYPT, salt: randomBytes(16), cost: SCRYPT_DEFAULTS, enrol: true, stored: null };
  }

  async verify(hello: fedunlearn.v1.Hello, c: IssuedChallenge, proof: fedunlearn.v1.HelloProof, address: string): Promise<void> {
    const id = hello.clientId;
    const lockout = lockoutKey(id, address);
    // A lockout reached by other connections while this one computed its proof applies to it too.
    await this.assertNotLocked(id, address);
    // So does a forget job that ended meanwhile: a tombstone never takes a credential again (open enrolment included).
    if (await this.deps.isForgotten(id)) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `client ${id} was forgotten at its request`);
    let key: Uint8Array;
    if (c.enrol) {
      if (proof.enrolKey.byteLength !== HELLO_KEY_BYTES) throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `an enrolling proof must carry its ${HELLO_KEY_BYTES}-byte key`);
      key = proof.enrolKey;
    } else {
      const now = await this.deps.getClient(id);
      // A revocation or rotation that landed after the challenge wins over the credential it named.
      if (!now || now.revoked || now.secretHash !== c.stored) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `the credential of client ${id} changed`);
      key = storedKey(c.stored!)!.key;
    }
    const expected = helloProof(key, c.nonce, c.sessionId, id);
    if (proof.proof.byteLength !== expected.byteLength || !timingSafeEqual(proof.proof, expected)) {
      await this.deps.authLockout.fail(lockout);
      await this.deps.clientLockout.fail(id);
      throw new ProtocolError(ErrorCode.UNAUTHENTICATED, 'wrong credentials');
    }
    if (c.enrol) {
      const secretHash = `scrypt$${Buffer.from(c.salt!).toString('hex')}$${Buffer.from(key).toString('hex')}`;
      // The check and the write run in the enrolment queue: with an asynchronous store two proofs enrolling one id
      // could otherwise both find no credential, the second replacing the first's.
      await this.enrolOne(async () => {
        if ((await this.deps.getClient(id))?.secretHash) throw new ProtocolError(ErrorCode.UNAUTHENTICATED, `client ${id} enrolled meanwhile; retry`);
        await this.deps.upsertClient({ clientId: id, secretHash, numExamples: hello.numExamples, seenAt: Date.now() });
      });
    }
    await this.deps.authLockout.succeed(lockout);
    await this.deps.clientLockout.succeed(id);
    await this.deps.upsertClient({ clientId: id, numExamples: hello.numExamples, seenAt: Date.now() });
    // With an asynchronous store a forget job may have ended between the check above and here: its tombstone, read
    // again after the last write, keeps a forgotten client out (its job's end closes only sessions already joined).
    if (await this.deps.isForgotten(id)) throw new ProtocolError(ErrorCode.PERMISSION_DENIED, `client ${id} was forgotten at its request`);
  }

  private async assertNotLocked(id: string, address: string): Promise<void> {
    // The in-memory lockouts answer at once; a cluster's (Redis, shared by every replica) asynchronously.
    const locked = Math.max(await this.deps.authLockout.lockedFor(lockoutKey(id, address)), await this.deps.clientLockout.lockedFor(id));
    if (locked > 0) throw new ProtocolError(ErrorCode.RATE_LIMITED, `too many failed authentications for client ${id}; retry in ${Math.ceil(locked / 1000)} s`);
  }
}
