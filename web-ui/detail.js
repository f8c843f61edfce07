// Detail views: one machine (its card, temperature chart, console and job
// history) and one job (its state, failure, history and actions).

import { api } from './api.js';
import { drawChart, HISTORY_MS } from './chart.js';
import { machineCard } from './machines.js';
import {
  h, fill, setText, reconcile, fmtDuration, fmtPercent, fmtTime, jobStateLabel, readingsStale, machineLabel,
} from './dom.js';

/** Console lines kept on the page. */
const CONSOLE_LINES = 300;

function historyRows(jobs) {
  return jobs.map((j) => {
    const took = j.started_ms && j.ended_ms ? fmtDuration((j.ended_ms - j.started_ms) / 1000) : '—';
    return h('tr', { 'data-job': j.id, 'data-state': j.state },
      h('td', { class: 'num' }, h('a', { href: `#/job/${j.id}` }, `#${j.id}`)),
      h('td', {}, j.name),
      h('td', {}, jobStateLabel(j.state)),
      h('td', {}, fmtTime(j.started_ms)),
      h('td', { class: 'num' }, took),
      h('td', {}, j.failure ? j.failure.reason : ''));
  });
}

/**
 * Puts the daemon's temperature history for machine `id` in front of what
 * this page recorded since it opened, so the chart starts filled.
 */
async function loadTempHistory(app, id) {
  const hist = await api('GET', `/machines/${encodeURIComponent(id)}/temperatures`);
  const samples = hist.at_ms.map((t, i) => ({
    t,
    heaters: hist.heaters.map((s) => ({ name: s.name, actual: s.actual[i], target: s.target[i] })),
  }));
  const last = samples.length ? samples[samples.length - 1].t : -Infinity;
  const mine = (app.state.temps.get(id) ?? []).filter((s) => s.t > last);
  app.state.temps.set(id, samples.concat(mine));
}

