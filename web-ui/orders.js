// The Orders view (#/orders): storefront orders by state, each with what
// to do next and the button that does it (picked, packed, print the label,
// shipped), the units reserved for it, the packing slip, a pick list of
// every order waiting to be picked, finished-goods levels per SKU with
// their trend, the webhook receivers with their delivery status, and the
// fulfillment-order pings Shopify sent.
// Everything comes from /api/v1, read again every few seconds while the
// view is open: orders and stock change through the daemon's log reader,
// which sends no live event. The trend is read from the durable log
// (`stock_changed` records), only the records after the last one seen.

import { api, apiWithHeader } from './api.js';
import { h, fill, setText, reconcile, fmtTime } from './dom.js';

const REFRESH_MS = 4000;
/** Log records read per request, and at most this many back on opening. */
const LOG_CHUNK = 1000;
const LOG_BACK = 5000;
/** Points kept per SKU for its trend. */
const TREND_POINTS = 60;

/** Open states in the order work flows, each with what to do next. */
const OPEN = [
  ['allocated', 'To pick', 'Take the units below from the shelf, then press Picked.'],
  ['picked', 'To pack', 'Put the units in a parcel with the packing slip, then press Packed.'],
  ['packed', 'To label', 'Print the shipping label (it opens as a PDF) and stick it on the parcel.'],
  ['labelled', 'To ship', 'Hand the parcel to the carrier, then press Shipped.'],
  ['received', 'Waiting for stock', 'Nothing to do: units are reserved as they pass QC.'],
  ['on_hold', 'On hold', 'Release it to carry on where it stopped.'],
];
const DONE = ['shipped', 'returned', 'cancelled'];
/** Finished orders listed (the newest). */
const DONE_SHOWN = 20;

const STATE_TEXT = {
  received: 'Received', allocated: 'Allocated', picked: 'Picked', packed: 'Packed',
  labelled: 'Labelled', shipped: 'Shipped', on_hold: 'On hold', cancelled: 'Cancelled', returned: 'Returned',
};

const doc = (path) => `/api/v1${path}`;
const enc = encodeURIComponent;

function serialsOf(o) {
  return o.lines.flatMap((l) => l.allocated);
}

