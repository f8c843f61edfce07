// The Machines view: one card per machine, updated in place from live
// state. Cards are also used at the top of the machine detail view.

import { api } from './api.js';
import {
  h, setText, reconcile, fmtDuration, fmtPercent, fmtTemp, machineStateLabel, jobStateLabel, heaterLabel,
  pauseInstructions, readingsStale, fmtClock,
} from './dom.js';
import { attentionPanel } from './attention.js';

/** The job a card shows: the running one, else the machine's last one. */
function cardJob(app, m) {
  if (m.job_id != null) return app.state.jobs.find((j) => j.id === m.job_id) ?? null;
  let last = null;
  for (const j of app.state.jobs) {
    if (j.assigned_machine === m.id && j.ended_ms && (!last || j.ended_ms > last.ended_ms)) last = j;
  }
  return last;
}

/** Where each file's layers begin, fetched once per file shown on a
 *  running print's card (the list of files carries no analysis). */
const layerCache = new Map();

function layerStarts(app, fileId) {
  if (!layerCache.has(fileId)) {
    layerCache.set(fileId, null);
    api('GET', `/files/${encodeURIComponent(fileId)}`).then((f) => {
      layerCache.set(fileId, f.analysis?.layer_starts ?? []);
      app.changed();
    }, (e) => console.warn('layers:', e.message));
  }
  return layerCache.get(fileId);
}

/** Layer (1-based) and Z of the last acknowledged source line. */
export function layerAt(starts, line) {
  let lo = 0, hi = starts.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (starts[mid].line <= line) lo = mid + 1; else hi = mid;
  }
  return lo === 0 ? null : { layer: lo, of: starts.length, z: starts[lo - 1].z };
}

