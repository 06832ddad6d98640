import { ErrorCode, ProtocolError } from '@fedunlearn/protocol';

/** The client ids a hello may carry and an operator may issue (JSON-schema pattern form, for the API too). */
export const CLIENT_ID_PATTERN = '^[A-Za-z0-9_.:-]{1,128}$';
const CLIENT_ID = new RegExp(CLIENT_ID_PATTERN);

export function assertClientId(id: string): void {
  if (!CLIENT_ID.test(id)) throw new ProtocolError(ErrorCode.INVALID_ARGUMENT, 'client id must be 1-128 characters of [A-Za-z0-9_.:-]');
}