export function machineDetailView(app, id) {
  const back = h('a', { class: 'back', href: '#/machines' }, '← All machines');
  const missing = h('p', { class: 'error', role: 'alert' }, `There is no machine “${id}”.`);
  const card = machineCard(app, id, { link: false });

  // Home is only offered here, where the operator looks at one machine.
  const homeErr = h('p', { class: 'error', role: 'alert' });
  const home = h('button', { type: 'button', class: 'small', id: 'home' }, 'Home axes');
  home.addEventListener('click', async () => {
    setText(homeErr, '');
    home.disabled = true;
    try {
      const r = await api('POST', `/machines/${encodeURIComponent(id)}/home`);
      log('home', r.response);
    } catch (e) {
      setText(homeErr, `Home failed: ${e.message}`);
    } finally {
      home.disabled = false;
    }
  });

  const chartBox = h('div', { class: 'chart', id: 'temp-chart' });
  const chartStale = h('p', { class: 'stale-note small', id: 'chart-stale', role: 'status' },
    'Not reporting: no new readings; the chart ends at the last one heard.');
  const chartPanel = h('section', { class: 'panel', 'aria-labelledby': 'chart-h' },
    h('h2', { id: 'chart-h' }, 'Temperatures'), chartStale, chartBox,
    h('p', { class: 'muted small' }, 'The last 20 minutes, a reading a second, kept by the daemon.'));

  // ---- console
  const logBox = h('div', { class: 'console-log', id: 'console-log', role: 'log', 'aria-live': 'polite', tabindex: '0', 'aria-label': 'Console transcript' });
  const cmd = h('input', { type: 'text', id: 'console-input', autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. M105', 'aria-describedby': 'console-error' });
  const send = h('button', { type: 'submit', class: 'primary' }, 'Send');
  const consoleErr = h('p', { class: 'error', role: 'alert', id: 'console-error' });
  function log(command, lines, isErr = false) {
    logBox.append(h('div', { class: 'sent' }, `> ${command}`));
    for (const l of lines) logBox.append(h('div', { class: isErr ? 'err' : '' }, l));
    while (logBox.childElementCount > CONSOLE_LINES) logBox.firstElementChild.remove();
    logBox.scrollTop = logBox.scrollHeight;
  }
  const form = h('form', { class: 'console-form', id: 'console-form', novalidate: true },
    h('label', { for: 'console-input', class: 'visually-hidden' }, 'Command'), cmd, send);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setText(consoleErr, '');
    const command = cmd.value.trim();
    if (!command) {
      setText(consoleErr, 'Type a command first, e.g. M105.');
      cmd.focus();
      return;
    }
    send.disabled = true;
    try {
      const r = await api('POST', `/machines/${encodeURIComponent(id)}/console`, { command });
      log(r.command, r.response.length ? r.response : ['(no answer)']);
      cmd.value = '';
      refreshSerial();
    } catch (ex) {
      log(command, [ex.message], true);
      setText(consoleErr, ex.message);
    } finally {
      send.disabled = false;
      cmd.focus();
    }
  });
  const consolePanel = h('section', { class: 'panel', 'aria-labelledby': 'console-h' },
    h('h2', { id: 'console-h' }, 'Console'),
    h('p', { class: 'muted small' }, 'Sends one command to the firmware and shows its answer; during a job only queries (M105, M114, ?, $G …) are sent.'),
    logBox, form, consoleErr);

  // ---- serial log: the port's recent traffic, as the daemon keeps it
  const serialBox = h('div', { class: 'console-log serial-log', id: 'serial-log', role: 'log', tabindex: '0', 'aria-label': 'Recent serial traffic' });
  const serialErr = h('p', { class: 'error', role: 'alert' });
  let serialSig = '';
  async function refreshSerial() {
    try {
      const lines = await api('GET', `/machines/${encodeURIComponent(id)}/serial`);
      setText(serialErr, '');
      const last = lines[lines.length - 1];
      const sig = `${lines.length}:${last ? last.at_ms + last.text : ''}`;
      if (sig === serialSig) return;
      serialSig = sig;
      const atBottom = serialBox.scrollTop + serialBox.clientHeight >= serialBox.scrollHeight - 4;
      fill(serialBox, lines.map((l) => h('div', { class: l.sent ? 'sent' : '' }, `${l.sent ? '>' : '<'} ${l.text}`)));
      if (atBottom) serialBox.scrollTop = serialBox.scrollHeight;
    } catch (e) {
      setText(serialErr, `Serial log unavailable: ${e.message}`);
    }
  }
  const serialPanel = h('section', { class: 'panel', 'aria-labelledby': 'serial-h' },
    h('h2', { id: 'serial-h' }, 'Serial log'),
    h('p', { class: 'muted small' }, 'The last 200 lines on the port: > sent by the daemon, < from the firmware.'),
    serialBox, serialErr);

  // ---- history
  const histBody = h('tbody');
  const noHist = h('p', { class: 'empty' }, 'This machine has run no job yet.');
  const histPanel = h('section', { class: 'panel', 'aria-labelledby': 'hist-h' },
    h('h2', { id: 'hist-h' }, 'Job history'), noHist,
    h('div', { class: 'table-wrap' }, h('table', { id: 'machine-history' },
      h('thead', {}, h('tr', {}, ['Job', 'Name', 'State', 'Started', 'Took', 'Failure'].map((t) => h('th', { scope: 'col' }, t)))),
      histBody)));

  const body = h('div', {},
    h('div', { class: 'detail-head' }, card.el, h('div', { class: 'actions' }, home), homeErr),
    h('div', { class: 'detail-layout' }, h('div', {}, chartPanel, consolePanel, serialPanel), histPanel));
  const el = h('section', { 'aria-label': `Machine ${id}` }, back, missing, body);

  let histSig = '';
  const redraw = () => {
    const m = app.state.machines.get(id);
    if (m?.kind === 'printer') drawChart(chartBox, app.state.temps.get(id) ?? [], HISTORY_MS);
  };
  const timer = setInterval(() => {
    redraw();
    refreshSerial();
  }, 2000);
  refreshSerial();
  loadTempHistory(app, id).then(redraw, (e) => console.warn('temperature history:', e.message));
  return {
    el,
    title: id,
    update() {
      const m = app.state.machines.get(id);
      missing.hidden = !!m;
      body.hidden = !m;
      if (!m) return;
      this.title = m.name;
      card.update(m);
      chartPanel.hidden = m.kind !== 'printer';
      chartStale.hidden = !readingsStale(m);
      redraw();
      const jobs = app.state.jobs.filter((j) => j.assigned_machine === id && j.state !== 'queued')
        .sort((a, b) => (b.started_ms ?? b.created_ms) - (a.started_ms ?? a.created_ms));
      const sig = jobs.map((j) => `${j.id}:${j.state}`).join();
      if (sig !== histSig) {
        histSig = sig;
        fill(histBody, historyRows(jobs));
        noHist.hidden = jobs.length > 0;
      }
    },
    destroy() {
      clearInterval(timer);
    },
  };
}

