// A small temperature chart drawn as SVG: actual temperatures as solid
// lines, targets dashed, over a fixed time window ending now. Hand-written
// so that the page needs no charting library.

import { h, heaterLabel } from './dom.js';

/** Temperature samples kept per machine for the chart: twenty minutes,
 * what the daemon keeps (`GET /machines/{id}/temperatures`). */
export const HISTORY_MS = 20 * 60 * 1000;

const W = 600, H = 220, L = 40, R = 10, T = 10, B = 24;

/** Renders samples `[{t, heaters:[{name, actual, target}]}]` into `box`. */
export function drawChart(box, samples, maxWindowMs, now = Date.now()) {
  // The time axis spans what has been recorded (at least a minute), up to
  // the full window: a page opened a minute ago shows that minute legibly.
  const first = samples.length ? samples[0].t : now;
  const windowMs = Math.min(maxWindowMs, Math.max(60000, Math.ceil((now - first) / 60000) * 60000));
  const names = [];
  for (const s of samples) for (const x of s.heaters) if (!names.includes(x.name)) names.push(x.name);
  let top = 50;
  for (const s of samples) for (const x of s.heaters) top = Math.max(top, x.actual, x.target);
  top = Math.ceil((top + 10) / 50) * 50;
  const t0 = now - windowMs;
  const X = (t) => L + ((t - t0) / windowMs) * (W - L - R);
  const Y = (v) => T + (1 - v / top) * (H - T - B);

  const grid = [];
  for (let v = 0; v <= top; v += 50) {
    grid.push(h('svg:line', { class: 'grid', x1: L, x2: W - R, y1: Y(v), y2: Y(v) }));
    grid.push(h('svg:text', { class: 'axis', x: L - 6, y: Y(v) + 4, 'text-anchor': 'end' }, v));
  }
  const minutes = Math.round(windowMs / 60000);
  const step = minutes <= 1 ? 0.25 : Math.max(1, Math.round(minutes / 5));
  for (let m = 0; m <= minutes + 1e-9; m += step) {
    const x = X(now - m * 60000);
    const label = m === 0 ? 'now' : m < 1 ? `−${Math.round(m * 60)} s` : `−${m} min`;
    grid.push(h('svg:text', { class: 'axis', x, y: H - 6, 'text-anchor': m === 0 ? 'end' : 'middle' }, label));
  }

  const lines = [];
  names.forEach((name, i) => {
    const pts = (key) => {
      const out = [];
      for (const s of samples) {
        const x = s.heaters.find((y) => y.name === name);
        if (x && s.t >= t0) out.push(`${X(s.t).toFixed(1)},${Y(x[key]).toFixed(1)}`);
      }
      // Hold the last reading up to now: it is still the latest we know.
      const last = samples.findLast((s) => s.heaters.some((y) => y.name === name));
      if (last && out.length) out.push(`${X(now).toFixed(1)},${Y(last.heaters.find((y) => y.name === name)[key]).toFixed(1)}`);
      return out.join(' ');
    };
    lines.push(h('svg:polyline', { class: `target c${i % 4}`, points: pts('target') }));
    lines.push(h('svg:polyline', { class: `actual c${i % 4}`, points: pts('actual') }));
  });

  const latest = samples[samples.length - 1];
  const summary = latest
    ? latest.heaters.map((x) => `${heaterLabel(x.name)} ${x.actual.toFixed(0)} °C, target ${x.target.toFixed(0)} °C`).join('; ')
    : 'no readings yet';
  const svg = h('svg:svg', {
    viewBox: `0 0 ${W} ${H}`, role: 'img', 'data-first': samples.length ? samples[0].t : '', 'aria-label': `Temperatures over the last ${minutes} ${minutes === 1 ? 'minute' : 'minutes'}: ${summary}`,
  }, grid, lines);
  const legend = h('ul', { class: 'legend' }, names.map((name, i) =>
    h('li', {}, h('span', { class: `sw c${i % 4}` }), `${heaterLabel(name)} (dashed: target)`)));
  box.replaceChildren(svg, legend);
}
