// muster fleet console: hash routes over the read-only JSON API.
//
//   #/                        the fleet: coordinator, DNS, clusters, last hour
//   #/clusters/{name}         a cluster's nodes
//   #/nodes/{cluster}/{name}  one node
//
// Every two seconds the page asks the API again and patches what it shows
// in place (`patch`), so sort, filter, focus, selection and scroll survive
// each update. Node data is untrusted text: everything shown is built with
// createElement and textContent, never parsed as HTML.
'use strict';

const POLL_MS = 2000;
const STATES = ['launching', 'deployed', 'unhealthy', 'draining', 'unreachable',
  'stopped', 'terminating', 'terminated', 'failed'];
const SVG_NS = 'http://www.w3.org/2000/svg';
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

// ---- Building and patching the DOM ----

// h('a', {href: '#/'}, 'text', child, [more]): an element. Attributes that
// are null or false are left out, as are children that are null or false.
const h = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
const svg = (tag, attrs, ...kids) => build(document.createElementNS(SVG_NS, tag), attrs, kids);

function build(el, attrs, kids) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value != null && value !== false) el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

// Makes `live`'s children look like `kids`, keeping every node already
// right: an update rewrites only the text and attributes that changed.
function patch(live, ...kids) {
  patchChildren(live, Array.from(build(document.createElement('div'), null, kids).childNodes));
}

function patchChildren(live, want) {
  want.forEach((next, i) => {
    const have = live.childNodes[i];
    if (!have) {
      live.append(next);
    } else if (have.nodeName !== next.nodeName) {
      have.replaceWith(next);
    } else if (next.nodeType === Node.ELEMENT_NODE) {
      for (const a of Array.from(have.attributes)) {
        if (!next.hasAttribute(a.name)) have.removeAttribute(a.name);
      }
      for (const a of Array.from(next.attributes)) {
        if (have.getAttribute(a.name) !== a.value) have.setAttribute(a.name, a.value);
      }
      patchChildren(have, Array.from(next.childNodes));
    } else if (have.nodeValue !== next.nodeValue) {
      have.nodeValue = next.nodeValue;
    }
  });
  while (live.childNodes.length > want.length) live.lastChild.remove();
}

// A titled card appended to `parent`; returns the element its content goes in.
function card(parent, title, id) {
  const body = h('div', { id });
  parent.append(h('section', { class: 'card', 'aria-labelledby': `${id}-title` },
    h('h2', { id: `${id}-title` }, title), body));
  return body;
}

// Label and value pairs; rows whose value is undefined are left out.
function facts(rows) {
  return h('dl', { class: 'facts' }, rows.filter((r) => r && r[1] !== undefined)
    .map(([label, value]) => h('div', {}, h('dt', {}, label),
      h('dd', {}, value == null || value === '' ? dash() : value))));
}

const muted = (...kids) => h('span', { class: 'muted' }, kids);
const code = (text) => h('code', {}, text);
const dash = () => muted('—');
const badge = (state) => h('span', { class: 'badge', 'data-state': state }, state);
const tag = (kind, text) => h('span', { class: `badge ${kind}` }, text);
const problem = (err) => h('p', { class: 'problem', role: 'alert' }, err.message);
const thead = (...titles) => h('thead', {}, h('tr', {}, titles.map((t) => h('th', { scope: 'col' }, t))));
const href = (...parts) => `#/${parts.map(encodeURIComponent).join('/')}`;

// A usage bar (fraction 0 to 1), drawn in SVG: no inline styles.
function bar(frac) {
  const f = Math.max(0, Math.min(1, frac || 0));
  const level = f >= 0.9 ? ' high' : f >= 0.75 ? ' mid' : '';
  return svg('svg', { class: 'bar', width: 64, height: 8, viewBox: '0 0 64 8', 'aria-hidden': 'true' },
    svg('rect', { class: 'bg', width: 64, height: 8, rx: 4 }),
    svg('rect', { class: `fill${level}`, width: (64 * f).toFixed(1), height: 8, rx: 4 }));
}

