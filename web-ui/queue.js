// The Queue view: upload (drag-and-drop or file picker) with progress, the
// file's analysis and pre-flight before queueing, the submit form, and
// the queue itself with reordering (drag-and-drop, or Move up / Move down
// from the keyboard), cancel and requeue.

import { api, uploadFile } from './api.js';
import {
  h, fill, setText, reconcile, fmtDuration, fmtLength, fmtBytes, fmtPercent, fmtTime, jobStateLabel, machineLabel,
} from './dom.js';

/** Ended jobs shown under the queue; "Show older" pages back from there. */
const RECENT = 15;
/** Ended jobs fetched per "Show older" click. */
const OLDER_PAGE = 20;

function bounds(b) {
  if (!b) return '—';
  const axis = (i) => `${(b.max[i] - b.min[i]).toFixed(1)}`;
  return `${axis(0)} × ${axis(1)} × ${axis(2)} mm (X ${b.min[0].toFixed(1)}…${b.max[0].toFixed(1)}, `
    + `Y ${b.min[1].toFixed(1)}…${b.max[1].toFixed(1)}, Z ${b.min[2].toFixed(1)}…${b.max[2].toFixed(1)})`;
}

const KIND_TEXT = {
  rejected: 'Rejected', canned_cycle: 'Canned cycle', tool_change: 'Tool change', warning: 'Warning',
};

function findingsTable(id, report) {
  if (!report.findings.length) return h('p', { class: 'ok-text', id }, 'No findings: the firmware accepts every line.');
  const byKind = {};
  for (const f of report.findings) byKind[f.kind] = (byKind[f.kind] ?? 0) + 1;
  const counts = Object.entries(byKind).map(([k, n]) => `${n} ${(KIND_TEXT[k] ?? k).toLowerCase()}`).join(', ');
  const summary = `${report.total} ${report.total === 1 ? 'finding' : 'findings'} (${counts}`
    + `${report.total > report.findings.length ? `, first ${report.findings.length} listed` : ''}).`
    + (report.expandable && report.rejected_count > 0 ? ' All are fixed by canned-cycle expansion.' : '');
  return h('div', { id },
    h('p', { class: report.rejected_count > 0 ? 'error' : 'muted' }, summary),
    // Long drill files have hundreds of findings: a scrolling box keeps
    // the form below within reach.
    h('div', { class: 'table-wrap findings', tabindex: '0', role: 'region', 'aria-label': 'Pre-flight findings' },
      h('table', {},
        h('thead', {}, h('tr', {},
          h('th', { class: 'num', scope: 'col' }, 'Line'), h('th', { scope: 'col' }, 'Code'),
          h('th', { scope: 'col' }, 'Kind'), h('th', { scope: 'col' }, 'Why'))),
        h('tbody', {}, report.findings.map((f) => h('tr', { class: 'finding', 'data-line': f.line, 'data-kind': f.kind },
          h('td', { class: 'num' }, f.line), h('td', {}, h('code', {}, f.text)),
          h('td', {}, KIND_TEXT[f.kind] ?? f.kind), h('td', {}, f.reason)))))));
}

