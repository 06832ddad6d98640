import { FederatedClient } from '@fedunlearn/client';
import { silenceTfjsNodeAdvice } from '@fedunlearn/models';
import seedrandom from 'seedrandom';
import { tinyDataset } from './tiny-data.js';

/**
 * One SDK client in its own process, so that a test can freeze it (SIGSTOP): the process stops answering pings with
 * its socket still open, which only the coordinator's heartbeat can notice. Reports over IPC.
 * Environment: URL, CLIENT_ID, EXAMPLES.
 */
const send = (m: object): void => {
  process.send?.(m);
};
const clientId = process.env.CLIENT_ID ?? 'frozen';
// It trains on the cpu backend on purpose (reported in its hello): tfjs's advice to install tfjs-node is noise here.
silenceTfjsNodeAdvice();
const client = new FederatedClient({
  url: process.env.URL ?? '',
  clientId,
  secret: `secret-of-${clientId}`,
  data: tinyDataset(seedrandom(clientId), Number(process.env.EXAMPLES ?? 64), 4),
  backends: ['cpu'],
  reconnect: { delayMs: 100, maxDelayMs: 500 },
});
client.on('task', (t) => send({ type: 'task', round: t.round, jobId: t.jobId, kind: t.kind }));
client.connect().then(
  () => send({ type: 'connected' }),
  (e: Error) => send({ type: 'fatal', message: e.message }),
);
process.on('disconnect', () => process.exit(0));
