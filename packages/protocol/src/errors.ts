import { fedunlearn } from './gen/proto.js';

export const ErrorCode = fedunlearn.v1.ErrorCode;
export type ErrorCode = fedunlearn.v1.ErrorCode;

export function errorCodeName(code: ErrorCode): string {
  return fedunlearn.v1.ErrorCode[code] ?? `ERROR_${code}`;
}

/** An error a peer may see: it carries a wire error code, and its message is safe to send. */
export class ProtocolError extends Error {
  readonly code: ErrorCode;
  readonly ref: string;

  constructor(code: ErrorCode, message: string, ref = '') {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
    this.ref = ref;
  }

  get codeName(): string {
    return errorCodeName(this.code);
  }
}
