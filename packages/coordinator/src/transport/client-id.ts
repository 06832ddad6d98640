import { ErrorCode, ProtocolError } from '@fedunlearn/protocol';

/**
 * The client ids a hello may carry and an operator may issue (JSON-schema pattern form, for the API too): 1-128
 * characters of [A-Za-z0-9_.:-], except `.` and `..`, which no URL can carry as a path segment (clients and fetch
 * resolve them as dot-segments, percent-encoded or not), so such a client could never be revoked, rotated or named in
 * a route. Every id this accepts works unencoded-or-encoded in every route and command that takes one.
 */
export const CLIENT_ID_PATTERN = '^(?!\\.{1,2}$)[A-Za-z0-9_.:-]{1,128}$';
const CLIENT_ID = new RegExp(CLIENT_ID_PATTERN);

export function assertClientId(id: string): void {
  if (!CLIENT_ID.test(id)) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, "client id must be 1-128 characters of [A-Za-z0-9_.:-], and not '.' or '..'");
}