const usage = (used, total, what) => h('span', { class: 'usage', title: what },
  bar(total ? used / total : 0), total ? `${Math.round((100 * used) / total)} %` : '—');

// ---- Formatting ----

const pad = (n) => String(n).padStart(2, '0');
const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
const stamp = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;

function duration(secs) {
  const s = Math.max(0, Math.floor(secs));
  const [d, hr, m] = [Math.floor(s / 86400), Math.floor((s % 86400) / 3600), Math.floor((s % 3600) / 60)];
  if (d) return `${d} d ${hr} h`;
  if (hr) return `${hr} h ${m} min`;
  if (m) return `${m} min ${s % 60} s`;
  return `${s} s`;
}

function ago(secs) {
  if (secs < 1) return 'just now';
  if (secs < 60) return `${Math.floor(secs)} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return `${Math.floor(secs / 86400)} d ago`;
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

// The coordinator's clock, as /v1/status tells it, so "4 s ago" does not
// depend on this computer's clock being right.
let skew = 0;
const serverNow = () => Date.now() + skew;

// A time, shown relative ("4 s ago") with the exact time as its title.
function when(iso, none = 'never') {
  const t = iso ? Date.parse(iso) : NaN;
  if (Number.isNaN(t)) return muted(none);
  return h('time', { datetime: iso, title: stamp(new Date(t)) }, ago((serverNow() - t) / 1000));
}
const whenUnix = (secs, none) => when(secs == null ? null : new Date(secs * 1000).toISOString(), none);

// The data volume: the disk not mounted on `/`, else `/`.
function dataDisk(f) {
  const disks = (f && f.disks) || [];
  return disks.find((d) => d.mount !== '/') || disks.find((d) => d.mount === '/') || null;
}

// ---- Talking to the API ----

class Offline extends Error {}
let signedIn = true;

async function get(path) {
  let res;
  try {
    res = await fetch(path, { credentials: 'same-origin', cache: 'no-store', headers: { accept: 'application/json' } });
  } catch (e) {
    throw new Offline('connection lost');
  }
  if (res.status === 401) {
    // The session ended (signed out elsewhere, or expired).
    signedIn = false;
    location.assign('/ui/login');
    throw new Error('signed out');
  }
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const message = body && body.error && body.error.message;
    throw new Error(message || `the coordinator answered ${res.status}`);
  }
  return body;
}

// Fetches every path at once; each result is the answer or an Error.
async function getAll(paths) {
  const names = Object.keys(paths);
  const got = await Promise.allSettled(names.map((n) => get(paths[n])));
  return Object.fromEntries(names.map((n, i) => [n, got[i].status === 'fulfilled' ? got[i].value : got[i].reason]));
}

// ---- Polling and routing ----

const main = document.getElementById('main');
const live = document.getElementById('live');
let page = null;
let timer = 0;
let round = 0;
let lastUpdate = null;

async function tick() {
  clearTimeout(timer);
  if (!signedIn || document.hidden) return; // visibilitychange starts it again
  const mine = ++round;
  const shown = page;
  const data = await getAll({ status: '/v1/status', ...shown.paths });
  if (mine !== round || !signedIn) return; // a newer round or another page took over
  const offline = Object.values(data).some((v) => v instanceof Offline);
  main.classList.toggle('stale', offline);
  if (offline) {
    live.className = 'live bad';
    live.textContent = 'connection lost';
    live.title = lastUpdate ? `last updated ${stamp(lastUpdate)}` : '';
  } else {
    lastUpdate = new Date();
    live.className = 'live ok';
    live.textContent = `updated ${clock(lastUpdate)}`;
    live.title = '';
    showStatus(data.status);
    shown.data = data;
    try {
      shown.render(data);
    } catch (e) {
      console.error(e);
    }
  }
  timer = setTimeout(tick, POLL_MS);
}

function showStatus(st) {
  if (st instanceof Error) return;
  document.getElementById('role').textContent = st.role || 'unknown';
  const now = Date.parse(st.started_at) + st.uptime_secs * 1000;
  // Up to a second of rounding; correct only a clock that is clearly off.
  skew = Number.isFinite(now) && Math.abs(now - Date.now()) > 2000 ? now - Date.now() : 0;
}

function route() {
  let parts;
  try {
    parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  } catch (e) {
    parts = [];
  }
  if (parts[0] === 'clusters' && parts.length === 2) return clusterPage(parts[1]);
  if (parts[0] === 'nodes' && parts.length === 3) return nodePage(parts[1], parts[2]);
  return overviewPage();
}

function go() {
  page = route();
  document.title = `${page.title} · muster`;
  const crumbs = [['Fleet', '#/'], ...page.crumbs];
  patch(document.getElementById('crumbs'), crumbs.map(([text, link], i) => h('li', {},
    i === crumbs.length - 1 ? h('span', { 'aria-current': 'page' }, text) : h('a', { href: link }, text))));
  main.replaceChildren();
  page.mount(main);
  window.scrollTo(0, 0);
  tick();
}

// ---- #/ : the fleet ----

function overviewPage() {
  let r;
  return {
    title: 'Fleet',
    crumbs: [],
    paths: { clusters: '/v1/clusters', dns: '/v1/dns/status', history: '/v1/fleet/history' },
    mount(el) {
      el.append(h('h1', {}, 'Fleet'));
      const grid = h('div', { class: 'grid' });
      el.append(grid);
      r = {
        coordinator: card(grid, 'Coordinator', 'coordinator'),
        dns: card(grid, 'DNS', 'dns'),
        clusters: card(el, 'Clusters', 'clusters'),
        history: card(el, 'The last hour', 'history'),
      };
    },
    render(d) {
      patch(r.coordinator, coordinator(d.status));
      patch(r.dns, dnsStatus(d.dns));
      patch(r.clusters, clusterTable(d.clusters));
      patch(r.history, fleetChart(d.history, r.history.clientWidth));
    },
  };
}

function coordinator(st) {
  if (st instanceof Error) return problem(st);
  const ec2 = st.ec2 || {};
  const conn = st.connections || {};
  const started = Date.parse(st.started_at);
  return facts([
    ['Version', st.version],
    ['Up', [duration(st.uptime_secs),
      Number.isNaN(started) ? null : muted(` since ${stamp(new Date(started))}`)]],
    ['Zone', code(st.zone)],
    ['Store', st.store],
    ['Leader', st.leader ? 'yes' : 'no'],
    ['EC2', ec2.trusted ? tag('ok', 'trusted')
      : [tag('bad', 'not trusted'), ' ', ec2.why || '']],
    ['Connections', conn.max ? [bar(conn.open / conn.max), `${conn.open} of ${conn.max}`] : null],
  ]);
}

function dnsStatus(ds) {
  if (ds instanceof Error) return problem(ds);
  const pending = ds.pending_changes || 0;
  const conflicts = Object.entries(ds.conflicts || {});
  const summary = h('p', { class: 'chips' },
    pending ? tag('warn', `${pending} ${pending === 1 ? 'change' : 'changes'} pending`) : tag('ok', 'in sync'),
    conflicts.length ? tag('bad', `${conflicts.length} ${conflicts.length === 1 ? 'conflict' : 'conflicts'}`) : null,
    ds.last_error ? tag('bad', 'failing') : null);
  if (ds.provider === 'embedded' || ds.target === undefined) {
    return [summary, facts([
      ['Provider', ds.provider],
      ['Records', 'answered by the coordinator itself, always current'],
    ])];
  }
  const lc = ds.last_change;
  const more = (ds.pending || []).length < pending ? ` and ${pending - ds.pending.length} more` : '';
  return [summary, facts([
    ['Provider', ds.provider],
    ['Target', code(ds.target)],
    ['Owner', code(ds.owner)],
    ['Names applied', String(ds.applied_names ?? 0)],
    pending ? ['Pending', [h('ul', { class: 'mono' }, (ds.pending || []).map((n) => h('li', {}, n))), more]] : null,
    conflicts.length ? ['Conflicts', h('ul', {}, conflicts.map(([name, why]) =>
      h('li', {}, code(name), ` ${why}`)))] : null,
    ['Last change', lc ? [code(lc.id), ' ', tag(lc.status === 'INSYNC' ? 'ok' : 'warn', lc.status.toLowerCase()),
      ' ', when(lc.submitted_at)] : null],
    ['Last success', whenUnix(ds.last_success_unix)],
    ['Last full pass', whenUnix(ds.last_full_reconcile_unix)],
    ['Last error', ds.last_error ? h('span', { class: 'problem' }, ds.last_error) : muted('none')],
    ['Since start', `${ds.applied_total ?? 0} applied · ${ds.failures_total ?? 0} failed · ${ds.throttled_total ?? 0} throttled`],
  ])];
}

function clusterTable(list) {
  if (list instanceof Error) return problem(list);
  if (!list.length) return h('p', { class: 'empty' }, 'No clusters yet.');
  return h('div', { class: 'scroll' }, h('table', {},
    thead('Cluster', 'Nodes', 'By state', 'DNS name', 'Launch', 'Created'),
    h('tbody', {}, list.map((c) => {
      const states = c.states || { deployed: c.deployed };
      return h('tr', { 'data-cluster': c.name },
        h('th', { scope: 'row' }, h('a', { href: href('clusters', c.name) }, c.name),
          c.state !== 'active' ? [' ', tag('warn', c.state)] : null),
        h('td', {}, String(c.nodes)),
        h('td', {}, h('span', { class: 'chips' }, STATES.filter((s) => states[s] > 0).map((s) =>
          h('span', { class: 'badge', 'data-state': s, 'data-count': states[s] }, `${states[s]} ${s}`)))),
        h('td', { class: 'mono' }, c.dns_name),
        h('td', { class: 'nowrap' }, c.launch ? `${c.launch.count} × ${c.launch.instance_type}` : muted('nodes join')),
        h('td', {}, when(c.created_at), c.expires_at ? h('span', { class: 'muted small' }, ' · ends ', c.expires_at) : null));
    }))));
}

// The smallest step of 1, 2 or 5 times a power of ten that is at least `raw`.
function niceStep(raw) {
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((k) => k * mag).find((step) => step >= raw * (1 - 1e-9));
}

// Whole-number ticks from 0 to at least `max`, in about five round steps.
function ticks(max) {
  const step = Math.max(1, niceStep(Math.max(max, 1) / 5));
  const out = [0];
  while (out[out.length - 1] < max || out.length < 2) out.push(out.length * step);
  return out;
}

// Nodes by state, stacked, and heartbeats per second, over the last hour.
function fleetChart(hist, width) {
  if (hist instanceof Error) return problem(hist);
  const samples = hist.samples || [];
  if (samples.length < 2) {
    return h('p', { class: 'empty' }, `The chart fills in as the coordinator records the fleet, every ${hist.interval_secs || 10} s.`);
  }
  const W = Math.max(320, Math.floor(width) || 800);
  const H = 220;
  const m = { l: 40, r: 44, t: 24, b: 26 };
  const end = samples[samples.length - 1].at_unix;
  const start = end - 3600;
  const pts = samples.filter((p) => p.at_unix >= start);
  const present = STATES.filter((s) => pts.some((p) => (p.states || {})[s] > 0));
  const total = (p) => present.reduce((sum, s) => sum + ((p.states || {})[s] || 0), 0);
  // Heartbeats share the node count's grid lines, on a scale of their own.
  const nTicks = ticks(Math.max(...pts.map(total)));
  const steps = nTicks.length - 1;
  const nMax = nTicks[steps];
  const hbStep = niceStep(Math.max(0.01, ...pts.map((p) => p.heartbeats_per_second || 0)) / steps);
  const hbMax = hbStep * steps;
  const x = (t) => m.l + ((t - start) / 3600) * (W - m.l - m.r);
  const y = (v, max) => m.t + (1 - v / max) * (H - m.t - m.b);
  const xy = (t, v, max) => `${x(t).toFixed(1)},${y(v, max).toFixed(1)}`;

  const areas = [];
  let base = pts.map(() => 0);
  for (const s of present) {
    const top = pts.map((p, i) => base[i] + ((p.states || {})[s] || 0));
    const upper = pts.map((p, i) => xy(p.at_unix, top[i], nMax));
    const lower = pts.map((p, i) => xy(p.at_unix, base[i], nMax)).reverse();
    areas.push(svg('path', { class: 'area', 'data-state': s, d: `M${upper.join('L')}L${lower.join('L')}Z` }));
    base = top;
  }
  const hbLine = svg('path', { class: 'hb', d: `M${pts.map((p) => xy(p.at_unix, p.heartbeats_per_second || 0, hbMax)).join('L')}` });

  const axes = [];
  for (const v of nTicks) {
    axes.push(svg('line', { class: 'grid-line', x1: m.l, x2: W - m.r, y1: y(v, nMax), y2: y(v, nMax) }),
      svg('text', { x: m.l - 6, y: y(v, nMax) + 4, 'text-anchor': 'end' }, String(v)));
  }
  nTicks.forEach((v, i) => axes.push(svg('text', { x: W - m.r + 6, y: y(v, nMax) + 4 },
    String(+(hbStep * i).toFixed(3)))));
  for (let t = Math.ceil(start / 600) * 600; t <= end; t += 600) {
    axes.push(svg('line', { class: 'axis', x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4 }),
      svg('text', { x: x(t), y: H - m.b + 16, 'text-anchor': 'middle' }, clock(new Date(t * 1000)).slice(0, 5)));
  }
  axes.push(svg('line', { class: 'axis', x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }),
    svg('text', { x: m.l - 6, y: 11, 'text-anchor': 'end' }, 'nodes'),
    svg('text', { x: W - 4, y: 11, 'text-anchor': 'end' }, 'heartbeats/s'));

  const last = pts[pts.length - 1];
  const now = present.filter((s) => last.states[s]).map((s) => `${last.states[s]} ${s}`).join(', ') || 'no nodes';
  const hbNow = (last.heartbeats_per_second || 0).toFixed(2);
  return [
    svg('svg', { class: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': `Nodes by state and heartbeats per second over the last hour; now ${now}, ${hbNow} heartbeats per second.` },
    axes, areas, hbLine),
    h('ul', { class: 'legend' },
      present.map((s) => h('li', { 'data-state': s }, h('span', { class: 'swatch' }), `${s} (${last.states[s] || 0} now)`)),
      h('li', {}, h('span', { class: 'swatch line' }), `heartbeats/s (${hbNow} now)`)),
  ];
}

// ---- #/clusters/{name} : a cluster's nodes ----

// Sort and filter, kept while moving between pages.
const view = { sort: null, dir: 1, filter: '', state: '' };

const ipNumber = (ip) => (ip ? ip.split('.').reduce((n, o) => n * 256 + Number(o), 0) : -1);
const diskFraction = (n) => {
  const d = dataDisk(n.facts);
  return d && d.total_bytes ? d.used_bytes / d.total_bytes : -1;
};
const COLUMNS = [
  ['name', 'Name', (n) => n.name],
  ['state', 'State', (n) => STATES.indexOf(n.state)],
  ['zone', 'Zone', (n) => n.availability_zone],
  ['addr', 'Addresses', (n) => ipNumber(n.private_ipv4)],
  ['dns', 'DNS names', (n) => n.dns_name],
  ['heard', 'Last heard', (n) => Date.parse(n.last_seen_at) || 0],
  ['agent', 'Agent', (n) => n.agent_version || ''],
  ['disk', 'Data volume', diskFraction],
];

const compare = (a, b) => (typeof a === 'number' && typeof b === 'number' ? a - b : collator.compare(String(a), String(b)));

// Everything a node's row shows, for the text filter.
const haystack = (n) => [n.name, n.state, n.instance_id, n.availability_zone, n.region, n.private_ipv4,
  n.public_ipv4, n.ipv6, n.dns_name, n.internal_dns_name, n.agent_version, n.drained ? 'drained' : '',
].filter(Boolean).join(' ').toLowerCase();

function clusterPage(name) {
  let head;
  let filter;
  let select;
  let count;
  let tbody;
  let heads;
  let note;
  let nodes = [];
  let problemShown = null;

  function draw() {
    const terms = view.filter.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = nodes.filter((n) => (!view.state || n.state === view.state)
      && terms.every((t) => haystack(n).includes(t)));
    const column = COLUMNS.find((c) => c[0] === view.sort);
    shown = shown.slice().sort((a, b) => (column ? view.dir * compare(column[2](a), column[2](b)) : 0)
      || collator.compare(a.name, b.name));
    patch(tbody, shown.map((n) => nodeRow(n)));
    count.textContent = `${shown.length} of ${nodes.length} ${nodes.length === 1 ? 'node' : 'nodes'}`;
    heads.forEach((th) => {
      const key = th.firstChild.dataset.sort;
      if (key === view.sort) th.setAttribute('aria-sort', view.dir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    });
    const by = {};
    nodes.forEach((n) => { by[n.state] = (by[n.state] || 0) + 1; });
    Array.from(select.options).forEach((o) => {
      const text = o.value ? `${o.value} (${by[o.value] || 0})` : `all states (${nodes.length})`;
      if (o.textContent !== text) o.textContent = text;
    });
    let message = null;
    if (problemShown) message = problem(problemShown);
    else if (!nodes.length) message = h('p', { class: 'empty' }, 'This cluster has no nodes.');
    else if (!shown.length) message = h('p', { class: 'empty' }, 'No node matches the filter.');
    patch(note, message);
  }

  return {
    title: name,
    crumbs: [[name, href('clusters', name)]],
    paths: { nodes: `/v1/nodes?cluster=${encodeURIComponent(name)}`, clusters: '/v1/clusters' },
    mount(el) {
      head = h('h1', {});
      filter = h('input', { type: 'search', id: 'filter', placeholder: 'name, address, zone, version…', autocomplete: 'off', spellcheck: 'false' });
      filter.value = view.filter;
      select = h('select', { id: 'state-filter' }, h('option', { value: '' }, 'all states'),
        STATES.map((s) => h('option', { value: s }, s)));
      select.value = view.state;
      count = h('p', { class: 'count', 'aria-live': 'polite' });
      heads = COLUMNS.map(([key, label]) => h('th', { scope: 'col' },
        h('button', { type: 'button', 'data-sort': key }, label, h('span', { class: 'arrow', 'aria-hidden': 'true' }))));
      tbody = h('tbody');
      note = h('div');
      el.append(head,
        h('div', { class: 'controls' }, h('label', { for: 'filter' }, 'Filter'), filter,
          h('label', { for: 'state-filter' }, 'State'), select, count),
        h('div', { class: 'card' }, h('div', { class: 'scroll' }, h('table', { class: 'nodes' },
          h('caption', { class: 'sr-only' }, `Nodes of cluster ${name}; select a column heading to sort`),
          h('thead', {}, h('tr', {}, heads)), tbody)), note));
      filter.addEventListener('input', () => { view.filter = filter.value; draw(); });
      select.addEventListener('change', () => { view.state = select.value; draw(); });
      heads.forEach((th) => th.firstChild.addEventListener('click', () => {
        const key = th.firstChild.dataset.sort;
        view.dir = view.sort === key ? -view.dir : 1;
        view.sort = key;
        draw();
      }));
      draw();
    },
    render(d) {
      const c = Array.isArray(d.clusters) ? d.clusters.find((x) => x.name === name) : null;
      patch(head, name, c ? h('span', { class: 'sub mono' }, c.dns_name) : null,
        c && c.state !== 'active' ? tag('warn', c.state) : null);
      problemShown = d.nodes instanceof Error ? d.nodes : null;
      nodes = problemShown ? [] : d.nodes;
      draw();
    },
  };
}

function flags(n) {
  const failing = (n.checks || []).filter((c) => !c.passing).length;
  return [
    n.drained ? h('span', { class: 'flag' }, 'drained') : null,
    failing ? h('span', { class: 'flag' }, `${failing} ${failing === 1 ? 'check' : 'checks'} failing`) : null,
    (n.notices || []).map((x) => h('span', { class: 'flag' }, x.kind.replace(/_/g, ' '))),
  ];
}

function nodeRow(n) {
  const disk = dataDisk(n.facts);
  return h('tr', { 'data-node': n.name },
    h('th', { scope: 'row', class: 'nowrap' }, h('a', { href: href('nodes', n.cluster, n.name) }, n.name)),
    h('td', { 'data-state': n.state }, badge(n.state), flags(n)),
    h('td', { class: 'nowrap' }, n.availability_zone),
    h('td', { class: 'lines mono' },
      h('span', {}, n.private_ipv4 || '—'),
      n.public_ipv4 ? h('span', {}, n.public_ipv4, h('span', { class: 'tag' }, 'public')) : null,
      n.ipv6 ? h('span', {}, n.ipv6) : null),
    h('td', { class: 'lines mono' }, h('span', {}, n.dns_name), muted(n.internal_dns_name)),
    h('td', {}, when(n.last_seen_at)),
    h('td', { class: 'mono' }, n.agent_version || dash()),
    h('td', {}, disk ? usage(disk.used_bytes, disk.total_bytes,
      `${bytes(disk.used_bytes)} of ${bytes(disk.total_bytes)} used on ${disk.mount}`) : dash()));
}

// ---- #/nodes/{cluster}/{name} : one node ----

function nodePage(cluster, name) {
  let r;
  const base = `/v1/nodes/${encodeURIComponent(cluster)}/${encodeURIComponent(name)}`;
  return {
    title: `${name} · ${cluster}`,
    crumbs: [[cluster, href('clusters', cluster)], [name, href('nodes', cluster, name)]],
    paths: { detail: base, dns: `${base}/dns` },
    mount(el) {
      const head = h('h1', {}, name);
      const missing = h('div');
      const body = h('div');
      const grid = h('div', { class: 'grid' });
      el.append(head, missing, body);
      body.append(grid);
      r = { head, missing, body, facts: card(grid, 'Node', 'facts'), host: card(grid, 'Host', 'host') };
      r.health = h('div');
      body.append(r.health);
      r.names = card(body, 'Names', 'names');
      r.events = card(body, 'Events', 'events');
    },
    render(d) {
      const gone = d.detail instanceof Error;
      r.body.hidden = gone;
      patch(r.missing, gone ? h('div', { class: 'card' }, problem(d.detail)) : null);
      if (gone) {
        patch(r.head, name);
        return;
      }
      const n = d.detail.node;
      patch(r.head, n.name, badge(n.state), n.drained ? tag('plain', 'drained') : null);
      patch(r.facts, nodeFacts(n));
      patch(r.host, hostFacts(n.facts));
      patch(r.health, health(n));
      patch(r.names, names(d.dns));
      patch(r.events, events(d.detail));
    },
  };
}

function nodeFacts(n) {
  return facts([
    ['Cluster', h('a', { href: href('clusters', n.cluster) }, n.cluster)],
    ['Instance', code(n.instance_id)],
    ['Zone', `${n.availability_zone} (${n.region})`],
    ['Private IPv4', n.private_ipv4 && code(n.private_ipv4)],
    ['Public IPv4', n.public_ipv4 && code(n.public_ipv4)],
    ['IPv6', n.ipv6 && code(n.ipv6)],
    ['Created', when(n.created_at)],
    ['Updated', when(n.updated_at)],
    ['Last heard', when(n.last_seen_at, 'not since the coordinator started')],
    ['Agent', n.agent_version ? code(n.agent_version) : null],
    ['Drained', n.drained ? 'yes: stays draining until undrained' : 'no'],
    ['Bring-your-own', n.byon ? 'yes: no EC2 checks' : 'no'],
  ]);
}

function hostFacts(f) {
  if (!f) return h('p', { class: 'empty' }, 'No heartbeat since the coordinator started.');
  const load = (f.load_average || []).map((v) => v.toFixed(2)).join(' · ');
  return facts([
    ['OS', f.os],
    ['Kernel', code(f.kernel)],
    ['CPUs', String(f.cpus)],
    ['Load', [load, h('span', { class: 'muted small' }, ' (1, 5, 15 min)')]],
    ['Memory', [usage(f.memory_used_bytes, f.memory_total_bytes),
      h('span', { class: 'muted small' }, ` ${bytes(f.memory_used_bytes)} of ${bytes(f.memory_total_bytes)}`)]],
    ['Disks', h('ul', {}, (f.disks || []).map((d) => h('li', {},
      code(d.mount), ' ', usage(d.used_bytes, d.total_bytes),
      h('span', { class: 'muted small' }, ` ${bytes(d.used_bytes)} of ${bytes(d.total_bytes)}`))))],
    ['Host up', duration(f.uptime_secs)],
  ]);
}

function health(n) {
  const checks = n.checks || [];
  const notices = n.notices || [];
  const out = [];
  if (checks.length) {
    out.push(h('section', { class: 'card', 'aria-labelledby': 'checks-title' },
      h('h2', { id: 'checks-title' }, 'Health checks'),
      h('div', { class: 'scroll' }, h('table', {},
        thead('Check', 'Kind', 'Result', 'Last output'),
        h('tbody', {}, checks.map((c) => h('tr', {},
          h('th', { scope: 'row' }, c.name), h('td', {}, c.kind),
          h('td', {}, c.passing ? tag('ok', 'passing') : tag('bad', 'failing')),
          h('td', {}, h('pre', { class: 'output' }, c.output)))))))));
  }
  if (notices.length) {
    out.push(h('section', { class: 'card', 'aria-labelledby': 'notices-title' },
      h('h2', { id: 'notices-title' }, 'EC2 notices'),
      facts(notices.map((x) => [x.kind.replace(/_/g, ' '),
        [x.time ? h('span', {}, x.time, ' ') : null, h('pre', { class: 'output' }, x.detail)]]))));
  }
  return out;
}

function names(d) {
  if (d instanceof Error) return problem(d);
  const list = d.names || [];
  if (!list.length) return h('p', { class: 'empty' }, 'The node has no names.');
  return [
    h('p', { class: 'muted small' }, 'What the coordinator\'s DNS server answers for each name right now.'),
    h('div', { class: 'scroll' }, h('table', {},
      thead('Name', 'Type', 'Answers'),
      h('tbody', {}, list.map((x) => h('tr', { 'data-name': x.name },
        h('th', { scope: 'row', class: 'mono' }, x.name),
        h('td', {}, x.type),
        (x.answers || []).length
          ? h('td', { class: 'lines mono' }, x.answers.map((a) => h('span', {}, a)))
          : h('td', {}, tag('warn', 'does not resolve'))))))),
  ];
}

function events(detail) {
  const list = (detail.events || []).slice().reverse();
  if (!list.length) return h('p', { class: 'empty' }, 'No events yet.');
  const total = detail.events_total ?? list.length;
  return [
    total > list.length ? h('p', { class: 'muted small' }, `The latest ${list.length} of ${total}, newest first.`) : null,
    h('ol', { class: 'timeline' }, list.map((e) => {
      const t = Date.parse(e.at);
      return h('li', { 'data-seq': e.seq, 'data-to': e.to, 'data-state': e.to },
        h('span', { class: 'at' }, h('time', { datetime: e.at }, Number.isNaN(t) ? e.at : stamp(new Date(t))),
          muted(when(e.at))),
        h('span', { class: 'change' }, e.from == null ? muted('new') : badge(e.from),
          h('span', { class: 'arrow-to', 'aria-label': 'to' }, '→'), badge(e.to)),
        h('p', { class: 'reason' }, e.reason),
        h('span', { class: 'source', title: 'source' }, e.source));
    })),
  ];
}

// ---- Start ----

window.addEventListener('hashchange', go);
document.addEventListener('visibilitychange', () => { if (!document.hidden) tick(); });
let resizing = 0;
window.addEventListener('resize', () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => { if (page && page.data) page.render(page.data); }, 150);
});
go();
