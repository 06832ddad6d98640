// The operator dashboard: reads the JSON API under /v1 and follows GET /v1/events (server-sent events read through
// fetch, because EventSource cannot send the Authorization header). No build step: a plain ES module.
/* global Chart */

const TOKEN_KEY = 'fedunlearn.operatorToken';
const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) ?? '',
  head: null,
  /** Rounds of the head's lineage, by round number. */
  rounds: new Map(),
  models: [],
  jobs: new Map(),
  selectedJob: null,
  uptimeBase: null,
  stream: null,
};

class AuthError extends Error {}

async function api(path, init = {}) {
  const headers = { ...(init.headers ?? {}) };
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  const res = await fetch(path, { ...init, headers, cache: 'no-store' });
  if (res.status === 401) throw new AuthError('operator token required');
  if (!res.ok) {
    const body = await res.json().catch(() => null);
    throw new Error(body?.error?.message ?? `${path}: HTTP ${res.status}`);
  }
  return res.json();
}

// ---------- DOM helpers (text only: client ids and messages never become markup) ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'title') el.title = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    // Through the CSSOM: the Content-Security-Policy forbids style attributes (style-src 'self').
    else if (k === 'style') Object.assign(el.style, v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}
const short = (id) => (id ? String(id).slice(0, 8) : '–');
const fmtLoss = (v) => (Number.isFinite(v) ? v.toFixed(4) : '–');
const fmtPct = (v) => (Number.isFinite(v) ? `${(v * 100).toFixed(2)} %` : '–');
const fmtInt = (v) => (Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : '–');
function fmtBytes(b) {
  if (!Number.isFinite(b)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) (b /= 1024), i++;
  return `${b.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
function fmtMs(ms) {
  if (!Number.isFinite(ms)) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), mm = Math.floor((s % 3600) / 60);
  return d > 0 ? `${d}d ${hh}h` : hh > 0 ? `${hh}h ${mm}m` : `${mm}m ${s % 60}s`;
}
const fmtTime = (t) => (t ? new Date(t).toLocaleTimeString('en-GB') : '–');

// ---------- rendering ----------

function renderHead() {
  const m = state.head;
  $('head-version').textContent = m ? short(m.version) : '–';
  $('head-version').title = m?.version ?? '';
  $('head-round').textContent = m ? String(m.round) : '–';
  $('head-lineage').textContent = m ? short(m.lineage) : '–';
}

/** Hides a panel's "loading…" line once its first data arrived. */
function loaded(id) {
  const p = $(id);
  if (p) p.hidden = true;
}

function renderClients(c) {
  loaded('clients-loading');
  $('clients-count').textContent = String(c.count);
  $('clients-count-2').textContent = `(${c.count})`;
  const forgotten = new Set(c.forgotten ?? []);
  $('clients').replaceChildren(
    ...c.ids.map((id) =>
      forgotten.has(id)
        ? h('li', { class: 'mono forgotten', 'data-client-id': id, 'data-forgotten': 'true', title: 'forgotten: connected, but never selected again' }, id)
        : h('li', { class: 'mono', 'data-client-id': id }, id),
    ),
  );
}

function renderHistory(s) {
  loaded('history-loading');
  const rows = [
    ['rounds', fmtInt(s.rounds)],
    ['model versions', fmtInt(s.models)],
    ['model versions erased', fmtInt(s.modelsErased)],
    ['model versions pruned', fmtInt(s.modelsPruned ?? 0)],
    ['stored updates', fmtInt(s.updates)],
    ['model bytes', fmtBytes(s.modelBytes)],
    ['update bytes', fmtBytes(s.updateBytes)],
    ...Object.entries(s.updateBytesByDtype ?? {}).map(([k, v]) => [`update bytes · ${k}`, fmtBytes(v)]),
  ];
  $('history').tBodies[0].replaceChildren(...rows.map(([k, v]) => h('tr', { 'data-key': k }, h('td', {}, k), h('td', {}, v))));
}

/** A row from GET /v1/rounds and a live `round` event, in one shape. */
function fromRecord(r) {
  return {
    round: r.round,
    roundId: r.roundId,
    lineage: r.lineage,
    modelAfter: r.modelAfter,
    participants: r.participants.map((p) => p.clientId),
    missing: null,
    metrics: r.metrics ?? {},
    durationMs: r.closedAt - r.startedAt,
  };
}

function renderRounds() {
  loaded('rounds-loading');
  const rows = [...state.rounds.values()].sort((a, b) => b.round - a.round);
  $('rounds').tBodies[0].replaceChildren(
    ...rows.map((r) =>
      h(
        'tr',
        { 'data-round': r.round, 'data-round-id': r.roundId },
        h('td', { class: 'r' }, r.round),
        h('td', { class: 'r muted', 'data-origin': '', title: 'rounds of an unlearned lineage replay a round of the lineage before it' }, r.metrics.sourceRound === 0 ? 'tuning' : Number.isFinite(r.metrics.sourceRound) ? `replays ${r.metrics.sourceRound}` : ''),
        h('td', { class: 'r', 'data-metric': 'loss' }, fmtLoss(r.metrics.loss)),
        h('td', { class: 'r', 'data-metric': 'accuracy' }, fmtPct(r.metrics.accuracy)),
        h('td', { class: 'r', title: r.participants.join(', ') }, r.participants.length),
        h('td', { class: 'mono' }, r.missing === null ? '' : r.missing.length ? r.missing.join(', ') : '–'),
        h('td', { class: 'r' }, fmtMs(r.durationMs)),
        h('td', { class: 'mono', title: r.modelAfter }, short(r.modelAfter)),
      ),
    ),
  );
  renderChart(rows.slice().reverse());
}

let chart = null;
function renderChart(rows) {
  const canvas = $('chart');
  const css = getComputedStyle(document.documentElement);
  const color = (v) => css.getPropertyValue(v).trim();
  const labels = rows.map((r) => r.round);
  const loss = rows.map((r) => (Number.isFinite(r.metrics.loss) ? r.metrics.loss : null));
  const acc = rows.map((r) => (Number.isFinite(r.metrics.accuracy) ? r.metrics.accuracy : null));
  if (!chart) {
    Chart.defaults.color = color('--muted');
    Chart.defaults.borderColor = color('--line');
    Chart.defaults.font.size = 11;
    chart = new Chart(canvas, {
      type: 'line',
      data: {
        labels,
        datasets: [
          { label: 'training loss', data: loss, yAxisID: 'loss', borderColor: color('--loss'), backgroundColor: color('--loss'), pointRadius: 2, tension: 0.2 },
          { label: 'training accuracy', data: acc, yAxisID: 'acc', borderColor: color('--acc'), backgroundColor: color('--acc'), pointRadius: 2, tension: 0.2 },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: 'index', intersect: false },
        scales: {
          x: { title: { display: true, text: 'round' } },
          loss: { position: 'left', title: { display: true, text: 'loss' }, beginAtZero: true },
          acc: { position: 'right', min: 0, max: 1, title: { display: true, text: 'accuracy' }, grid: { drawOnChartArea: false }, ticks: { callback: (v) => `${Math.round(v * 100)}%` } },
        },
        plugins: { legend: { position: 'top', align: 'end', labels: { boxWidth: 10 } } },
      },
    });
  } else {
    chart.data.labels = labels;
    chart.data.datasets[0].data = loss;
    chart.data.datasets[1].data = acc;
    chart.update();
  }
  canvas.dataset.points = String(rows.filter((r, i) => loss[i] !== null || acc[i] !== null).length);
}

function renderModels() {
  loaded('models-loading');
  const head = state.head?.version;
  const rows = state.models.slice().reverse();
  $('models').tBodies[0].replaceChildren(
    ...rows.map((m) =>
      h(
        'tr',
        {
          'data-version': m.version,
          'data-cause': m.cause,
          ...(m.erasedAt ? { 'data-erased': '', title: `weights erased ${fmtTime(m.erasedAt)}: a forgotten client had contributed to them` } : {}),
          ...(!m.erasedAt && m.prunedAt ? { 'data-pruned': '', title: `weights pruned ${fmtTime(m.prunedAt)} by the model retention policy` } : {}),
          class: m.version === head ? 'head-row' : m.erasedAt || m.prunedAt ? 'erased' : '',
        },
        h('td', { class: 'mono', title: m.version }, short(m.version)),
        h('td', {}, m.cause),
        h('td', { class: 'r' }, m.round),
        h('td', { class: 'mono', title: m.parent ?? '' }, short(m.parent)),
        h('td', { class: 'mono', title: m.lineage }, short(m.lineage)),
        h('td', { class: 'mono', title: m.jobId ?? '' }, m.jobId ? short(m.jobId) : ''),
        h('td', { class: 'mono', title: m.sha256 }, `${m.sha256.slice(0, 12)}…`),
        h('td', { class: 'r' }, fmtTime(m.createdAt)),
        h('td', {}, m.erasedAt ? 'erased' : m.prunedAt ? 'pruned' : 'kept'),
      ),
    ),
  );
}

function renderJobs() {
  const jobs = [...state.jobs.values()].sort((a, b) => b.createdAt - a.createdAt);
  $('jobs-empty').hidden = jobs.length > 0;
  // Until then it said "loading…": an empty list is only known once the jobs arrived.
  $('jobs-empty').textContent = 'No forget jobs.';
  $('jobs').tBodies[0].replaceChildren(
    ...jobs.map((j) => {
      const { step, total } = j.progress ?? { step: 0, total: 0 };
      const pct = j.state === 'done' ? 100 : total > 0 ? Math.min(100, (100 * step) / total) : 0;
      // A replay step waiting for offline clients says so: who, how many are connected, until when, then what.
      const w = j.state === 'running' ? j.progress?.waiting : undefined;
      return h(
        'tr',
        {
          'data-job-id': j.jobId,
          'data-state': j.state,
          'data-step': step,
          'data-total': total,
          ...(w ? { 'data-waiting': `${w.connected}/${w.of}` } : {}),
          class: j.jobId === state.selectedJob ? 'selected' : '',
          onclick: () => selectJob(j.jobId),
        },
        h('td', { class: 'mono', title: j.jobId }, short(j.jobId)),
        h('td', {}, h('span', { class: `state state-${w ? 'waiting' : j.state}` }, w ? 'waiting' : j.state)),
        h('td', { class: 'mono' }, j.clientIds.join(', ')),
        h('td', {}, j.method),
        h('td', {}, h('span', { class: 'bar' }, h('span', { style: { width: `${pct}%` } })), h('span', { class: 'num' }, `${step}/${total}`)),
        w
          ? h(
              'td',
              { class: 'waiting' },
              `waiting for clients: ${w.connected} of ${w.of} connected, ${w.needed} needed; offline: ${w.clientIds.join(', ')}${w.missing > w.clientIds.length ? ` and ${w.missing - w.clientIds.length} more` : ''}; until ${fmtTime(w.until)}, then ${w.policy === 'fail' ? 'the job fails with nothing changed' : 'completed from stored updates'}`,
            )
          : h('td', { class: j.state === 'failed' ? 'error' : 'muted' }, j.error ?? j.progress?.message ?? ''),
        h('td', { class: 'r' }, fmtTime(j.updatedAt)),
      );
    }),
  );
}

function selectJob(jobId) {
  state.selectedJob = jobId;
  renderJobs();
  renderReport();
}

const KNOWN_REPORT_KEYS = new Set(['jobId', 'clientsForgotten', 'requestedBy', 'method', 'exact', 'params', 'modelBefore', 'modelAfter', 'roundsReplayed', 'tuneRounds', 'cost', 'wallTimeMs', 'purged', 'offlinePolicy', 'notes', 'startedAt', 'finishedAt', 'contributionRemoved', 't0', 'startModel', 'roundsKeptExact', 'exactPrefix', 'offline', 'certificate', 'updates']);

/** SIFU's certificate (unlearning/sifu.ts): what the job guarantees and what that rests on. */
function certificateTable(c) {
  if (!c) return null;
  const num = (x) => (x === null || x === undefined ? '–' : Number.isFinite(x) ? Number(x).toPrecision(4) : 'infinite');
  return h(
    'div',
    { class: 'certificate wide', 'data-certificate': '' },
    h('h4', {}, `Certificate: (ε ${c.epsilon}, δ ${c.delta})-unlearning`),
    kvTable([
      ['noise σ', c.sigma > 0 ? String(c.sigma) : '0 (exact rollback: the model predates every forgotten client)'],
      ['rolled back to', `round ${c.rollbackRound} (${short(c.rollbackModel)})`],
      ['bound', `${num(c.bound)} ≤ budget ${num(c.budget)}`],
      ['bound at the head', `${num(c.headBound)}${c.sigmaToKeepHead !== null ? ` (σ ${num(c.sigmaToKeepHead)} would have kept it)` : ''}`],
      ['constants', Object.entries(c.constants ?? {}).map(([k, v]) => `${k} ${v}`).join(', ')],
    ]),
    h('ul', { class: 'muted' }, (c.assumptions ?? []).map((a) => h('li', {}, a))),
  );
}

function kvTable(entries) {
  return h('table', { class: 'kv' }, h('tbody', {}, entries.map(([k, v]) => h('tr', { 'data-key': k }, h('td', {}, k), h('td', {}, v)))));
}

function renderReport() {
  const box = $('report');
  const job = state.selectedJob ? state.jobs.get(state.selectedJob) : null;
  const r = job?.report;
  if (!job || !r) {
    box.replaceChildren(job ? h('p', { class: 'muted' }, `Job ${short(job.jobId)} is ${job.state}; its report is written when it is done.`) : '');
    return;
  }
  const missing = [...new Set((r.roundsReplayed ?? []).flatMap((s) => s.missing.map((m) => `${m.clientId} (${m.reason})`)))];
  const extra = Object.entries(r).filter(([k]) => !KNOWN_REPORT_KEYS.has(k));
  box.replaceChildren(
    h(
      'div',
      { class: 'report', 'data-report-for': job.jobId },
      h('h3', {}, `Report · job ${short(job.jobId)} · forgot ${r.clientsForgotten.join(', ')} · ${r.method}${r.exact ? ' (exact)' : ''}`),
      h(
        'table',
        { class: 'beforeafter grid wide' },
        h('thead', {}, h('tr', {}, h('th', {}, ''), h('th', {}, 'version'), h('th', { class: 'r' }, 'round'), h('th', {}, 'sha256'))),
        h(
          'tbody',
          {},
          h('tr', { 'data-model': 'before' }, h('td', {}, 'before'), h('td', { class: 'mono' }, r.modelBefore.version), h('td', { class: 'r' }, r.modelBefore.round), h('td', { class: 'mono' }, r.modelBefore.sha256)),
          h('tr', { 'data-model': 'after' }, h('td', {}, 'after'), h('td', { class: 'mono' }, r.modelAfter.version), h('td', { class: 'r' }, r.modelAfter.round), h('td', { class: 'mono' }, r.modelAfter.sha256)),
        ),
      ),
      kvTable([
        ['requested by', r.requestedBy],
        ['t0', r.t0 === undefined ? '–' : r.t0 === null ? 'none: no contribution to remove (model unchanged)' : `round ${r.t0}`],
        ['started from', r.startModel ? `${short(r.startModel.version)} (round ${r.startModel.round}, sha256 ${r.startModel.sha256.slice(0, 12)}…)` : '–'],
        ['rounds kept exact', r.exactPrefix ? `${fmtInt(r.roundsKeptExact)} (${r.exactPrefix.fromRound}–${r.exactPrefix.toRound})` : fmtInt(r.roundsKeptExact ?? 0)],
        ['steps replayed', fmtInt(r.roundsReplayed?.length)],
        ['tune rounds', fmtInt(r.tuneRounds)],
        ...(r.updates ? [['client updates', `${fmtInt(r.updates.exact)} exact, ${fmtInt(r.updates.estimated)} estimated, ${fmtInt(r.updates.stored)} stored`]] : []),
        ['missing clients', missing.length ? missing.join(', ') : 'none'],
        ['wall time', fmtMs(r.wallTimeMs)],
        ['params', JSON.stringify(r.params ?? {})],
        ...(r.offline
          ? [['offline clients', `policy ${r.offline.policy}; waited ${fmtMs(r.offline.waitedMs)} of ${fmtMs(r.offline.waitMs)}${r.offline.completedServerSide.length ? `; completed server-side: ${r.offline.completedServerSide.join(', ')}` : ''}`]]
          : []),
        ...extra.map(([k, v]) => [k, typeof v === 'number' ? fmtInt(v) : JSON.stringify(v)]),
      ]),
      certificateTable(r.certificate),
      kvTable([
        ['client sample-epochs', fmtInt(r.cost?.clientSampleEpochs)],
        ['tasks', fmtInt(r.cost?.tasks)],
        ['bytes on wire', fmtBytes(r.cost?.bytesOnWire)],
        ['updates purged', fmtInt(r.purged?.updatesDeleted)],
        ['bytes purged', fmtBytes(r.purged?.bytesDeleted)],
        ['participant rows purged', fmtInt(r.purged?.participantRowsDeleted)],
        ['model versions erased', fmtInt(r.purged?.modelsErased?.length ?? 0)],
        ['model bytes erased', fmtBytes(r.purged?.modelBytesDeleted ?? 0)],
      ]),
      h(
        'table',
        { class: 'grid wide steps' },
        h('thead', {}, h('tr', {}, h('th', { class: 'r' }, 'step'), h('th', { class: 'r' }, 'source round'), h('th', { class: 'r' }, 'calibrated'), h('th', { class: 'r' }, 'uncalibrated'), h('th', { class: 'r' }, 'estimated'), h('th', {}, 'missing'))),
        h(
          'tbody',
          {},
          (r.roundsReplayed ?? []).map((s) =>
            h('tr', {}, h('td', { class: 'r' }, s.round), h('td', { class: 'r' }, s.sourceRound), h('td', { class: 'r', title: s.calibrated.join(', ') }, s.calibrated.length), h('td', { class: 'r', title: s.uncalibrated.join(', ') }, s.uncalibrated.length), h('td', { class: 'r', title: (s.estimated ?? []).join(', ') + (s.keptEstimate?.length ? ` (offline when exact was wanted: ${s.keptEstimate.join(', ')})` : '') }, s.estimated ? s.estimated.length : '–'), h('td', { class: 'mono' }, s.missing.map((m) => m.clientId).join(', ') || '–')),
          ),
        ),
      ),
      r.notes?.length ? h('ul', { class: 'wide muted' }, r.notes.map((n) => h('li', {}, n))) : null,
    ),
  );
}

function tickUptime() {
  if (state.uptimeBase) $('uptime').textContent = fmtMs(state.uptimeBase.uptimeMs + (Date.now() - state.uptimeBase.at));
}

// ---------- loading ----------

async function loadRounds() {
  const { rounds } = await api('/v1/rounds');
  state.rounds = new Map(rounds.map((r) => [r.round, fromRecord(r)]));
  renderRounds();
}
async function loadModels() {
  const { models } = await api('/v1/models');
  state.models = models;
  renderModels();
}
async function loadStats() {
  renderHistory(await api('/v1/history/stats'));
}
async function loadJobs() {
  const { jobs } = await api('/v1/jobs');
  for (const j of jobs) {
    const known = state.jobs.get(j.jobId);
    // The list carries reports too; keep one that already arrived on the stream.
    state.jobs.set(j.jobId, { ...j, report: j.report ?? known?.report ?? null });
  }
  if (!state.selectedJob) state.selectedJob = jobs.filter((j) => j.state === 'done').at(-1)?.jobId ?? null;
  renderJobs();
  renderReport();
}
/** A cluster's replicas (GET /v1/status `cluster`): each with its clients, the leader starred. Hidden on one process. */
function renderReplicas(c) {
  $('replicas-card').hidden = !c;
  state.cluster = Boolean(c);
  if (!c) return;
  $('replicas').tBodies[0].replaceChildren(
    ...c.replicas.map((r) => {
      const leads = c.leader?.replicaId === r.replicaId;
      return h('tr', { 'data-replica-id': r.replicaId, 'data-leader': String(leads) }, [
        h('th', { class: 'mono' }, `${leads ? '★ ' : ''}${r.replicaId}`),
        h('td', { class: 'num' }, `${r.clients.length} clients${leads ? ` · epoch ${c.leader.epoch}` : ''}`),
      ]);
    }),
  );
}
async function loadStatus() {
  const s = await api('/v1/status');
  renderReplicas(s.cluster ?? null);
  state.head = s.model;
  state.uptimeBase = { uptimeMs: s.uptimeMs, at: Date.now() };
  renderHead();
  tickUptime();
}
async function loadAll() {
  await Promise.all([loadStatus(), loadRounds(), loadModels(), loadStats(), loadJobs()]);
}

/** Coalesces reloads that several events in a burst would each ask for. */
function debounce(fn, ms = 150) {
  let t = null;
  return () => {
    clearTimeout(t);
    t = setTimeout(() => fn().catch(onError), ms);
  };
}
const reloadModels = debounce(loadModels);
const reloadStats = debounce(loadStats);
const reloadRounds = debounce(loadRounds);
const reloadStatus = debounce(loadStatus, 500);

// ---------- the event stream ----------

const handlers = {
  snapshot(d) {
    state.head = d.head;
    renderHead();
    renderClients(d.clients);
    loadAll().catch(onError);
  },
  round(r) {
    if (state.cluster) reloadStatus();
    if (state.head && r.lineage !== state.head.lineage) return;
    state.rounds.set(r.round, r);
    renderRounds();
    reloadStats();
  },
  model(m) {
    const lineageChanged = state.head?.lineage !== m.lineage;
    state.head = m;
    renderHead();
    renderModels();
    reloadModels();
    if (lineageChanged) reloadRounds();
  },
  job(j) {
    const known = state.jobs.get(j.jobId);
    state.jobs.set(j.jobId, { ...j, report: j.report ?? known?.report ?? null });
    // A job that just finished shows its report; otherwise keep what the operator picked.
    if (j.state === 'done' || !state.selectedJob) state.selectedJob = j.jobId;
    renderJobs();
    renderReport();
    if (j.state === 'done') reloadStats();
  },
  clients(c) {
    renderClients(c);
  },
};

function setLive(s) {
  $('live').dataset.state = s;
  $('live').textContent = s;
}

async function follow(signal) {
  let delay = 500;
  while (!signal.aborted) {
    setLive('connecting');
    try {
      const headers = state.token ? { authorization: `Bearer ${state.token}` } : {};
      const res = await fetch('/v1/events', { headers, signal, cache: 'no-store' });
      if (res.status === 401) throw new AuthError('operator token required');
      if (!res.ok || !res.body) throw new Error(`event stream: HTTP ${res.status}`);
      setLive('live');
      delay = 500;
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          dispatch(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof AuthError) return onError(e);
      console.warn(e);
    }
    setLive('offline');
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10_000);
  }
}

function dispatch(frame) {
  let event = 'message';
  const data = [];
  for (const line of frame.split('\n')) {
    if (line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (data.length === 0 || !handlers[event]) return;
  handlers[event](JSON.parse(data.join('\n')));
}

// ---------- sign-in ----------

function onError(e) {
  if (e instanceof AuthError) return askToken(state.token ? 'That token was refused.' : '');
  console.error(e);
}

function askToken(message) {
  state.stream?.abort();
  state.stream = null;
  setLive('offline');
  $('main').hidden = true;
  $('sign-out').hidden = true;
  $('token-form').hidden = false;
  $('token-error').textContent = message;
  $('token').focus();
}

async function start() {
  try {
    await loadStatus();
  } catch (e) {
    return onError(e);
  }
  $('token-form').hidden = true;
  $('main').hidden = false;
  $('sign-out').hidden = !state.token;
  state.stream = new AbortController();
  follow(state.stream.signal);
}

$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  state.token = $('token').value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $('token').value = '';
  start();
});
$('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = '';
  askToken('');
});
setInterval(tickUptime, 1000);
start();
