// What needs the operator now: the daemon's attention list
// (`GET /attention`, one rule on the server), shown at the top of the
// Machines view and on its own page, counted in the header and the tab
// title. New items can ring and raise a browser notification, if the
// operator turns that on (a setting of this browser, kept in localStorage).

import { api } from './api.js';
import { h, setText, reconcile, fmtTime } from './dom.js';

const NOTIFY_KEY = 'microfactory.notify';

const KIND_TEXT = {
  faulted: 'Halted', paused: 'Paused', job_failed: 'Job failed', awaiting_operator: 'Waiting for you',
  offline: 'Offline', awaiting_qc: 'Inspection',
};

export function notifyEnabled() {
  try {
    return localStorage.getItem(NOTIFY_KEY) === '1';
  } catch {
    return false;
  }
}

function setNotify(on) {
  try {
    if (on) localStorage.setItem(NOTIFY_KEY, '1'); else localStorage.removeItem(NOTIFY_KEY);
  } catch {
    // private mode: the toggle lasts as long as the page
  }
}

/** A short two-tone chime, made on the spot (no sound file to fetch). */
function chime() {
  try {
    const ctx = new AudioContext();
    const at = ctx.currentTime;
    for (const [i, f] of [880, 660].entries()) {
      const o = ctx.createOscillator();
      const g = ctx.createGain();
      o.frequency.value = f;
      g.gain.setValueAtTime(0.15, at + i * 0.18);
      g.gain.exponentialRampToValueAtTime(0.001, at + i * 0.18 + 0.16);
      o.connect(g).connect(ctx.destination);
      o.start(at + i * 0.18);
      o.stop(at + i * 0.18 + 0.17);
    }
    setTimeout(() => ctx.close(), 1000);
  } catch (e) {
    console.warn('chime:', e.message);
  }
}

/** Called with the previous and the new list: announces the new items. */
export function announce(before, after) {
  if (!before || !notifyEnabled()) return;
  const old = new Set(before.map((i) => i.key));
  const fresh = after.filter((i) => !old.has(i.key));
  if (!fresh.length) return;
  // How many items were announced: for people reading the page's state.
  const root = document.documentElement;
  root.dataset.announced = String(Number(root.dataset.announced ?? 0) + fresh.length);
  chime();
  if ('Notification' in window && Notification.permission === 'granted') {
    for (const i of fresh.slice(0, 3)) {
      try {
        new Notification(i.title, { body: i.action, tag: i.key });
      } catch (e) {
        console.warn('notification:', e.message);
      }
    }
  }
}

function itemLink(i) {
  if (i.job_id != null && i.kind === 'job_failed') return `#/job/${i.job_id}`;
  if (i.machine_id) return `#/machine/${encodeURIComponent(i.machine_id)}`;
  return null;
}

/** The attention panel; `update()` refreshes it from `app.state.attention`. */
export function attentionPanel(app, { hideWhenEmpty = false } = {}) {
  const list = h('ul', { class: 'attention-list', id: 'attention-list', 'aria-label': 'Needs you now, most urgent first' });
  const empty = h('p', { class: 'empty', id: 'attention-empty' }, 'Nothing needs you now.');
  const toggle = h('input', { type: 'checkbox', id: 'attention-notify' });
  const toggleNote = h('span', { class: 'muted small', role: 'status', id: 'attention-notify-note' });
  toggle.addEventListener('change', async () => {
    setNotify(toggle.checked);
    setText(toggleNote, '');
    if (toggle.checked && 'Notification' in window && Notification.permission === 'default') {
      const p = await Notification.requestPermission().catch(() => 'denied');
      if (p !== 'granted') setText(toggleNote, 'Sound only: this browser does not allow notifications here.');
    }
    if (toggle.checked) chime();
  });
  const heading = h('h2', { id: 'attention-h' }, 'Needs you now ', h('span', { class: 'count', id: 'attention-h-count' }));
  const el = h('section', { class: 'panel attention', id: 'attention', 'aria-labelledby': 'attention-h' },
    h('div', { class: 'card-head' }, heading,
      h('label', { class: 'check small', for: 'attention-notify' }, toggle, h('span', {}, 'Sound and notification for new items'))),
    toggleNote, empty, list);

  // A failed job is the operator's to acknowledge: once seen, it goes
  // (a machine that holds for it still asks for its own confirmation).
  async function dismiss(li, button, error) {
    const id = li.dataset.job;
    if (!id) return;
    button.disabled = true;
    setText(error, '');
    try {
      await api('POST', `/jobs/${encodeURIComponent(id)}/acknowledge`);
      app.state.attention = (app.state.attention ?? []).filter((i) => i.key !== li.dataset.key);
      app.changed();
    } catch (e) {
      setText(error, `Dismiss failed: ${e.message}`);
      button.disabled = false;
    }
  }
  function row(i) {
    const error = h('p', { class: 'error small', role: 'alert' });
    const button = h('button', { type: 'button', class: 'small act-dismiss' }, 'Dismiss');
    const li = h('li', { class: 'attention-item' },
      h('span', { class: 'badge' }), h('a', { class: 'title' }), h('span', { class: 'title-text' }),
      h('p', { class: 'action small' }), h('span', { class: 'since muted small' }), button, error);
    button.addEventListener('click', () => dismiss(li, button, error));
    return li;
  }
  function fillRow(li, i) {
    const [badge, link, text, action, since, button] = li.children;
    button.hidden = !(i.kind === 'job_failed' && i.job_id != null);
    button.setAttribute('aria-label', `Dismiss: ${i.title}`);
    li.dataset.kind = i.kind;
    li.dataset.state = { faulted: 'error', paused: 'paused', job_failed: 'failed', awaiting_operator: 'awaiting_clear', offline: 'offline', awaiting_qc: 'queued' }[i.kind] ?? '';
    if (i.machine_id) li.dataset.machine = i.machine_id; else delete li.dataset.machine;
    if (i.job_id != null) li.dataset.job = String(i.job_id); else delete li.dataset.job;
    setText(badge, KIND_TEXT[i.kind] ?? i.kind);
    const href = itemLink(i);
    link.hidden = !href;
    text.hidden = !!href;
    if (href) { link.setAttribute('href', href); setText(link, i.title); } else setText(text, i.title);
    setText(action, i.action);
    setText(since, i.since_ms ? `since ${fmtTime(i.since_ms)}` : '');
  }

  return {
    el,
    update() {
      const items = app.state.attention ?? [];
      toggle.checked = notifyEnabled();
      el.hidden = hideWhenEmpty && items.length === 0;
      empty.hidden = items.length > 0;
      setText(heading.lastChild, items.length ? String(items.length) : '');
      reconcile(list, items, (i) => i.key, row, fillRow);
    },
  };
}

/** The attention list on a page of its own (`#/attention`). */
export function attentionView(app) {
  const panel = attentionPanel(app);
  return { el: panel.el, title: 'Needs you', update: () => panel.update() };
}
