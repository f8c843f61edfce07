// Small DOM and formatting helpers. Elements are built with `h` and never
// from HTML strings, so text from files, jobs or firmware can never become
// markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Creates an element. `tag` may be `svg:line` etc. for SVG elements.
 *  Attributes starting with `on` become listeners; `false`/`null` skip. */
export function h(tag, attrs, ...children) {
  const svg = tag.startsWith('svg:');
  const el = svg ? document.createElementNS(SVG_NS, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (!svg && (k === 'value' || k === 'checked' || k === 'disabled' || k === 'hidden')) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Sets text only when it changed (keeps screen readers quiet otherwise). */
export function setText(el, text) {
  const t = text == null ? '' : String(text);
  if (el.textContent !== t) el.textContent = t;
}

/** Keeps `container`'s children in the order of `items`, reusing elements
 *  by key so that focus and in-progress input survive live updates. */
export function reconcile(container, items, key, create, update) {
  const old = new Map();
  for (const child of container.children) if (child.dataset.key) old.set(child.dataset.key, child);
  let cursor = container.firstElementChild;
  for (const item of items) {
    const k = String(key(item));
    let el = old.get(k);
    if (el) old.delete(k);
    else { el = create(item); el.dataset.key = k; }
    update(el, item);
    if (el !== cursor) container.insertBefore(el, cursor);
    else cursor = cursor.nextElementSibling;
  }
  for (const el of old.values()) el.remove();
}

export function fmtDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  if (hh > 0) return `${hh} h ${String(mm).padStart(2, '0')} min`;
  if (mm > 0) return `${mm} min ${String(ss).padStart(2, '0')} s`;
  return `${ss} s`;
}

export function fmtLength(mm) {
  if (mm == null || !Number.isFinite(mm)) return '—';
  return mm >= 1000 ? `${(mm / 1000).toFixed(2)} m` : `${mm.toFixed(0)} mm`;
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function fmtTime(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

/** A time of day (hours and minutes), with the date when not today. */
export function fmtClock(ms) {
  if (!ms) return '—';
  const d = new Date(ms);
  const hm = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return new Date().toDateString() === d.toDateString() ? hm : `${d.toLocaleDateString()} ${hm}`;
}

/** A machine as the queue and job pages name it: its name, with its id
 *  when they differ (cards show names, configuration and API use ids). */
export function machineLabel(app, id) {
  if (id == null) return '—';
  const name = app.state.machines.get(id)?.name;
  return name && name !== id ? `${name} (${id})` : id;
}

export function fmtTemp(v) {
  return v == null || !Number.isFinite(v) ? '—' : `${v.toFixed(1)} °C`;
}

export function fmtPercent(p) {
  return `${Math.floor(Math.max(0, Math.min(100, p ?? 0)))} %`;
}

const JOB_STATES = {
  queued: 'Queued', assigned: 'Starting', running: 'Running', paused: 'Paused',
  completed: 'Completed', failed: 'Failed', cancelled: 'Cancelled', interrupted: 'Interrupted',
};

export function jobStateLabel(s) {
  return JOB_STATES[s] ?? s;
}

export function machineStateLabel(m) {
  switch (m.state) {
    case 'idle': return 'Idle';
    case 'running': return m.kind === 'mill' ? 'Milling' : 'Printing';
    case 'paused': return pauseLabel(m.pause);
    case 'awaiting_clear': return awaitingLabel(m);
    case 'error': return m.kind === 'mill' && (m.status?.state ?? '').startsWith('Alarm')
      ? 'Alarm: check the mill, then unlock'
      : 'Halted: recover it';
    case 'offline': return 'Offline';
    case 'disabled': return 'Disabled';
    default: return m.state;
  }
}

/** Readings are not live: the firmware stopped reporting, or the machine
 *  is not connected (the card keeps the last values, marked). */
export function readingsStale(m) {
  const c = m.status?.connection ?? 'offline';
  return !!m.status?.stale || c === 'offline' || c === 'connecting';
}

/** What to do before pressing Resume, in full, for the card's note. */
export function pauseInstructions(p) {
  if (!p) return '';
  switch (p.kind) {
    case 'tool_change': {
      const tool = p.tool != null ? `tool T${String(p.tool).padStart(2, '0')}` : 'the next tool';
      return `Tool change at line ${p.line}: load ${tool}, zero Z on the work (touch off), `
        + 'keep hands clear of the spindle, then press Resume.';
    }
    case 'program':
      return `The program paused at line ${p.line}: ${p.text}. Do what it asks, then press Resume.`;
    case 'operator': return 'Paused by an operator. Press Resume to go on.';
    default: return '';
  }
}

/** Why a job is paused, and what to do before resuming. */
function pauseLabel(p) {
  if (!p) return 'Paused';
  switch (p.kind) {
    case 'tool_change':
      return p.tool != null
        ? `Paused: load tool T${String(p.tool).padStart(2, '0')}, zero Z, then resume`
        : 'Paused for a tool change: change the tool, zero Z, then resume';
    case 'program': return `Paused by the program: ${p.text}`;
    default: return 'Paused';
  }
}

/** What the machine waits for (the daemon's reason code). */
function awaitingLabel(m) {
  switch (m.reason) {
    case 'interrupted': return 'Job interrupted: clear the bed, or restart it from a line';
    case 'cancelled': return 'Job cancelled: clear the bed';
    case 'failed': return 'Job failed: check the machine, clear the bed';
    case 'halted': return 'Halted: check the machine, then confirm';
    default: return 'Waiting for bed clearance';
  }
}

/** Heater names as operators say them. */
export function heaterLabel(name) {
  if (name === 'B') return 'Bed';
  if (name === 'C') return 'Chamber';
  if (/^T\d*$/.test(name)) return name === 'T' || name === 'T0' ? 'Nozzle' : `Nozzle ${name.slice(1)}`;
  return name;
}