/** The analysis of one file and the form that queues it. */
function analysisPanel(app, file, onQueued) {
  const a = file.analysis;
  const machines = [...app.state.machines.values()];
  const nameOf = (id) => app.state.machines.get(id)?.name ?? id;
  const fits = file.machines ?? [];
  const needsExpansion = fits.some((f) => !f.ok && f.ok_with_expansion);
  const anyFit = fits.some((f) => f.ok || f.ok_with_expansion);

  const facts = h('dl', { class: 'facts', id: 'analysis-facts' },
    h('dt', {}, 'Estimated time'), h('dd', { 'data-fact': 'time' }, fmtDuration(a.estimated_seconds),
      a.slicer_estimated_seconds ? ` (slicer says ${fmtDuration(a.slicer_estimated_seconds)})` : ''),
    a.uses_extrusion ? [h('dt', {}, 'Filament'), h('dd', { 'data-fact': 'filament' }, fmtLength(a.filament_mm))] : null,
    h('dt', {}, 'Bounds'), h('dd', { 'data-fact': 'bounds' }, bounds(a.bounds_mm ?? a.travel_bounds_mm)),
    a.uses_extrusion || a.layers ? [h('dt', {}, 'Layers'), h('dd', { 'data-fact': 'layers' }, a.layers)] : null,
    h('dt', {}, 'Lines'), h('dd', {}, `${a.lines} (${a.commands} commands)`),
    a.tool_changes ? [h('dt', {}, 'Tool changes'), h('dd', {}, a.tool_changes)] : null,
    a.inch_units ? [h('dt', {}, 'Units'), h('dd', {}, 'inches (G20), converted')] : null,
    a.slicer ? [h('dt', {}, 'Made by'), h('dd', {}, a.slicer.name)] : null,
    a.slicer?.material ? [h('dt', {}, 'Material'), h('dd', { 'data-fact': 'material' }, a.slicer.material)] : null,
    a.slicer?.nozzle_diameter_mm ? [h('dt', {}, 'Nozzle'), h('dd', { 'data-fact': 'nozzle' }, `${a.slicer.nozzle_diameter_mm} mm`)] : null,
    h('dt', {}, 'Size'), h('dd', {}, fmtBytes(file.size)));

  const fitList = h('ul', { class: 'fits', id: 'analysis-fits' }, fits.map((f) => {
    const cls = f.ok ? 'fit-ok' : f.ok_with_expansion ? 'fit-expand' : 'fit-no';
    // Reasons start with the machine's id, which the line already shows.
    const raw = f.reason ?? 'not suitable';
    const reason = raw.startsWith(`${f.machine_id}: `) ? raw.slice(f.machine_id.length + 2) : raw;
    const why = f.ok ? 'can run it' : f.ok_with_expansion ? 'can run it with canned-cycle expansion' : `cannot: ${reason}`;
    return h('li', { class: cls, 'data-machine': f.machine_id }, h('strong', {}, nameOf(f.machine_id)), ` ${why}`);
  }));

  // The pre-flight of the firmware the file is meant for comes first.
  const forMill = a.uses_spindle || (!a.uses_extrusion && fits.some((f) => app.state.machines.get(f.machine_id)?.kind === 'mill' && (f.ok || f.ok_with_expansion)));
  const grbl = h('section', {}, h('h4', {}, 'GRBL 1.1 pre-flight'), findingsTable('findings-grbl', file.preflight_grbl));
  const marlin = h('section', {}, h('h4', {}, 'Marlin 2 pre-flight'), findingsTable('findings-marlin', file.preflight_marlin));
  const preflight = forMill
    ? [grbl, h('details', {}, h('summary', {}, 'Marlin 2 pre-flight'), marlin)]
    : [marlin, h('details', {}, h('summary', {}, 'GRBL 1.1 pre-flight'), grbl)];
  // The findings inside <details> keep their own heading out of the way.
  for (const d of preflight) if (d.tagName === 'DETAILS') d.querySelector('h4')?.remove();

  // ---- the form
  const err = h('p', { class: 'error', role: 'alert', id: 'queue-error' });
  const ok = h('p', { class: 'ok-text', role: 'status', id: 'queue-ok' });
  const expand = h('input', { type: 'checkbox', id: 'q-expand', checked: needsExpansion });
  const target = h('select', { id: 'q-target', name: 'target' },
    h('option', { value: '' }, 'Any machine that can run it'),
    h('option', { value: 'kind:printer' }, 'Any printer'),
    h('option', { value: 'kind:mill' }, 'Any mill'),
    machines.map((m) => {
      const fit = fits.find((f) => f.machine_id === m.id);
      const can = fit && (fit.ok || fit.ok_with_expansion);
      return h('option', { value: `machine:${m.id}` }, `${m.name} (${m.id})${can ? '' : ' — cannot run it'}`);
    }));
  // Preselect the only machine that fits, which is what people want then.
  const fitting = fits.filter((f) => f.ok || f.ok_with_expansion);
  if (fitting.length === 1) target.value = `machine:${fitting[0].machine_id}`;
  // Machines whose material or nozzle tags differ from what the file
  // states: said before queueing, with the override next to it.
  const mismatched = fits.filter((f) => !f.ok && /sliced for/.test(f.reason ?? ''));
  const anyMaterial = h('input', { type: 'checkbox', id: 'q-any-material' });
  const materialWarn = h('p', { class: 'warn', id: 'material-warning', role: 'alert' });
  const updateMaterialWarn = () => {
    const [tk, tv] = target.value.split(/:(.*)/s);
    const chosen = tk === 'machine' ? mismatched.find((f) => f.machine_id === tv) : null;
    let text = '';
    if (chosen && !anyMaterial.checked) {
      text = `Mismatch: ${chosen.reason}. The job will not run there unless you tick the override.`;
    } else if (mismatched.length && !anyMaterial.checked) {
      text = `Skipped for material or nozzle: ${mismatched.map((f) => nameOf(f.machine_id)).join(', ')}.`;
    }
    setText(materialWarn, text);
    materialWarn.hidden = !text;
    materialWarn.dataset.mismatch = String(!!chosen);
  };
  target.addEventListener('change', updateMaterialWarn);
  anyMaterial.addEventListener('change', updateMaterialWarn);
  updateMaterialWarn();
  const copies = h('input', { type: 'number', id: 'q-copies', min: 1, max: 1000, value: '1', inputmode: 'numeric' });
  const priority = h('input', { type: 'number', id: 'q-priority', min: -1000, max: 1000, value: '0', inputmode: 'numeric' });
  const tags = h('input', { type: 'text', id: 'q-tags', placeholder: 'e.g. material:PLA', autocomplete: 'off', 'aria-describedby': 'q-tags-hint' });
  const name = h('input', { type: 'text', id: 'q-name', value: file.name, autocomplete: 'off' });
  const submit = h('button', { type: 'submit', class: 'primary', id: 'queue-submit' }, 'Queue');

  const form = h('form', { id: 'queue-form', novalidate: true },
    h('div', { class: 'form-grid' },
      h('div', { class: 'field' }, h('label', { for: 'q-target' }, 'Run on'), target),
      h('div', { class: 'field' }, h('label', { for: 'q-copies' }, 'Copies'), copies),
      h('div', { class: 'field' }, h('label', { for: 'q-priority' }, 'Priority'), priority),
      h('div', { class: 'field' }, h('label', { for: 'q-name' }, 'Job name'), name),
      h('div', { class: 'field' }, h('label', { for: 'q-tags' }, 'Required tags'), tags,
        h('span', { class: 'muted small', id: 'q-tags-hint' }, 'Comma-separated; only machines with all of them.'))),
    (needsExpansion || file.preflight_grbl.expandable) && file.preflight_grbl.rejected_count > 0
      ? h('label', { class: 'check', for: 'q-expand' }, expand,
        h('span', {}, 'Expand canned cycles (G81–G83 become plain moves) and pause for the operator at tool changes (M6). ',
          h('span', { class: 'muted' }, 'GRBL has neither; without this a mill refuses the file.')))
      : null,
    materialWarn,
    mismatched.length
      ? h('label', { class: 'check', for: 'q-any-material' }, anyMaterial,
        h('span', {}, 'Run on any material and nozzle: ignore the machines\' material: and nozzle: tags for this job.'))
      : null,
    h('div', { class: 'actions' }, submit),
    err, ok);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setText(err, '');
    setText(ok, '');
    const body = { file_id: file.id };
    const n = Number(copies.value);
    if (!Number.isInteger(n) || n < 1) {
      setText(err, 'Copies must be a whole number of at least 1.');
      copies.focus();
      return;
    }
    body.copies = n;
    const p = Number(priority.value);
    if (!Number.isInteger(p)) {
      setText(err, 'Priority must be a whole number (higher runs first).');
      priority.focus();
      return;
    }
    body.priority = p;
    const [tk, tv] = target.value.split(/:(.*)/s);
    if (tk === 'kind') body.kind = tv;
    if (tk === 'machine') body.machine_id = tv;
    const tagList = tags.value.split(',').map((t) => t.trim()).filter(Boolean);
    if (tagList.length) body.tags = tagList;
    if (name.value.trim()) body.name = name.value.trim();
    if (form.contains(expand)) body.expand_canned_cycles = expand.checked;
    if (anyMaterial.checked) body.any_material = true;
    submit.disabled = true;
    try {
      const res = await api('POST', '/jobs', body);
      const ids = res.jobs.map((j) => `#${j.id}`).join(', ');
      setText(ok, `Queued ${res.jobs.length === 1 ? 'job' : 'jobs'} ${ids}.`);
      await app.refreshJobs();
      onQueued?.();
    } catch (ex) {
      setText(err, `Not queued: ${ex.message}`);
    } finally {
      submit.disabled = false;
    }
  });

  return h('section', { class: 'panel', id: 'analysis', 'aria-labelledby': 'analysis-h', 'data-file': file.id },
    h('h2', { id: 'analysis-h' }, h('span', { class: 'muted' }, 'Analysis of '), file.name),
    facts,
    h('h3', {}, 'Machines'),
    anyFit ? null : h('p', { class: 'error' }, 'No machine here can run this file as it is.'),
    fitList,
    h('h3', {}, 'Pre-flight'),
    preflight,
    h('h3', {}, 'Queue it'),
    form);
}

