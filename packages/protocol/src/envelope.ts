import { fedunlearn } from './gen/proto.js';
import { ErrorCode, ProtocolError } from './errors.js';

export const pb = fedunlearn.v1;
export type Envelope = fedunlearn.v1.IEnvelope;
export type EnvelopeBody = NonNullable<fedunlearn.v1.Envelope['body']>;

export function encodeEnvelope(msg: Envelope): Uint8Array {
  return pb.Envelope.encode(pb.Envelope.fromObject(msg as Record<string, unknown>)).finish();
}

/** Decodes one envelope; anything that is not exactly one well-formed message is MALFORMED_MESSAGE. */
export function decodeEnvelope(bytes: Uint8Array): fedunlearn.v1.Envelope {
  let env: fedunlearn.v1.Envelope;
  try {
    // A plain view, never a Node Buffer: protobufjs reads strings from a Buffer without a bounds check, so a message
    // truncated inside a string field would decode (shortened) on a Node server yet fail in a browser.
    env = pb.Envelope.decode(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (e) {
    throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `malformed envelope: ${(e as Error).message}`);
  }
  if (!env.body) throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, 'envelope carries no message');
  return env;
}

/** Narrowing helper: the payload of an envelope, or a MALFORMED_MESSAGE error if it is another kind. */
export function expectBody<K extends EnvelopeBody>(env: fedunlearn.v1.Envelope, kind: K): NonNullable<fedunlearn.v1.Envelope[K]> {
  const v = env[kind];
  if (env.body !== kind || v == null) throw new ProtocolError(ErrorCode.MALFORMED_MESSAGE, `expected ${kind}, got ${env.body}`);
  return v as NonNullable<fedunlearn.v1.Envelope[K]>;
}