/** A small SVG line of `values` (no axes): the shape of the trend. */
function sparkline(label, values) {
  const W = 120, H = 28;
  if (values.length < 2) return h('span', { class: 'muted small trend-none' }, values.length ? 'one change' : '—');
  const lo = Math.min(0, ...values), hi = Math.max(1, ...values);
  const pts = values.map((v, i) =>
    `${(i / (values.length - 1) * (W - 4) + 2).toFixed(1)},${(H - 2 - (v - lo) / (hi - lo) * (H - 4)).toFixed(1)}`).join(' ');
  return h('svg:svg', { class: 'trend', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': label },
    h('svg:polyline', { points: pts }));
}

export function ordersView(app) {
  const status = h('p', { class: 'error', role: 'alert', id: 'orders-error' });
  const groups = h('div', { id: 'order-groups' });
  const pick = h('div', { id: 'picklist' });
  const inventory = h('tbody', { id: 'inventory-rows' });
  const hooks = h('tbody', { id: 'webhook-rows' });
  const done = h('ul', { id: 'orders-done', class: 'sales-orders' });
  const doneNone = h('p', { class: 'muted' }, 'No order has shipped or been cancelled yet.');
  const pings = h('ul', { id: 'shopify-notifications', class: 'pings small' });
  const pingsPanel = h('section', { class: 'panel', 'aria-labelledby': 'pings-h', hidden: true },
    h('h3', { id: 'pings-h' }, 'Shopify notifications'),
    h('p', { class: 'small muted' }, 'Shopify asks for these fulfillment orders to be accepted; '
      + 'the orders themselves arrive through the storefront API.'), pings);
  const el = h('section', { id: 'orders-view', 'aria-labelledby': 'orders-view-h' },
    h('h2', { id: 'orders-view-h' }, 'Orders'), status,
    groups,
    h('section', { class: 'panel', 'aria-labelledby': 'pick-h' }, h('h3', { id: 'pick-h' }, 'Pick list'),
      h('p', { class: 'small muted' }, 'Every order waiting to be picked, by product, oldest units first.'), pick),
    h('section', { class: 'panel', 'aria-labelledby': 'inv-h' }, h('h3', { id: 'inv-h' }, 'Finished goods'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'inventory' },
        h('thead', {}, h('tr', {}, h('th', {}, 'SKU'), h('th', { class: 'num' }, 'On hand'),
          h('th', { class: 'num' }, 'Committed'), h('th', { class: 'num' }, 'Unavailable'),
          h('th', { class: 'num' }, 'Available'), h('th', {}, 'Available over time'))),
        inventory))),
    h('section', { class: 'panel', 'aria-labelledby': 'hooks-h' }, h('h3', { id: 'hooks-h' }, 'Webhook receivers'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'webhooks' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Receiver'), h('th', {}, 'Status'), h('th', { class: 'num' }, 'Waiting'),
          h('th', {}, 'Last delivered'), h('th', {}, ''))),
        hooks))),
    pingsPanel,
    h('section', { class: 'panel', 'aria-labelledby': 'done-h' }, h('h3', { id: 'done-h' }, 'Recently finished'), doneNone, done));

  let timer = null;
  let busy = false;
  /** sku -> [available, ...] from `stock_changed` log records. */
  const trend = new Map();
  let logSeq = null;

  /** Runs an action from a button: disabled while it runs, errors shown. */
  async function act(button, what, fn) {
    button.disabled = true;
    try {
      await fn();
      setText(status, '');
      await refresh();
    } catch (e) {
      setText(status, `${what}: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  /** Creates the order's shipment and opens its label. The tab is opened
   *  within the click, before the request, so no pop-up blocker stops it. */
  function printLabel(o, button) {
    const tab = window.open('', '_blank');
    return act(button, `Order ${o.id}`, async () => {
      try {
        const sh = await api('POST', `/orders/${o.id}/shipments`, {});
        const url = doc(`/shipments/${sh.id}/label.pdf`);
        if (tab) tab.location.href = url;
        el.dataset.lastLabel = url;
      } catch (e) {
        tab?.close();
        throw e;
      }
    });
  }

  function post(button, o, path) {
    return act(button, `Order ${o.id}`, () => api('POST', path, {}));
  }

  function orderItem(o) {
    const li = h('li', { class: 'sales-order', 'data-state': o.state });
    li.append(h('div', { class: 'so-head' },
      h('strong', {}, `#${o.id} ${o.channel}/${o.external_id}`), ' ',
      h('span', { class: `badge so-${o.state}` }, STATE_TEXT[o.state] ?? o.state),
      h('span', { class: 'muted small' }, ` · ${o.ship_to.name}, ${o.ship_to.city} ${o.ship_to.country} · ${o.service} · ${fmtTime(o.created_ms)}`)));
    li.append(h('ul', { class: 'so-lines small' }, o.lines.map((l) => {
      const short = l.quantity - l.allocated.length - l.shipped.length - (l.returned?.length ?? 0);
      return h('li', {}, h('code', {}, l.sku), ` × ${l.quantity}`,
        l.allocated.length ? [' — ', h('span', { class: 'serials' }, l.allocated.join(', '))] : null,
        l.shipped.length ? h('span', { class: 'muted' }, ` (shipped ${l.shipped.join(', ')})`) : null,
        short > 0 && !DONE.includes(o.state) ? h('span', { class: 'warn' }, ` ${short} short`) : null);
    })));
    const actions = h('div', { class: 'actions' });
    const button = (cls, text, onclick, primary = false) =>
      h('button', { type: 'button', class: `${cls}${primary ? ' primary' : ''}`, onclick: (e) => onclick(e.currentTarget) }, text);
    const link = (cls, text, href) => h('a', { class: `button ${cls}`, href, target: '_blank', rel: 'noopener' }, text);
    switch (o.state) {
      case 'allocated':
        actions.append(button('so-pick', 'Picked', (b) => post(b, o, `/orders/${o.id}/pick`), true));
        break;
      case 'picked':
        actions.append(button('so-pack', 'Packed', (b) => post(b, o, `/orders/${o.id}/pack`), true));
        break;
      case 'packed':
        actions.append(button('so-label', 'Print label', (b) => printLabel(o, b), true));
        break;
      case 'on_hold':
        actions.append(button('so-release', 'Release', (b) => post(b, o, `/orders/${o.id}/release`)));
        break;
      default:
        break;
    }
    for (const sh of o.shipment_records.filter((s) => s.state === 'labelled')) {
      actions.append(h('span', { class: 'shipment', 'data-shipment': sh.id },
        link('so-label-pdf', `Label ${sh.number}`, doc(`/shipments/${sh.id}/label.pdf`)),
        link('so-label-zpl', 'ZPL', doc(`/shipments/${sh.id}/label.zpl`)),
        button('so-ship', 'Shipped', (b) => act(b, `Shipment ${sh.number}`, () => api('POST', `/shipments/${sh.id}/ship`, {})), true)));
    }
    if (serialsOf(o).length && !DONE.includes(o.state)) {
      actions.append(link('so-slip', 'Packing slip', doc(`/orders/${o.id}/packing-slip.pdf`)));
    }
    if (['received', 'allocated', 'picked', 'packed'].includes(o.state)) {
      actions.append(button('so-hold', 'Hold', (b) => post(b, o, `/orders/${o.id}/hold`)));
    }
    if (!DONE.includes(o.state)) {
      actions.append(button('so-cancel danger', 'Cancel', async (b) => {
        if (await app.confirm(`Cancel order ${o.id} (${o.channel}/${o.external_id})? Its units go back to stock.`, 'Cancel order')) {
          await post(b, o, `/orders/${o.id}/cancel`);
        }
      }));
    }
    if (actions.children.length) li.append(actions);
    return li;
  }

  /** Orders re-render when their record changed (a button keeps focus
   *  otherwise). */
  const show = (list, items) => reconcile(list, items, (o) => o.id, () => h('li'), (li, o) => {
    const sig = JSON.stringify(o);
    if (li.dataset.sig === sig) return;
    const fresh = orderItem(o);
    li.replaceChildren(...fresh.childNodes);
    li.className = fresh.className;
    li.dataset.state = o.state;
    li.dataset.sig = sig;
  });

  function renderOrders(orders) {
    const byState = new Map();
    for (const o of orders) byState.set(o.state, [...(byState.get(o.state) ?? []), o]);
    reconcile(groups, OPEN.filter(([s]) => byState.has(s)), ([s]) => s, ([s, title, next]) =>
      h('section', { class: 'panel so-group', 'data-group': s, 'aria-labelledby': `so-${s}-h` },
        h('h3', { id: `so-${s}-h` }, title, ' ', h('span', { class: 'count' })),
        h('p', { class: 'small muted next' }, next),
        h('ul', { class: 'sales-orders' })),
    (sec, [s]) => {
      const list = byState.get(s);
      setText(sec.querySelector('.count'), String(list.length));
      show(sec.querySelector('ul'), list);
    });
    if (!groups.children.length) fill(groups, h('p', { class: 'panel muted', id: 'orders-none' }, 'No open orders.'));
    else groups.querySelector('#orders-none')?.remove();
    const finished = orders.filter((o) => DONE.includes(o.state)).slice(-DONE_SHOWN).reverse();
    show(done, finished);
    doneNone.hidden = finished.length > 0;
  }

  async function renderPicklist(orders) {
    const ids = orders.filter((o) => o.state === 'allocated').map((o) => o.id);
    if (!ids.length) {
      fill(pick, h('p', { class: 'muted' }, 'Nothing to pick.'));
      return;
    }
    const list = await api('GET', `/picklist?orders=${ids.slice(0, 200).join(',')}`);
    fill(pick, h('div', { class: 'table-wrap' }, h('table', { id: 'picklist-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'SKU'), h('th', {}, 'Location'), h('th', { class: 'num' }, 'Units'), h('th', {}, 'Serials (order)'))),
      h('tbody', {}, list.items.map((i) => h('tr', { 'data-sku': i.sku },
        h('td', {}, h('code', {}, i.sku), i.name ? h('div', { class: 'small muted' }, i.name) : null),
        h('td', {}, i.location), h('td', { class: 'num' }, String(i.quantity)),
        h('td', { class: 'small' }, i.orders.map((p) => `${p.serials.join(', ')} (#${p.order_id})`).join('; '))))))));
  }

  /** The log's last seq, as `GET /log` says it in `X-Log-Tip`, so the
   *  trend starts near the end. */
  async function logTip() {
    const { value } = await apiWithHeader('/log?limit=0', 'x-log-tip');
    const tip = Number(value);
    if (!Number.isSafeInteger(tip)) throw new Error('The daemon did not say where its log ends.');
    return tip;
  }

  async function readTrend() {
    if (logSeq == null) logSeq = Math.max(0, (await logTip()) - LOG_BACK);
    for (let n = 0; n < LOG_BACK / LOG_CHUNK; n++) {
      const recs = await api('GET', `/log?after=${logSeq}&limit=${LOG_CHUNK}`);
      for (const r of recs) {
        logSeq = r.seq;
        if (r.event.type !== 'stock_changed') continue;
        const list = trend.get(r.event.sku) ?? [];
        list.push(r.event.available);
        if (list.length > TREND_POINTS) list.shift();
        trend.set(r.event.sku, list);
      }
      if (recs.length < LOG_CHUNK) break;
    }
  }

  function renderInventory(items) {
    reconcile(inventory, items, (i) => i.sku, () => h('tr', {},
      h('td', {}, h('code', {})), h('td', { class: 'num' }), h('td', { class: 'num' }), h('td', { class: 'num' }),
      h('td', { class: 'num available' }), h('td', { class: 'trend-cell' })),
    (tr, i) => {
      const td = tr.children;
      setText(td[0].firstChild, i.sku);
      setText(td[1], i.on_hand);
      setText(td[2], i.committed);
      setText(td[3], i.unavailable);
      setText(td[4], i.available);
      const values = trend.get(i.sku) ?? [];
      const sig = values.join(',');
      if (td[5].dataset.sig !== sig) {
        td[5].dataset.sig = sig;
        td[5].dataset.points = String(values.length);
        fill(td[5], sparkline(`${i.sku}: available over its last ${values.length} changes`, values));
      }
    });
    if (!items.length) fill(inventory, h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No finished goods yet.')));
  }

  function renderHooks(list) {
    reconcile(hooks, list, (r) => r.id, () => h('tr'), (tr, r) => {
      const sig = JSON.stringify(r);
      if (tr.dataset.sig === sig) return;
      tr.dataset.sig = sig;
      tr.dataset.state = r.state;
      const enable = r.state === 'disabled'
        ? h('button', { type: 'button', class: 'hook-enable', onclick: (e) =>
          act(e.currentTarget, `Receiver ${r.id}`, () => api('POST', `/webhooks/${enc(r.id)}/enable`, {})) }, 'Re-enable')
        : null;
      fill(tr,
        h('td', {}, h('strong', {}, r.id), h('div', { class: 'small muted' }, h('code', {}, r.url), ` · ${r.topics.join(', ')}`)),
        h('td', {}, h('span', { class: `badge hook-${r.state}` }, r.state === 'disabled' ? 'Disabled' : 'Active'),
          r.consecutive_failures ? h('div', { class: 'small warn' }, `${r.consecutive_failures} failed in a row`) : null,
          r.last_error ? h('div', { class: 'small muted' }, r.last_error) : null),
        h('td', { class: 'num' }, String(r.pending)),
        h('td', { class: 'small' }, fmtTime(r.last_success_ms)),
        h('td', {}, enable));
    });
    if (!list.length) {
      fill(hooks, h('tr', {}, h('td', { colspan: 5, class: 'muted' },
        'No receivers: add [[webhooks]] to the configuration or POST /api/v1/webhooks.')));
    }
  }

  let again = false;

  /** The newest notifications Shopify sent, if any. */
  const PINGS_SHOWN = 10;
  function renderPings(list) {
    pingsPanel.hidden = list.length === 0;
    reconcile(pings, list.slice(0, PINGS_SHOWN), (n) => n.id, (n) => h('li', {},
      h('strong', {}, n.kind ?? 'notification'), ` from ${n.shop} · ${fmtTime(n.received_ms)}`), () => {});
  }

  /** Reads everything; a call while a read runs makes it read once more
   *  (an action's result must show without waiting for the timer). */
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const [orders, inv, receivers, notifications] = await Promise.all([
        api('GET', '/orders'), api('GET', '/inventory'), api('GET', '/webhooks'),
        api('GET', '/shopify/notifications'), readTrend(),
      ]);
      renderOrders(orders);
      renderInventory(inv.items);
      renderHooks(receivers);
      renderPings(notifications);
      await renderPicklist(orders);
      el.dataset.loaded = 'true';
    } catch (e) {
      setText(status, e.message);
    } finally {
      busy = false;
    }
    if (again) {
      again = false;
      await refresh();
    }
  }

  refresh();
  timer = setInterval(refresh, REFRESH_MS);
  return {
    el,
    title: 'Orders',
    update() {},
    destroy() { clearInterval(timer); },
  };
}
