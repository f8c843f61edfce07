// Entry point: session, the live event stream, the shared state and the
// hash router (#/machines, #/queue, #/production, #/orders, #/machine/ID, #/job/ID). Views render
// from `app.state` and are told to update when it changes; they update
// their elements in place so that focus and typing survive live data.

import { api, ApiError, setUnauthorizedHandler } from './api.js';
import { h, fill, setText } from './dom.js';
import { machinesView } from './machines.js';
import { queueView } from './queue.js';
import { machineDetailView, jobDetailView } from './detail.js';
import { productionView } from './production.js';
import { ordersView } from './orders.js';
import { attentionView, announce } from './attention.js';
import { HISTORY_MS } from './chart.js';


const app = {
  state: {
    me: null,
    machines: new Map(),
    jobs: [],
    files: [],
    attention: [], // what needs the operator (GET /attention)
    forecast: [], // each machine's next job (GET /forecast)
    temps: new Map(), // machine id -> [{t, heaters}]
    conn: 'none',
  },
  view: null,
  /** Re-renders the current view from state. */
  changed() {
    updateChrome();
    this.view?.update();
  },
  refreshAll,
  refreshJobs,
  refreshFiles,
  confirm: confirmDialog,
};

const main = document.getElementById('main');

// ------------------------------------------------------------------ state

function recordTemps(m) {
  const heaters = m.status?.heaters ?? [];
  // Stale readings are the last heard, not a new sample.
  if (heaters.length === 0 || m.status?.stale || m.status?.connection !== 'online') return;
  const now = Date.now();
  const list = app.state.temps.get(m.id) ?? [];
  list.push({ t: now, heaters: heaters.map((x) => ({ ...x })) });
  while (list.length && list[0].t < now - HISTORY_MS) list.shift();
  app.state.temps.set(m.id, list);
}

function setMachine(m) {
  const prev = app.state.machines.get(m.id);
  // A machine event sent while a job runs carries the driver's progress;
  // keep the newer of it and what progress events told us.
  if (prev?.status?.job && m.status?.job && prev.status.job.job_id === m.status.job.job_id
      && prev.status.job.lines_done > m.status.job.lines_done) {
    m.status.job = prev.status.job;
  }
  app.state.machines.set(m.id, m);
  recordTemps(m);
}

async function refreshMachines() {
  const list = await api('GET', '/machines');
  for (const m of list) setMachine(m);
  for (const id of [...app.state.machines.keys()]) {
    if (!list.some((m) => m.id === id)) app.state.machines.delete(id);
  }
}

/** Ended jobs the dashboard lists (the newest); older ones stay in the API. */
const ENDED_SHOWN = 200;

async function refreshJobs() {
  app.state.jobs = await api('GET', `/jobs?ended_limit=${ENDED_SHOWN}`);
  app.changed();
}

async function refreshFiles() {
  app.state.files = await api('GET', '/files');
  app.changed();
}

let attentionLoaded = false;

/** The attention list and the forecast: both follow machines and jobs. */
async function refreshOperator() {
  const [attention, forecast] = await Promise.all([api('GET', '/attention'), api('GET', '/forecast')]);
  // The first list after sign-in is not news.
  announce(attentionLoaded ? app.state.attention : null, attention);
  attentionLoaded = true;
  app.state.attention = attention;
  app.state.forecast = forecast;
  app.changed();
}

async function refreshLive() {
  await Promise.all([refreshMachines(), refreshJobs(), refreshOperator()]);
  app.changed();
}

async function refreshAll() {
  await Promise.all([refreshMachines(), refreshJobs(), refreshFiles(), refreshOperator(), refreshBroker()]);
  app.changed();
}

/** The MQTT broker link, when the daemon has one (`/health`'s `mqtt`). */
async function refreshBroker() {
  const el = document.getElementById('broker');
  let link;
  try {
    link = (await api('GET', '/health')).mqtt;
  } catch (e) {
    console.warn('health:', e.message);
    return;
  }
  el.hidden = !link;
  if (!link) return;
  el.dataset.conn = link.connected ? 'live' : 'reconnecting';
  setText(el, link.connected ? 'Broker' : 'Broker down');
  el.title = link.connected ? link.broker : `${link.broker}: ${link.last_error ?? 'not connected'}`;
}

/** Runs `fn` at most once per `ms`, trailing call included. */
function throttle(fn, ms) {
  let timer = null, pending = false;
  return () => {
    if (timer) { pending = true; return; }
    fn();
    timer = setTimeout(() => {
      timer = null;
      if (pending) { pending = false; fn(); }
    }, ms);
  };
}

