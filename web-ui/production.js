// The Production view (#/production): APC verdicts with their reports,
// OEE components and good units per hour over time against the
// thresholds, production orders with progress, the QC queue (pass or fail
// with a reason in one or two taps, made for a phone at the machine) and
// the loss Pareto. Everything comes from /api/v1 and is read again every
// few seconds while the view is open; units are made by the daemon's log
// reader, which sends no live event.

import { api } from './api.js';
import { h, fill, setText, reconcile, fmtTime, fmtDuration } from './dom.js';

const REFRESH_MS = 5000;
/** Reasons offered for a failed unit (codes the API accepts). */
const FAIL_REASONS = [
  ['warping', 'Warping'], ['layer_shift', 'Layer shift'], ['stringing', 'Stringing'],
  ['dimensions', 'Out of tolerance'], ['surface', 'Surface'], ['other', 'Other'],
];
const COMPONENTS = [
  ['availability', 'Availability', 'availability_min', 'c0'],
  ['effectiveness', 'Effectiveness', 'effectiveness_min', 'c1'],
  ['quality_ratio', 'Quality', 'quality_ratio_min', 'c2'],
  ['oee', 'OEE', 'oee_min', 'c3'],
];

const pct = (v) => (v == null ? '–' : `${(v * 100).toFixed(1)} %`);
const verdictText = { pass: 'Pass', fail: 'Fail', insufficient_data: 'Insufficient data' };

/** A line chart of `series` points ([{figures}]) for `lines`, y in 0..top;
 *  thresholds dashed. Hand-written SVG like chart.js. */