export function queueView(app) {
  // ---- upload
  const input = h('input', { type: 'file', id: 'file-input', accept: '.gcode,.gco,.g,.nc,.ngc,.tap,.cnc,.txt' });
  const bar = h('progress', { id: 'upload-progress', max: 100, value: 0, hidden: true, 'aria-label': 'Upload progress' });
  const status = h('p', { class: 'muted small', role: 'status', id: 'upload-status' });
  const uploadErr = h('p', { class: 'error', role: 'alert', id: 'upload-error' });
  const drop = h('div', { class: 'drop', id: 'drop' },
    h('label', { for: 'file-input' }, 'Upload a G-code file'),
    input,
    h('span', { class: 'muted small' }, '…or drop it here.'),
    bar, status);

  async function take(file) {
    setText(uploadErr, '');
    bar.hidden = false;
    bar.value = 0;
    setText(status, `Uploading ${file.name}…`);
    try {
      const view = await uploadFile(file, (f) => {
        bar.value = Math.round(f * 100);
        setText(status, `Uploading ${file.name}: ${fmtPercent(f * 100)}`);
      });
      bar.value = 100;
      setText(status, `Uploaded ${view.name} and analysed it.`);
      show(view);
      app.refreshFiles().catch(() => {});
    } catch (e) {
      bar.hidden = true;
      setText(status, '');
      setText(uploadErr, `${file.name} was not uploaded: ${e.message}`);
    } finally {
      input.value = '';
    }
  }
  input.addEventListener('change', () => {
    if (input.files?.[0]) take(input.files[0]);
  });
  drop.addEventListener('dragover', (e) => {
    if (![...(e.dataTransfer?.types ?? [])].includes('Files')) return;
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    drop.classList.remove('over');
    const f = e.dataTransfer?.files?.[0];
    if (!f) return;
    e.preventDefault();
    take(f);
  });

  // ---- stored files
  const stored = h('select', { id: 'stored-file' });
  const storedBtn = h('button', { type: 'button', class: 'small' }, 'Show');
  const deleteBtn = h('button', { type: 'button', class: 'small', id: 'stored-delete' }, 'Delete…');
  const storedErr = h('p', { class: 'error', role: 'alert', id: 'stored-error' });
  const storedOk = h('p', { class: 'muted small', role: 'status', id: 'stored-ok' });
  deleteBtn.addEventListener('click', async () => {
    setText(storedErr, '');
    setText(storedOk, '');
    const f = app.state.files.find((x) => x.id === stored.value);
    if (!f) return;
    if (!await app.confirm(`Delete the file “${f.name}”? Jobs that ran it keep their history.`, 'Delete file')) return;
    try {
      await api('DELETE', `/files/${encodeURIComponent(f.id)}`);
      setText(storedOk, `Deleted ${f.name}.`);
      if (analysisSlot.firstElementChild?.dataset.file === f.id) fill(analysisSlot);
      await app.refreshFiles();
    } catch (e) {
      setText(storedErr, `${f.name} was not deleted: ${e.message}`);
    }
  });
  storedBtn.addEventListener('click', async () => {
    setText(storedErr, '');
    if (!stored.value) return;
    try {
      show(await api('GET', `/files/${encodeURIComponent(stored.value)}`));
    } catch (e) {
      setText(storedErr, e.message);
    }
  });
  const storedBox = h('div', { class: 'stored' },
    h('div', { class: 'field' }, h('label', { for: 'stored-file' }, 'Or a file uploaded before'), stored),
    storedBtn, deleteBtn);

  const analysisSlot = h('div', { id: 'analysis-slot' });
  function show(view) {
    fill(analysisSlot, analysisPanel(app, view, null));
    analysisSlot.querySelector('h2')?.setAttribute('tabindex', '-1');
    analysisSlot.querySelector('h2')?.focus();
  }

  // ---- the queue
  const listErr = h('p', { class: 'error', role: 'alert', id: 'jobs-error' });
  const activeList = h('ul', { class: 'jobs', id: 'jobs-active', 'aria-label': 'Running jobs' });
  const queuedList = h('ul', { class: 'jobs', id: 'jobs-queued', 'aria-label': 'Queued jobs, in the order they run' });
  const endedList = h('ul', { class: 'jobs', id: 'jobs-ended', 'aria-label': 'Recently ended jobs' });
  const noActive = h('p', { class: 'empty' }, 'Nothing is running.');
  const noQueued = h('p', { class: 'empty' }, 'The queue is empty.');
  const noEnded = h('p', { class: 'empty' }, 'No job has ended yet.');
  // Older history, fetched on request a page at a time (the daemon keeps
  // all of it; the live list holds only the newest).
  const olderList = h('ul', { class: 'jobs', id: 'jobs-older', 'aria-label': 'Older ended jobs' });
  const olderBtn = h('button', { type: 'button', class: 'small', id: 'jobs-older-btn' }, 'Show older');
  const olderNote = h('p', { class: 'muted small', id: 'jobs-older-end', hidden: true }, 'That is the whole history.');
  let olderDone = false;
  olderBtn.addEventListener('click', async () => {
    setText(listErr, '');
    const shown = [...endedList.children, ...olderList.children];
    const last = shown[shown.length - 1]?._job;
    if (!last) return;
    olderBtn.disabled = true;
    try {
      const page = await api('GET', `/jobs?ended_limit=${OLDER_PAGE}&ended_after=${last.id}`);
      const have = new Set(shown.map((li) => li._job.id));
      for (const j of page) {
        if (have.has(j.id)) continue;
        const li = jobRow(j);
        updateRow(li, j, {});
        olderList.append(li);
      }
      olderDone = page.length < OLDER_PAGE;
      olderBtn.hidden = olderDone;
      olderNote.hidden = !olderDone;
    } catch (e) {
      setText(listErr, `Older jobs could not be loaded: ${e.message}`);
    } finally {
      olderBtn.disabled = false;
    }
  });

  async function jobAction(job, action, body, label) {
    setText(listErr, '');
    try {
      await api('POST', `/jobs/${job.id}/${action}`, body);
      await app.refreshJobs();
    } catch (e) {
      setText(listErr, `${label} #${job.id} failed: ${e.message}`);
    }
  }

  /** Moves `job` just before `before` (null: to the end), taking the
   *  neighbour's priority so that the order shown is the order run; a
   *  move that changes its priority says so and asks first. Resolves to
   *  whether it moved. */
  async function moveBefore(job, before, last) {
    const next = before ?? last;
    const priority = next?.priority ?? job.priority;
    if (priority !== job.priority) {
      const where = before ? `above job #${before.id}` : 'to the end';
      const ok = await app.confirm(
        `Moving job #${job.id} ${where} changes its priority from ${job.priority} to ${priority}`
        + ` (the queue runs higher priorities first). Move it?`, 'Move and change priority');
      if (!ok) return false;
    }
    await jobAction(job, 'reorder', { before: before?.id ?? null, priority }, 'Moving');
    return true;
  }

  /** Puts the keyboard focus back on a moved row's button (the row moved
   *  in the list, which drops focus); the other direction's button when
   *  this one is now disabled at the end of the queue. */
  function refocus(jobId, cls) {
    const li = queuedList.querySelector(`li[data-job="${jobId}"]`);
    const other = cls === 'act-up' ? 'act-down' : 'act-up';
    const b = li?.querySelector(`.${cls}:not(:disabled)`) ?? li?.querySelector(`.${other}`);
    b?.focus();
  }

  let dragged = null;
  function jobRow(job) {
    const li = h('li', { class: 'jobrow', 'data-job': job.id });
    const title = h('a', { class: 'title', href: `#/job/${job.id}` });
    const badge = h('span', { class: 'badge' });
    const meta = h('div', { class: 'meta' });
    const bar = h('progress', { max: 100, value: 0, 'aria-label': `Progress of job ${job.id}` });
    const actions = h('div', { class: 'actions' });
    li.append(title, badge, meta, bar, actions);
    li.addEventListener('dragstart', (e) => {
      dragged = li._job;
      li.classList.add('dragging');
      e.dataTransfer.effectAllowed = 'move';
      e.dataTransfer.setData('text/plain', String(li._job.id));
    });
    li.addEventListener('dragend', () => {
      li.classList.remove('dragging');
      dragged = null;
    });
    li.addEventListener('dragover', (e) => {
      if (!dragged || dragged.id === li._job.id || li._job.state !== 'queued') return;
      e.preventDefault();
      li.classList.add('drop-before');
    });
    li.addEventListener('dragleave', () => li.classList.remove('drop-before'));
    li.addEventListener('drop', (e) => {
      li.classList.remove('drop-before');
      if (!dragged || dragged.id === li._job.id) return;
      e.preventDefault();
      moveBefore(dragged, li._job, null);
    });
    return li;
  }

  function updateRow(li, job, ctx) {
    li._job = job;
    li.dataset.state = job.state;
    li.draggable = job.state === 'queued';
    const [title, badge, meta, bar, actions] = li.children;
    setText(title, `#${job.id} ${job.name}${job.copies > 1 ? ` (${job.copy}/${job.copies})` : ''}`);
    setText(badge, jobStateLabel(job.state));
    const where = job.assigned_machine ?? job.machine_id;
    const whereText = where ? machineLabel(app, where) : (job.kind ? `any ${job.kind}` : 'any machine');
    const parts = [`on ${whereText}`];
    if (job.priority) parts.push(`priority ${job.priority}`);
    if (job.tags.length) parts.push(`tags ${job.tags.join(', ')}`);
    if (job.state === 'running' || job.state === 'paused') {
      parts.push(`${fmtPercent(job.progress.percent)}`, `elapsed ${fmtDuration(job.progress.elapsed_seconds)}`);
      if (job.progress.eta_seconds != null) parts.push(`ETA ${fmtDuration(job.progress.eta_seconds)}`);
    }
    if (job.ended_ms) parts.push(`ended ${fmtTime(job.ended_ms)}`);
    if (job.failure) parts.push(`— ${job.failure.reason}${job.failure.line ? ` (line ${job.failure.line})` : ''}`);
    setText(meta, parts.join(' · '));
    bar.hidden = !job.state.match(/^(running|paused|assigned)$/);
    bar.value = job.progress.percent ?? 0;

    // Buttons are rebuilt only when the set of actions changes.
    const want = [];
    if (job.state === 'running') want.push('pause');
    if (job.state === 'paused') want.push('resume');
    if (job.state === 'queued') want.push('up', 'down');
    if (job.state === 'queued' || job.state === 'running' || job.state === 'paused' || job.state === 'assigned') want.push('cancel');
    if (['completed', 'failed', 'cancelled', 'interrupted'].includes(job.state)) want.push('requeue');
    const sig = want.join(',') + `|${ctx.first}|${ctx.last}`;
    if (actions.dataset.sig === sig) return;
    actions.dataset.sig = sig;
    const b = (cls, text, label, fn, disabled = false) =>
      h('button', { type: 'button', class: `small ${cls}`, 'aria-label': `${label} job ${job.id}`, onclick: fn, disabled }, text);
    fill(actions, want.map((w) => {
      const j = () => li._job;
      switch (w) {
        case 'pause': return b('act-pause', 'Pause', 'Pause', () => jobAction(j(), 'pause', undefined, 'Pausing'));
        case 'resume': return b('act-resume primary', 'Resume', 'Resume', () => jobAction(j(), 'resume', undefined, 'Resuming'));
        case 'up': return b('act-up', '↑ Move up', 'Move up', async () => {
          const q = queued();
          const i = q.findIndex((x) => x.id === j().id);
          if (i > 0) await moveBefore(j(), q[i - 1], null);
          refocus(job.id, 'act-up');
        }, ctx.first);
        case 'down': return b('act-down', '↓ Move down', 'Move down', async () => {
          const q = queued();
          const i = q.findIndex((x) => x.id === j().id);
          if (i >= 0 && i < q.length - 1) await moveBefore(j(), q[i + 2] ?? null, q[q.length - 1]);
          refocus(job.id, 'act-down');
        }, ctx.last);
        case 'cancel': return b('act-cancel', 'Cancel…', 'Cancel', async () => {
          if (await app.confirm(`Cancel job #${j().id} “${j().name}”?`, 'Cancel job')) jobAction(j(), 'cancel', undefined, 'Cancelling');
        });
        case 'requeue': return b('act-requeue', 'Requeue', 'Requeue', () => jobAction(j(), 'requeue', undefined, 'Requeueing'));
        default: return null;
      }
    }));
  }

  const queued = () => app.state.jobs.filter((j) => j.state === 'queued');

  // Two columns on a desktop (adding on the left, the queue on the right);
  // on a phone one column that starts with what runs and waits, then the
  // upload form, then the history.
  const el = h('div', { class: 'queue-layout' },
    h('div', { class: 'queue-col' },
      h('section', { class: 'panel q-add', 'aria-labelledby': 'add-h' },
        h('h2', { id: 'add-h' }, 'Add a job'), drop, uploadErr, storedBox, storedErr, storedOk),
      h('div', { class: 'q-analysis' }, analysisSlot)),
    h('div', { class: 'queue-col' },
      h('section', { class: 'panel q-queue', id: 'queue-panel', 'aria-labelledby': 'queue-h' },
        h('h2', { id: 'queue-h' }, 'Queue'),
        listErr,
        h('h3', {}, 'Running'), noActive, activeList,
        h('h3', {}, 'Waiting'),
        h('p', { class: 'muted small' }, 'Drag to reorder, or use Move up / Move down.'),
        noQueued, queuedList),
      h('section', { class: 'panel q-ended', 'aria-labelledby': 'ended-h' },
        h('h2', { id: 'ended-h' }, 'Recently ended'), noEnded, endedList, olderList,
        h('div', { class: 'actions' }, olderBtn), olderNote)));

  let storedSig = '';
  return {
    el,
    title: 'Queue',
    update() {
      const jobs = app.state.jobs;
      const active = jobs.filter((j) => ['assigned', 'running', 'paused'].includes(j.state));
      const q = queued();
      const ended = jobs.filter((j) => ['completed', 'failed', 'cancelled', 'interrupted'].includes(j.state)).slice(0, RECENT);
      noActive.hidden = active.length > 0;
      noQueued.hidden = q.length > 0;
      noEnded.hidden = ended.length > 0;
      olderBtn.hidden = olderDone || ended.length < RECENT;
      const row = (ctx) => (li, j) => updateRow(li, j, ctx(j));
      reconcile(activeList, active, (j) => j.id, jobRow, row(() => ({})));
      reconcile(queuedList, q, (j) => j.id, jobRow,
        row((j) => ({ first: q[0]?.id === j.id, last: q[q.length - 1]?.id === j.id })));
      reconcile(endedList, ended, (j) => j.id, jobRow, row(() => ({})));

      const sig = app.state.files.map((f) => f.id).join();
      if (sig !== storedSig) {
        storedSig = sig;
        const keep = stored.value;
        fill(stored, app.state.files.length
          ? app.state.files.map((f) => h('option', { value: f.id }, `${f.name} (${fmtBytes(f.size)})`))
          : h('option', { value: '' }, 'No files yet'));
        if (keep) stored.value = keep;
        storedBox.hidden = app.state.files.length === 0;
      }
    },
  };
}
