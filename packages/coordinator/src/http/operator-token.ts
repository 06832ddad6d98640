import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The file in the data directory that holds the operator token `serve` made at first start (mode 0600). */
export const OPERATOR_TOKEN_FILE = 'operator-token';

/**
 * Whether a request's Authorization header carries the operator token. `operatorToken` null means operator routes
 * were opened on purpose (`operatorAuth: 'none'`, `serve --insecure-no-auth`): every request passes. Digests are
 * compared in constant time, so neither the token's bytes nor its length show in timing.
 */
export function isOperator(authorization: string | undefined, operatorToken: string | null): boolean {
  if (operatorToken === null) return true;
  if (typeof authorization !== 'string') return false;
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(authorization), digest(`Bearer ${operatorToken}`));
}

/** A new operator token: 256 random bits, base64url (43 characters). */
export function generateOperatorToken(): string {
  return randomBytes(32).toString('base64url');
}

export interface StoredOperatorToken {
  token: string;
  file: string;
  /** Made now (first start) rather than read. */
  created: boolean;
  /** The file was readable by others (group or world) and has been set back to 0600. */
  tightened: boolean;
}

/**
 * The operator token kept in `<dataDir>/operator-token`: read it, or create it (0600, written durably) when the file
 * does not exist. Throws an Error naming the file when it cannot be read or holds no token.
 */
export function loadOrCreateOperatorToken(dataDir: string): StoredOperatorToken {
  const file = path.resolve(dataDir, OPERATOR_TOKEN_FILE);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const token = generateOperatorToken();
  let fd: number;
  try {
    // 'wx': two processes starting at once cannot both create it; the loser reads the winner's token.
    fd = fs.openSync(file, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`cannot create the operator token file ${file}: ${(e as Error).message}`);
    const mode = fs.statSync(file).mode & 0o777;
    const tightened = (mode & 0o077) !== 0;
    if (tightened) fs.chmodSync(file, 0o600);
    return { token: readOperatorTokenFile(file), file, created: false, tightened };
  }
  try {
    fs.writeSync(fd, `${token}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  // The umask may have narrowed the mode further; it cannot have widened it, but say so explicitly anyway.
  fs.chmodSync(file, 0o600);
  return { token, file, created: true, tightened: false };
}

/** Reads an operator token file (its first line, trimmed); throws an Error naming the file. */
export function readOperatorTokenFile(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read the operator token file ${file}: ${(e as Error).message}`);
  }
  const token = text.split('\n')[0]!.trim();
  if (token.length < 8) throw new Error(`the operator token file ${file} holds no token (at least 8 characters on its first line)`);
  return token;
}