function lineChart(label, points, lines, top) {
  const W = 600, H = 180, L = 40, R = 10, T = 10, B = 20;
  const n = points.length;
  const X = (i) => L + (n > 1 ? i / (n - 1) : 0.5) * (W - L - R);
  const Y = (v) => T + (1 - Math.min(Math.max(v / top, 0), 1)) * (H - T - B);
  const els = [
    h('svg:line', { class: 'grid', x1: L, x2: W - R, y1: Y(0), y2: Y(0) }),
    h('svg:line', { class: 'grid', x1: L, x2: W - R, y1: Y(top), y2: Y(top) }),
    h('svg:text', { class: 'axis', x: L - 6, y: Y(top) + 4, 'text-anchor': 'end' }, String(top)),
    h('svg:text', { class: 'axis', x: L - 6, y: Y(0) + 4, 'text-anchor': 'end' }, '0'),
  ];
  for (const l of lines) {
    const pts = points.map((p, i) => (l.get(p) == null ? null : `${X(i).toFixed(1)},${Y(l.get(p)).toFixed(1)}`))
      .filter(Boolean).join(' ');
    if (pts) els.push(h('svg:polyline', { class: `actual ${l.cls}`, points: pts }));
    if (l.threshold != null) {
      els.push(h('svg:line', { class: `target ${l.cls}`, x1: L, x2: W - R, y1: Y(l.threshold), y2: Y(l.threshold) }));
    }
  }
  return h('figure', { class: 'prod-chart' },
    h('svg:svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label }, els),
    h('figcaption', {}, h('ul', { class: 'legend' }, lines.map((l) =>
      h('li', {}, h('span', { class: `sw ${l.cls}` }),
        l.threshold != null ? `${l.name} (dashed: ${l.threshold})` : l.name)))));
}

function verdictCard(r, report) {
  const threshold = (key) => r.criteria.find((c) => c.key === key)?.threshold ?? null;
  const href = `/api/v1/apc/${encodeURIComponent(r.sku)}/${encodeURIComponent(r.class)}/report?format=html`;
  const points = report?.series ?? [];
  const perHour = points.map((p) => p.figures.good_units_per_planned_hour ?? 0);
  const top = Math.ceil(Math.max(1, threshold('good_units_per_planned_hour_min') ?? 0, ...perHour));
  return h('article', { class: 'panel verdict', 'data-verdict': r.verdict },
    h('h3', {}, `${r.sku} on ${r.class} `,
      h('span', { class: `badge v-${r.verdict}` }, verdictText[r.verdict] ?? r.verdict)),
    h('p', { class: 'small muted' },
      `${r.units_produced} of ${r.min_units} units, ${r.planned_hours.toFixed(1)} of ${r.min_planned_hours} planned hours. `,
      h('a', { href, target: '_blank', rel: 'noopener', class: 'report-link' }, 'Certification report'), ' (',
      h('a', { href: href.replace('format=html', 'format=pdf'), target: '_blank', rel: 'noopener', class: 'report-pdf' }, 'PDF'), ')'),
    h('ul', { class: 'criteria small' }, r.criteria.map((c) =>
      h('li', { 'data-status': c.status },
        `${c.key}: ${c.measured == null ? '–' : c.measured.toFixed(3)} (threshold ${c.threshold}) — ${c.status.replace('_', ' ')}`))),
    points.length ? lineChart(`${r.sku}: OEE components over the window`, points,
      COMPONENTS.map(([k, name, key, cls]) => ({ name, cls, threshold: threshold(key), get: (p) => p.figures[k] })), 1) : null,
    points.length ? lineChart(`${r.sku}: good units per planned hour`, points,
      [{ name: 'Good units / planned hour', cls: 'c0', threshold: threshold('good_units_per_planned_hour_min'), get: (p) => p.figures.good_units_per_planned_hour }], top) : null);
}

function orderRow(o) {
  const p = o.progress;
  return h('li', { class: 'order' },
    h('div', { class: 'order-head' }, h('strong', {}, `#${o.id} ${o.sku}`), ' ',
      h('span', { class: `badge o-${o.state}` }, o.state)),
    h('progress', { max: p.ordered, value: Math.min(p.good, p.ordered), 'aria-label': `order ${o.id}: ${p.good} of ${p.ordered} good` }),
    h('p', { class: 'small muted' },
      `${p.good} of ${p.ordered} good · ${p.produced} produced · ${p.scrap} scrap · ${p.awaiting_qc} awaiting QC · ${p.in_progress} in progress`));
}

/** A loss row's words: "unplanned down: fault". */
const spaced = (code) => String(code).replaceAll('_', ' ');

export function productionView(app) {
  const status = h('p', { class: 'error', role: 'alert', id: 'prod-error' });
  const verdicts = h('div', { id: 'verdicts', class: 'verdicts' });
  const orders = h('ul', { id: 'orders', class: 'orders' });
  const qcList = h('ul', { id: 'qc-queue', class: 'qc-queue' });
  const qcEmpty = h('p', { class: 'muted', id: 'qc-empty' }, 'Nothing waits for inspection.');
  const downtime = h('ol', { id: 'pareto-downtime', class: 'pareto' });
  const scrap = h('ol', { id: 'pareto-scrap', class: 'pareto' });
  const el = h('section', { id: 'production', 'aria-labelledby': 'production-h' },
    h('h2', { id: 'production-h' }, 'Production'), status,
    h('section', { class: 'panel', 'aria-labelledby': 'qc-h' }, h('h3', { id: 'qc-h' }, 'QC queue'), qcEmpty, qcList),
    h('section', { 'aria-labelledby': 'apc-h' }, h('h3', { id: 'apc-h' }, 'Admissible Performance Criteria'), verdicts),
    h('section', { class: 'panel', 'aria-labelledby': 'orders-h' }, h('h3', { id: 'orders-h' }, 'Production orders'), orders),
    h('section', { class: 'panel', 'aria-labelledby': 'losses-h' }, h('h3', { id: 'losses-h' }, 'Losses (last 24 hours)'),
      h('div', { class: 'pareto-grid' },
        h('div', {}, h('h4', {}, 'Downtime by reason'), downtime),
        h('div', {}, h('h4', {}, 'Scrap by reason'), scrap))));

  let timer = null;
  let busy = false;

  async function inspect(serial, result, reason, row) {
    for (const b of row.querySelectorAll('button, select')) b.disabled = true;
    try {
      await api('POST', `/units/${encodeURIComponent(serial)}/qc`, reason ? { result, reason } : { result });
      row.remove();
      qcEmpty.hidden = qcList.children.length > 0;
      refresh();
    } catch (e) {
      setText(status, `${serial}: ${e.message}`);
      for (const b of row.querySelectorAll('button, select')) b.disabled = false;
    }
  }

  function qcRow(u) {
    const reason = h('select', { 'aria-label': `Reason ${u.serial} failed` },
      FAIL_REASONS.map(([v, t]) => h('option', { value: v }, t)));
    const row = h('li', { class: 'qc-item' },
      h('div', {}, h('strong', { class: 'serial' }, u.serial), ' ', h('span', { class: 'muted small' },
        `${u.sku} · ${u.machine_id} · ${fmtTime(u.ended_ms)}`)),
      h('div', { class: 'qc-actions' },
        h('button', { type: 'button', class: 'primary big qc-pass', onclick: () => inspect(u.serial, 'pass', null, row) }, 'Pass'),
        reason,
        h('button', { type: 'button', class: 'danger big qc-fail', onclick: () => inspect(u.serial, 'fail', reason.value, row) }, 'Fail')));
    return row;
  }

  /** The loss Paretos of the last 24 hours from GET /metrics/losses
   *  (sorted, with shares, by the daemon). */
  async function losses() {
    const now = Date.now();
    const l = await api('GET', `/metrics/losses?from=${now - 24 * 3600 * 1000}&to=${now}`);
    const show = (list, items, empty) => {
      if (!items.length) {
        fill(list, h('li', { class: 'muted small empty' }, empty));
        return;
      }
      list.querySelector('.empty')?.remove();
      reconcile(list, items, (x) => x.name,
        () => h('li', {}, h('span', { class: 'name' }), h('span', { class: 'bar' }), h('span', { class: 'value small muted' })),
        (li, x) => {
          setText(li.querySelector('.name'), x.name);
          li.querySelector('.bar').style.width = `${(x.share * 100).toFixed(1)}%`;
          setText(li.querySelector('.value'), `${x.amount} · ${(x.cumulative_share * 100).toFixed(0)} % cumulative`);
        });
    };
    show(downtime, l.downtime.map((d) => ({
      name: `${spaced(d.state)}: ${spaced(d.reason)}`, share: d.share, cumulative_share: d.cumulative_share,
      amount: `${fmtDuration(d.ms / 1000)} (${d.element})`,
    })), 'No downtime.');
    show(scrap, l.scrap.map((x) => ({
      name: x.reason, share: x.share, cumulative_share: x.cumulative_share,
      amount: `${x.units} unit${x.units === 1 ? '' : 's'}`,
    })), 'No scrap.');
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const [apc, list, pending] = await Promise.all([
        api('GET', '/apc'), api('GET', '/production-orders'), api('GET', '/units?state=pending'),
      ]);
      reconcile(qcList, pending, (u) => u.serial, qcRow, () => {});
      qcEmpty.hidden = pending.length > 0;
      const reports = await Promise.all(apc.map((r) =>
        api('GET', `/apc/${encodeURIComponent(r.sku)}/${encodeURIComponent(r.class)}/report`).catch(() => null)));
      fill(verdicts, apc.length ? apc.map((r, i) => verdictCard(r, reports[i]))
        : h('p', { class: 'muted' }, 'No criteria are configured: add [apc."<sku>".<class>] tables to the configuration.'));
      fill(orders, list.length ? [...list].reverse().map(orderRow) : h('li', { class: 'muted' }, 'No production orders yet.'));
      await losses();
      setText(status, '');
      el.dataset.loaded = 'true';
    } catch (e) {
      setText(status, e.message);
    } finally {
      busy = false;
    }
  }

  refresh();
  timer = setInterval(refresh, REFRESH_MS);
  return {
    el,
    title: 'Production',
    update() {},
    destroy() { clearInterval(timer); },
  };
}
