/** The one socket.io event name; its payload is always one encoded `Envelope`. */
export const WIRE_EVENT = 'fu';

/** 2: challenge-response hello (HelloProof); 1 sent the secret in the Hello. */
export const PROTOCOL_VERSION = 2;

/** Messages larger than this travel as `Chunk` envelopes. Well under socket.io's 1 MB default buffer. */
export const DEFAULT_CHUNK_BYTES = 512 * 1024;

/**
 * The largest reassembled message either side accepts: a 10M-parameter float32 model (40 MB) plus framing.
 * Anything larger is refused with MESSAGE_TOO_LARGE before it is buffered.
 */
export const DEFAULT_MAX_MESSAGE_BYTES = 48 * 1024 * 1024;

/** The largest single frame (an unchunked message, or one Chunk envelope) a peer accepts: one chunk plus its
 *  envelope header. The Welcome advertises it (max_frame_bytes); a larger frame is refused with MESSAGE_TOO_LARGE. */
export function socketBufferBytes(chunkBytes: number): number {
  return chunkBytes + 64 * 1024;
}

/**
 * socket.io's own per-packet cap (maxHttpBufferSize), set above the frame limit on purpose: a frame between the two
 * reaches the channel, which answers MESSAGE_TOO_LARGE with the limit; only one above this closes the connection
 * (the transport cannot read it without buffering it whole), which the coordinator counts as FRAME_TOO_LARGE.
 */
export function transportBufferBytes(chunkBytes: number): number {
  return 4 * socketBufferBytes(chunkBytes);
}

/**
 * Whether an answer of `answerBytes` must be announced (UploadRequest) and wait for its grant: when the Welcome's
 * upload_grant_above_bytes (0: never) is below it and its task did not come with a grant large enough
 * (Task.upload_granted_bytes).
 */
export function needsUploadRequest(answerBytes: number, grantAboveBytes: number, taskGrantedBytes: number): boolean {
  return grantAboveBytes > 0 && answerBytes > grantAboveBytes && answerBytes > taskGrantedBytes;
}
