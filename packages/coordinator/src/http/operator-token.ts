import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * Whether a request's Authorization header carries the operator token; always true when none is configured
 * (development). Digests are compared in constant time, so neither the token's bytes nor its length show in timing.
 */
export function isOperator(authorization: string | undefined, operatorToken: string | undefined): boolean {
  if (!operatorToken) return true;
  if (typeof authorization !== 'string') return false;
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(authorization), digest(`Bearer ${operatorToken}`));
}