/** A machine card; `update(m)` refreshes it from a MachineView. */
export function machineCard(app, id, { link = true } = {}) {
  const el = h('article', { class: 'card', 'data-machine': id, 'aria-labelledby': `m-${id}-name` });
  const name = h('h3', { id: `m-${id}-name` });
  const nameLink = link ? h('a', { href: `#/machine/${encodeURIComponent(id)}` }) : null;
  if (nameLink) name.append(nameLink);
  const sub = h('div', { class: 'sub' });
  const badge = h('span', { class: 'badge state' });
  // What it is loaded with (material:, nozzle: ...), which routing reads.
  const tagList = h('ul', { class: 'tags', 'aria-label': 'Tags' });
  const readings = h('dl', { class: 'readings' });
  const staleNote = h('p', { class: 'stale-note small', role: 'status' },
    'Not reporting: the readings above are the last ones heard, not live.');
  const lastError = h('p', { class: 'card-error', role: 'status' });
  // What to do before Resume (tool change, program pause), in full.
  const pauseNote = h('p', { class: 'pause-note', role: 'status' });

  const jobBox = h('div', { class: 'job' });
  const jobName = h('span', { class: 'job-name' });
  const jobState = h('span', { class: 'job-state sub' });
  const bar = h('progress', { class: 'job-progress', max: 100, value: 0, 'aria-labelledby': `m-${id}-pct` });
  const pct = h('span', { class: 'job-percent', id: `m-${id}-pct` });
  const elapsed = h('span', { class: 'job-elapsed' });
  const eta = h('span', { class: 'job-eta' });
  // Layer and height of a print, from the analysis's layer starts.
  const layer = h('p', { class: 'job-layer small', id: `m-${id}-layer` });
  // What runs next here and when (the daemon's forecast).
  const nextLine = h('p', { class: 'next-job small', id: `m-${id}-next` });
  jobBox.append(
    h('div', { class: 'job-line' }, jobName, jobState),
    bar,
    h('div', { class: 'job-line small' }, pct, elapsed, eta),
    layer,
  );

  const error = h('p', { class: 'error', role: 'alert' });
  const act = (path, label) => async () => {
    setText(error, '');
    try {
      const m = await api('POST', `/machines/${encodeURIComponent(id)}/${path}`);
      if (m?.id) app.state.machines.set(m.id, m);
      app.changed();
    } catch (e) {
      setText(error, `${label} failed: ${e.message}`);
    }
  };
  const btn = (cls, text, onclick, extra = {}) =>
    h('button', { type: 'button', class: `small ${cls}`, onclick, ...extra }, text);
  const recover = (action, label) => async () => {
    setText(error, '');
    try {
      const r = await api('POST', `/machines/${encodeURIComponent(id)}/recover`, { action });
      if (r?.machine?.id) app.state.machines.set(r.machine.id, r.machine);
      app.changed();
    } catch (e) {
      setText(error, `${label} failed: ${e.message}`);
    }
  };
  // Recovery: every way back that does not need a daemon restart.
  const recoverButtons = {
    unlock: btn('act-unlock primary', 'Unlock ($X)', recover('unlock', 'Unlock')),
    soft_reset: btn('act-soft-reset', 'Soft reset', recover('soft_reset', 'Soft reset')),
    firmware_restart: btn('act-firmware-restart primary', 'Restart firmware', recover('firmware_restart', 'Firmware restart')),
    reconnect: btn('act-reconnect', 'Reconnect', recover('reconnect', 'Reconnect')),
  };
  const recoverRow = h('div', { class: 'actions recover', role: 'group', 'aria-label': 'Recovery' },
    Object.values(recoverButtons));
  const buttons = {
    pause: btn('act-pause', 'Pause', act('pause', 'Pause')),
    resume: btn('act-resume primary', 'Resume', act('resume', 'Resume')),
    cancel: btn('act-cancel', 'Cancel job…', async () => {
      const m = app.state.machines.get(id);
      const job = m && cardJob(app, m);
      const what = job ? `job #${job.id} “${job.name}”` : 'the running job';
      if (await app.confirm(`Cancel ${what} on ${m?.name ?? id}? The machine runs its cancel script.`, 'Cancel job')) {
        await act('cancel', 'Cancel')();
      }
    }),
    estop: btn('act-estop estop', 'Emergency stop', act('estop', 'Emergency stop'), {
      'aria-label': `Emergency stop ${id}`,
    }),
    clear: btn('act-clear primary', 'Bed cleared', act('clear', 'Confirm')),
    disable: btn('act-disable', 'Disable', act('disable', 'Disable')),
    enable: btn('act-enable', 'Enable', act('enable', 'Enable')),
  };
  // Emergency stop sits alone at the card's end, away from Resume/Pause,
  // always in the same place: a thumb aimed at Resume never lands on it.
  const { estop, ...rest } = buttons;
  const actions = h('div', { class: 'actions' }, Object.values(rest));
  const estopRow = h('div', { class: 'actions estop-row' }, estop);

  el.append(
    h('div', { class: 'card-head' }, h('div', {}, name, sub), badge),
    tagList, pauseNote, readings, staleNote, lastError, jobBox, nextLine, actions, recoverRow, error, estopRow,
  );

  function readingsFor(m) {
    const st = m.status ?? {};
    const rows = [];
    if (m.kind === 'printer') {
      for (const x of st.heaters ?? []) {
        const target = x.target > 0 ? ` / ${x.target.toFixed(0)} °C` : ' / off';
        rows.push([heaterLabel(x.name), `${fmtTemp(x.actual)}${target}`, `heater-${x.name}`]);
      }
      if (!(st.heaters ?? []).length) rows.push(['Temperatures', 'not reported yet', 'heater-none']);
    } else {
      rows.push(['GRBL state', st.state ?? '—', 'grbl-state']);
      const p = st.position;
      rows.push(['Work position', p ? p.map((v, i) => `${'XYZ'[i]} ${v.toFixed(2)}`).join('  ') : '—', 'wpos']);
    }
    rows.push(['Firmware', st.firmware ?? '—', 'firmware']);
    return rows;
  }

  function update(m) {
    el.dataset.state = m.state;
    if (nameLink) setText(nameLink, m.name); else setText(name, m.name);
    setText(sub, `${m.kind === 'mill' ? 'Mill' : 'Printer'} · ${m.profile} · ${m.status?.connection ?? 'offline'}`);
    setText(badge, machineStateLabel(m));
    reconcile(tagList, m.tags ?? [], (t) => t, (t) => h('li', { class: 'tag' }, t), () => {});
    tagList.hidden = !(m.tags ?? []).length;
    reconcile(readings, readingsFor(m), (r) => r[2],
      () => h('div', {}, h('dt'), h('dd')),
      (d, r) => { setText(d.firstChild, r[0]); setText(d.lastChild, r[1]); });
    const stale = readingsStale(m);
    readings.classList.toggle('stale', stale);
    el.dataset.stale = String(stale);
    staleNote.hidden = !stale;
    setText(lastError, m.state === 'error' || m.state === 'offline' ? (m.status?.last_error ?? '') : '');
    lastError.hidden = !lastError.textContent;
    setText(pauseNote, m.state === 'paused' ? pauseInstructions(m.pause) : '');
    pauseNote.hidden = !pauseNote.textContent;
    if (m.pause?.kind) pauseNote.dataset.kind = m.pause.kind; else delete pauseNote.dataset.kind;

    const job = cardJob(app, m);
    const live = m.job_id != null ? m.status?.job : null;
    jobBox.hidden = !job && !live;
    if (!jobBox.hidden) {
      const p = job?.progress ?? {};
      let percent = live?.percent ?? p.percent ?? 0;
      if (job?.state === 'completed') percent = 100; // every line was acknowledged
      const running = m.job_id != null;
      setText(jobName, job ? `#${job.id} ${job.name}` : `Job ${live?.job_id ?? ''}`);
      setText(jobState, running ? jobStateLabel(job?.state ?? 'running') : `Last job: ${jobStateLabel(job.state)}`);
      jobBox.dataset.jobState = job?.state ?? 'running';
      bar.value = percent;
      setText(pct, fmtPercent(percent));
      setText(elapsed, `Elapsed ${fmtDuration(live?.elapsed_seconds ?? p.elapsed_seconds)}`);
      const etaS = live ? live.eta_seconds : null;
      setText(eta, running ? `ETA ${fmtDuration(etaS)}` : '');
      if (!running && job?.failure) setText(jobState, `Last job: ${jobStateLabel(job.state)} — ${job.failure.reason}`);
      const starts = running && m.kind === 'printer' && job ? layerStarts(app, job.file_id) : null;
      const at = starts?.length ? layerAt(starts, live?.last_acked_line ?? p.last_acked_line ?? 0) : null;
      layer.hidden = !at;
      if (at) setText(layer, `Layer ${at.layer} of ${at.of} · Z ${at.z.toFixed(2)} mm`);
    }

    const next = (app.state.forecast ?? []).find((n) => n.machine_id === m.id);
    nextLine.hidden = !next;
    if (next) {
      const when = next.after_operator ? `once you confirm, ${fmtClock(next.start_ms)} at the earliest` : `about ${fmtClock(next.start_ms)}`;
      setText(nextLine, `Next: #${next.job_id} ${next.job_name} — starts ${when}, done about ${fmtClock(next.end_ms)}`);
      nextLine.dataset.job = String(next.job_id);
    }

    const active = m.state === 'running' || m.state === 'paused';
    buttons.pause.hidden = m.state !== 'running';
    buttons.resume.hidden = m.state !== 'paused';
    buttons.cancel.hidden = !active;
    buttons.estop.hidden = !active;
    estopRow.hidden = !active;
    buttons.clear.hidden = m.state !== 'awaiting_clear';
    setText(buttons.clear, m.reason === 'bed_clear' ? 'Bed cleared' : 'Checked: ready for the next job');
    const mill = m.kind === 'mill';
    const conn = m.status?.connection ?? 'offline';
    const free = m.job_id == null;
    const alarm = (m.status?.state ?? '').startsWith('Alarm');
    recoverButtons.unlock.hidden = !(mill && free && alarm && conn !== 'offline');
    recoverButtons.soft_reset.hidden = !(mill && free && m.state === 'error');
    recoverButtons.firmware_restart.hidden = !(!mill && free && m.state === 'error');
    recoverButtons.reconnect.hidden = !(free && (m.state === 'error' || m.state === 'offline'));
    recoverRow.hidden = Object.values(recoverButtons).every((b) => b.hidden);
    buttons.disable.hidden = m.disabled;
    buttons.enable.hidden = !m.disabled;
  }

  return { el, update };
}

export function machinesView(app) {
  const grid = h('div', { class: 'cards', id: 'machine-cards' });
  const empty = h('p', { class: 'empty' }, 'No machines are configured.');
  const attention = attentionPanel(app, { hideWhenEmpty: true });
  const el = h('section', { 'aria-labelledby': 'machines-h' },
    attention.el,
    h('h2', { id: 'machines-h' }, 'Machines'), empty, grid);
  const cards = new Map();
  return {
    el,
    title: 'Machines',
    update() {
      attention.update();
      const list = [...app.state.machines.values()];
      empty.hidden = list.length > 0;
      reconcile(grid, list, (m) => m.id,
        (m) => {
          const c = machineCard(app, m.id);
          cards.set(m.id, c);
          return c.el;
        },
        (_, m) => cards.get(m.id).update(m));
    },
  };
}