const quietly = (p) => p.catch((e) => console.warn('refresh failed:', e.message));
const operatorSoon = throttle(() => quietly(refreshOperator()), 500);
const jobsSoon = throttle(() => {
  quietly(refreshJobs());
  operatorSoon();
}, 250);
// The daemon sends no machine events while a job streams (progress only),
// so temperatures and positions are re-read on progress, a few per second.
const machinesSoon = throttle(() => quietly(refreshMachines().then(() => app.changed())), 2000);

function onProgress(ev) {
  const job = app.state.jobs.find((j) => j.id === ev.job_id);
  if (job) job.progress = ev.progress;
  const m = app.state.machines.get(ev.machine_id);
  if (m?.status?.job) {
    Object.assign(m.status.job, {
      lines_done: ev.progress.lines_done,
      lines_total: ev.progress.lines_total,
      last_acked_line: ev.progress.last_acked_line,
      percent: ev.progress.percent,
      elapsed_seconds: ev.progress.elapsed_seconds,
      eta_seconds: ev.progress.eta_seconds,
    });
  }
  if (!job) jobsSoon();
  machinesSoon();
  app.changed();
}

// ----------------------------------------------------------- event stream

let source = null;
/** The stream has opened once since sign-in (later opens are reconnects). */
let opened = false;
let retryTimer = null;
let retryMs = 1000;

function setConn(c) {
  app.state.conn = c;
  updateChrome();
}

function stopEvents() {
  source?.close();
  source = null;
  clearTimeout(retryTimer);
}

/** Opens the SSE stream. The browser retries a dropped stream by itself;
 *  when it gives up (the daemon refused the request, e.g. after losing
 *  the session) we check the session and retry with backoff. */
function startEvents() {
  stopEvents();
  setConn(app.state.conn === 'none' ? 'connecting' : 'reconnecting');
  const es = new EventSource('/api/v1/events');
  source = es;
  es.addEventListener('open', () => {
    retryMs = 1000;
    setConn('live');
    // Anything may have happened while we were away. Sign-in has just
    // loaded the files (which change only by upload and deletion): the
    // first open refetches only the live state.
    const reconnect = opened;
    opened = true;
    quietly(reconnect ? refreshAll() : refreshLive());
  });
  es.addEventListener('error', () => {
    if (source !== es) return;
    setConn('reconnecting');
    if (es.readyState === EventSource.CLOSED) {
      retryTimer = setTimeout(checkAndReconnect, retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    }
  });
  const data = (e) => {
    try { return JSON.parse(e.data); } catch { return null; }
  };
  es.addEventListener('machine', (e) => {
    const ev = data(e);
    if (!ev?.machine) return;
    setMachine(ev.machine);
    app.changed();
    operatorSoon();
  });
  es.addEventListener('job', () => jobsSoon());
  es.addEventListener('progress', (e) => {
    const ev = data(e);
    if (ev) onProgress(ev);
  });
  es.addEventListener('lagged', () => quietly(refreshAll()));
}

async function checkAndReconnect() {
  try {
    await api('GET', '/session');
    startEvents();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      showSignIn('Your session has ended. Sign in again.');
      return;
    }
    setConn('reconnecting');
    retryTimer = setTimeout(checkAndReconnect, retryMs);
    retryMs = Math.min(retryMs * 2, 15000);
  }
}

// ---------------------------------------------------------------- chrome

const CONN_TEXT = {
  none: '',
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Disconnected — reconnecting…',
};

function updateChrome() {
  const signedIn = app.state.me != null;
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('who').hidden = !signedIn;
  const conn = document.getElementById('conn');
  conn.hidden = !signedIn;
  conn.dataset.conn = app.state.conn;
  document.body.dataset.conn = app.state.conn;
  setText(conn, CONN_TEXT[app.state.conn] ?? app.state.conn);
  if (signedIn) setText(document.getElementById('who-name'), app.state.me.name);
  const waiting = app.state.jobs.filter((j) => j.state === 'queued').length;
  setText(document.getElementById('queue-count'), waiting ? String(waiting) : '');
  const needs = signedIn ? app.state.attention.length : 0;
  setText(document.getElementById('attention-count'), needs ? String(needs) : '');
  document.getElementById('nav-attention').dataset.needs = String(needs);
  if (app.title) document.title = `${needs ? `(${needs}) ` : ''}${app.title} · microfactory`;
  const route = parseRoute();
  for (const a of document.querySelectorAll('#nav a')) {
    const current = a.dataset.view === route.nav;
    if (current) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function confirmDialog(text, confirmLabel = 'Confirm') {
  const dlg = document.getElementById('confirm');
  setText(document.getElementById('confirm-text'), text);
  setText(document.getElementById('confirm-yes'), confirmLabel);
  dlg.returnValue = '';
  dlg.showModal();
  document.getElementById('confirm-no').focus();
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
  });
}