export function jobDetailView(app, id) {
  const back = h('a', { class: 'back', href: '#/queue' }, '← Queue');
  const err = h('p', { class: 'error', role: 'alert', id: 'job-error' });
  const title = h('h2', { id: 'job-h' });
  const badge = h('span', { class: 'badge' });
  const facts = h('dl', { class: 'facts', id: 'job-facts' });
  const failure = h('div', { class: 'failure', id: 'job-failure', role: 'status' });
  const bar = h('progress', { max: 100, value: 0, 'aria-label': 'Progress' });
  const actions = h('div', { class: 'actions' });
  const fromLine = h('input', { type: 'number', id: 'requeue-line', min: 1, inputmode: 'numeric' });
  const requeueForm = h('form', { class: 'stored', id: 'requeue-form', novalidate: true },
    h('div', { class: 'field' }, h('label', { for: 'requeue-line' }, 'Requeue from source line'), fromLine),
    h('button', { type: 'submit', class: 'small' }, 'Requeue from line'));
  const hist = h('tbody');
  const missing = h('p', { class: 'error', role: 'alert' });

  async function act(action, body, label) {
    setText(err, '');
    try {
      await api('POST', `/jobs/${id}/${action}`, body);
      await load();
    } catch (e) {
      setText(err, `${label} failed: ${e.message}`);
    }
  }
  requeueForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const n = Number(fromLine.value);
    if (!Number.isInteger(n) || n < 1) {
      setText(err, 'The line must be a whole number of at least 1.');
      fromLine.focus();
      return;
    }
    act('requeue', { from_line: n }, 'Requeue');
  });

  /** The file by its name (the list of files has it), its hash short. */
  function fileLabel(fileId) {
    const f = app.state.files.find((x) => x.id === fileId);
    return [f ? f.name : 'a deleted file', ' ', h('code', { class: 'muted small' }, fileId.slice(0, 12))];
  }

  let job = null;
  async function load() {
    try {
      job = await api('GET', `/jobs/${id}`);
      missing.hidden = true;
    } catch (e) {
      job = null;
      setText(missing, e.message);
      missing.hidden = false;
    }
    render();
  }

  let actSig = '';
  function render() {
    body.hidden = !job;
    if (!job) return;
    title.textContent = `Job #${job.id}: ${job.name}`;
    body.dataset.state = job.state;
    setText(badge, jobStateLabel(job.state));
    const p = job.progress;
    fill(facts,
      h('dt', {}, 'State'), h('dd', { 'data-fact': 'state' }, jobStateLabel(job.state)),
      h('dt', {}, 'Machine'), h('dd', { 'data-fact': 'machine' }, machineLabel(app, job.assigned_machine)),
      h('dt', {}, 'Wanted'), h('dd', {}, job.machine_id ? machineLabel(app, job.machine_id) : (job.kind ? `any ${job.kind}` : 'any machine'),
        job.tags.length ? ` with tags ${job.tags.join(', ')}` : ''),
      h('dt', {}, 'Copy'), h('dd', {}, `${job.copy} of ${job.copies}`),
      h('dt', {}, 'Priority'), h('dd', {}, job.priority),
      h('dt', {}, 'Progress'), h('dd', {}, `${fmtPercent(p.percent)} (${p.lines_done} of ${p.lines_total} commands)`),
      h('dt', {}, 'Elapsed'), h('dd', {}, fmtDuration(p.elapsed_seconds)),
      p.eta_seconds != null && !job.ended_ms ? [h('dt', {}, 'ETA'), h('dd', {}, fmtDuration(p.eta_seconds))] : null,
      h('dt', {}, 'Created'), h('dd', {}, fmtTime(job.created_ms)),
      h('dt', {}, 'Started'), h('dd', {}, fmtTime(job.started_ms)),
      h('dt', {}, 'Ended'), h('dd', {}, fmtTime(job.ended_ms)),
      job.start_line > 1 ? [h('dt', {}, 'From line'), h('dd', {}, job.start_line)] : null,
      job.expand_canned_cycles ? [h('dt', {}, 'Canned cycles'), h('dd', {}, 'expanded')] : null,
      h('dt', {}, 'File'), h('dd', { 'data-fact': 'file' }, fileLabel(job.file_id)));
    bar.value = job.state === 'completed' ? 100 : p.percent;
    fill(failure, job.failure
      ? h('p', { class: 'error' }, `Why it stopped: ${job.failure.reason}`, job.failure.line ? ` (source line ${job.failure.line})` : '')
      : null);
    requeueForm.hidden = !['failed', 'cancelled', 'interrupted', 'completed'].includes(job.state);
    // Where an interrupted or failed job can pick up again.
    if (!fromLine.value && p.last_acked_line && job.state !== 'completed') fromLine.value = String(p.last_acked_line + 1);
    fill(hist, job.history.map((t) => h('tr', {},
      h('td', {}, fmtTime(t.at_ms)), h('td', {}, jobStateLabel(t.state)), h('td', {}, t.machine_id ?? ''), h('td', {}, t.note ?? ''))));

    const want = [];
    if (job.state === 'running') want.push('pause');
    if (job.state === 'paused') want.push('resume');
    if (['queued', 'assigned', 'running', 'paused'].includes(job.state)) want.push('cancel');
    if (['failed', 'cancelled', 'interrupted', 'completed'].includes(job.state)) want.push('requeue');
    const sig = want.join();
    if (sig !== actSig) {
      actSig = sig;
      fill(actions, want.map((w) => {
        switch (w) {
          case 'pause': return h('button', { type: 'button', class: 'small', onclick: () => act('pause', undefined, 'Pause') }, 'Pause');
          case 'resume': return h('button', { type: 'button', class: 'small primary', onclick: () => act('resume', undefined, 'Resume') }, 'Resume');
          case 'cancel': return h('button', { type: 'button', class: 'small', onclick: async () => {
            if (await app.confirm(`Cancel job #${id} “${job.name}”?`, 'Cancel job')) act('cancel', undefined, 'Cancel');
          } }, 'Cancel…');
          case 'requeue': return h('button', { type: 'button', class: 'small', onclick: () => act('requeue', undefined, 'Requeue') }, 'Requeue from the start');
          default: return null;
        }
      }));
    }
  }

  const body = h('div', {},
    h('section', { class: 'panel', 'aria-labelledby': 'job-h' },
      h('div', { class: 'card-head' }, title, badge), bar, facts, failure, actions, requeueForm, err),
    h('section', { class: 'panel', 'aria-labelledby': 'job-hist-h' },
      h('h2', { id: 'job-hist-h' }, 'History'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'job-history' },
        h('thead', {}, h('tr', {}, ['When', 'State', 'Machine', 'Note'].map((t) => h('th', { scope: 'col' }, t)))),
        hist))));
  body.hidden = true;
  const el = h('section', { 'aria-label': `Job ${id}` }, back, missing, body);
  missing.hidden = true;

  let lastSeen = '';
  return {
    el,
    title: `Job #${id}`,
    update() {
      // The list has this job's latest state and progress; reload the full
      // record (with history) only when its state changed.
      const j = app.state.jobs.find((x) => x.id === id);
      if (!j) {
        if (!lastSeen) { lastSeen = 'loading'; load(); }
        return;
      }
      const sig = `${j.state}:${j.seq}:${j.priority}`;
      if (job && sig === lastSeen) {
        job.progress = j.progress;
        render();
        return;
      }
      lastSeen = sig;
      load();
    },
  };
}