// ---------------------------------------------------------------- routing

// A link with a malformed escape (`#/job/%E0%A4%A`) names no page:
// decodeURIComponent throws on it, which would leave the page loading.
function decodePart(p) {
  try {
    return decodeURIComponent(p);
  } catch {
    return null;
  }
}

function notFoundView() {
  const el = h('section', { class: 'panel', id: 'not-found', 'aria-labelledby': 'not-found-h' },
    h('h2', { id: 'not-found-h' }, 'Not found'),
    h('p', { class: 'error', role: 'alert' }, 'This link names no machine, job or page.'),
    h('a', { class: 'back', href: '#/machines' }, '← All machines'));
  return { el, title: 'Not found', update() {}, destroy() {} };
}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodePart);
  if (parts.includes(null)) return { nav: null, make: notFoundView };
  switch (parts[0]) {
    case 'queue': return { nav: 'queue', make: () => queueView(app) };
    case 'production': return { nav: 'production', make: () => productionView(app) };
    case 'orders': return { nav: 'orders', make: () => ordersView(app) };
    case 'attention': return { nav: 'attention', make: () => attentionView(app) };
    case 'machine': return { nav: 'machines', make: () => machineDetailView(app, parts[1] ?? '') };
    case 'job': return { nav: 'queue', make: () => jobDetailView(app, Number(parts[1])) };
    default: return { nav: 'machines', make: () => machinesView(app) };
  }
}

function route() {
  if (!app.state.me) return;
  app.view?.destroy?.();
  const view = parseRoute().make();
  app.view = view;
  fill(main, view.el);
  view.update();
  app.title = view.title;
  updateChrome();
}

// ---------------------------------------------------------------- sign-in

function showSignIn(message) {
  stopEvents();
  app.view?.destroy?.();
  app.view = null;
  app.state.me = null;
  app.state.conn = 'none';
  app.state.attention = [];
  attentionLoaded = false;
  opened = false;
  app.title = null;
  updateChrome();
  document.title = 'Sign in · microfactory';
  const err = h('p', { class: 'error', id: 'signin-error', role: 'alert' }, message ?? '');
  const input = h('input', {
    id: 'signin-token', name: 'token', type: 'password', autocomplete: 'off', required: true,
    spellcheck: 'false', 'aria-describedby': 'signin-hint signin-error',
  });
  const button = h('button', { type: 'submit', class: 'primary', id: 'signin-submit' }, 'Sign in');
  const form = h('form', { id: 'signin-form', novalidate: true },
    h('h2', {}, 'Sign in'),
    h('div', { class: 'field' },
      h('label', { for: 'signin-token' }, 'API token'),
      input,
      h('p', { class: 'muted small', id: 'signin-hint' },
        'Create one on the daemon\'s computer with ', h('code', {}, 'microfactoryd token create'), '.')),
    button, err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setText(err, '');
    if (!input.value.trim()) {
      setText(err, 'Enter a token.');
      input.focus();
      return;
    }
    button.disabled = true;
    try {
      app.state.me = await api('POST', '/session', { token: input.value });
      input.value = '';
      await enter();
    } catch (ex) {
      setText(err, ex.status === 401 ? 'That token is not known to this daemon. Check it and try again.' : ex.message);
      input.focus();
      input.select();
    } finally {
      button.disabled = false;
    }
  });
  fill(main, h('section', { class: 'panel signin' }, form));
  input.focus();
}

async function enter() {
  app.state.conn = 'none';
  startEvents();
  try {
    await refreshAll();
  } catch (e) {
    console.warn('first load failed:', e.message);
  }
  route();
  main.focus();
}

async function boot() {
  setUnauthorizedHandler(() => {
    if (app.state.me) showSignIn('Your session has ended. Sign in again.');
  });
  document.getElementById('sign-out').addEventListener('click', async () => {
    try {
      await api('DELETE', '/session');
    } catch (e) {
      // Signed out on this page either way; the cookie may already be gone.
      console.warn('sign-out:', e.message);
    }
    showSignIn();
  });
  window.addEventListener('hashchange', route);
  // Units awaiting inspection change without a machine or job event.
  setInterval(() => {
    if (app.state.me && app.state.conn === 'live') operatorSoon();
    if (app.state.me) refreshBroker();
  }, 15000);
  try {
    app.state.me = await api('GET', '/session');
  } catch (e) {
    showSignIn(e.status === 401 ? '' : e.message);
    return;
  }
  await enter();
}

boot();
