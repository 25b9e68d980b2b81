// The operator console (/dashboard): polls GET /api/stats once a second while the tab
// is visible, turns its counters into rates (the difference of two documents over
// the time between them: the server keeps no rates), draws the last five minutes
// with uPlot, and acts through the existing HTTP API. No build step.
'use strict';

const TOKEN_KEY = 'mioket.apiToken';
const POLL_MS = 1000;
const WINDOW_S = 300;
// Closes charted one by one; the other reasons are summed as "other".
const CHARTED_CLOSES = ['client', 'dropped', 'slow_consumer', 'rate_limited', 'invalid_token', 'heartbeat_timeout'];
const COLORS = ['#2259c7', '#1a7f37', '#cf222e', '#b07800', '#8250df', '#0a7ea4', '#6e7781'];

const $ = (id) => document.getElementById(id);
const number = new Intl.NumberFormat('en', { maximumFractionDigits: 1 });

let token = sessionStorage.getItem(TOKEN_KEY);
let previous = null; // { at: ms, doc }
let timer = null;
let polling = false;
let charts = null;
// Chart columns: time (s) first, then one array per series.
const data = { connections: [[], []], messages: [[], [], []], bytes: [[], [], []], closes: [[]] };

/** An API request with the token; resolves to { status, text } (network errors throw). */
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'text/plain; charset=utf-8';
  const res = await fetch(path, { method, headers, body, cache: 'no-store' });
  return { status: res.status, text: await res.text() };
}

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

function signIn(value) {
  token = value;
  sessionStorage.setItem(TOKEN_KEY, value);
  $('login-error').textContent = '';
  poll();
}

/** Back to the token form, saying why. */
function signOut(why) {
  clearTimeout(timer);
  timer = null;
  token = null;
  previous = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $('console').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = why;
  setStatus('out', 'Not signed in');
}

/** One poll, then the next one scheduled (never two at once: a tab shown again polls now). */
async function poll() {
  clearTimeout(timer);
  timer = null;
  if (!token || polling) return;
  polling = true;
  try {
    await fetchStats();
  } finally {
    polling = false;
  }
  schedule();
}

async function fetchStats() {
  let answer;
  try {
    answer = await api('GET', '/api/stats');
  } catch (e) {
    return setStatus('down', `Server unreachable (${e.message}); retrying`);
  }
  if (answer.status === 401) return signOut('Wrong token: the server answered 401 Unauthorized.');
  if (answer.status === 404) return signOut('The API is off here (404): start mioket with --api-token.');
  if (answer.status !== 200) return setStatus('down', `/api/stats answered ${answer.status}; retrying`);
  const now = { at: performance.now(), doc: JSON.parse(answer.text) };
  $('login').hidden = true;
  $('console').hidden = false;
  $('logout').hidden = false;
  show(now.doc, previous && rates(previous, now));
  previous = now;
}

/** The next poll, while the tab is visible (a hidden tab asks nothing). */
function schedule() {
  clearTimeout(timer);
  timer = token && document.visibilityState === 'visible' ? setTimeout(poll, POLL_MS) : null;
  if (token && !timer) setStatus('paused', 'Paused while the tab is hidden');
}

document.addEventListener('visibilitychange', () => (document.visibilityState === 'visible' ? poll() : schedule()));

/** Per-second rates between two documents. */
function rates(a, b) {
  const seconds = (b.at - a.at) / 1000;
  const per = (read) => Math.max(0, (read(b.doc) - read(a.doc)) / seconds);
  const closes = {};
  for (const reason of Object.keys(b.doc.closes)) closes[reason] = per((d) => d.closes[reason] ?? 0);
  return {
    messagesIn: per((d) => d.messages_in),
    deliveriesOut: per((d) => d.deliveries_out),
    bytesIn: per((d) => d.bytes_in),
    bytesOut: per((d) => d.bytes_out),
    closes,
  };
}

function show(doc, rate) {
  const up = duration(doc.uptime_s);
  setStatus('live', `mioket ${doc.version} · up ${up} · updated ${new Date().toLocaleTimeString()}`);
  const c = doc.connections;
  tile('connections', c.websockets, number.format(c.websockets),
    `${c.plain} plain · ${c.v1} v1 · ${c.tls} TLS · ${c.deflate} deflate · ${c.http} HTTP`);
  tile('rooms', doc.rooms, number.format(doc.rooms), `${doc.api_publishes} API publishes`);
  tile('messages', rate?.messagesIn ?? 0, rate ? number.format(rate.messagesIn) : '…', `${doc.messages_in} in total`);
  tile('deliveries', rate?.deliveriesOut ?? 0, rate ? number.format(rate.deliveriesOut) : '…',
    `${doc.deliveries_out} in total`);
  const rss = doc.memory.rss_bytes;
  tile('rss', rss ?? 0, rss == null ? 'n/a' : bytes(rss), `histories ${bytes(doc.memory.history_bytes)}`);
  const b = doc.backplane;
  tile('backplane', b ? b.state : 'local', b ? b.state : 'local',
    b ? `round trip ${b.round_trip_ms.toFixed(2)} ms · ${b.in_flight} in flight` : 'one process (no --redis)');
  $('tile-backplane').dataset.state = b ? b.state : 'local';
  busiest(doc);
  rows('nodes', doc.nodes.map((n) => [n.id, duration(n.uptime_s), n.connections]));
  const reasons = [...new Set([...Object.keys(doc.closes), ...Object.keys(doc.refusals)])].sort();
  rows('totals', reasons.map((r) => [r, doc.closes[r] ?? '', doc.refusals[r] ?? '']).filter((r) => r[1] || r[2]));
  if (rate) chart(doc, rate);
}

function tile(name, value, text, note) {
  const el = $(`tile-${name}`);
  el.dataset.value = value;
  el.querySelector('.value').textContent = text;
  el.querySelector('.note').textContent = note;
}

/** Rooms of both lists (by members, by messages since the previous document), busiest first. */
function busiest(doc) {
  const byName = new Map();
  for (const r of [...doc.busiest_by_messages, ...doc.busiest_by_members]) byName.set(r.room, r);
  const list = [...byName.values()].sort((a, b) => b.messages - a.messages || b.members - a.members);
  const interval = doc.interval_ms ? `${number.format(doc.interval_ms / 1000)} s` : '';
  rows('busiest', list.map((r) => [r.room === '' ? '(default)' : r.room, r.members,
    r.messages ? `${r.messages} in ${interval}` : '0', r.seq]));
}

/** Replaces a table's body with these rows (text only: room names are anyone's). */
function rows(id, cells) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...cells.map((row) => {
    const tr = document.createElement('tr');
    for (const value of row) tr.insertCell().textContent = String(value);
    return tr;
  }));
}

function chart(doc, rate) {
  const t = Date.now() / 1000;
  const otherCloses = Object.entries(rate.closes)
    .filter(([reason]) => !CHARTED_CLOSES.includes(reason))
    .reduce((sum, [, v]) => sum + v, 0);
  const points = {
    connections: [doc.connections.websockets],
    messages: [rate.messagesIn, rate.deliveriesOut],
    bytes: [rate.bytesIn, rate.bytesOut],
    closes: [...CHARTED_CLOSES.map((r) => rate.closes[r] ?? 0), otherCloses],
  };
  if (!charts) charts = makeCharts();
  for (const [name, values] of Object.entries(points)) {
    const columns = data[name];
    columns[0].push(t);
    values.forEach((v, i) => (columns[i + 1] ??= []).push(v));
    // The last five minutes only.
    while (columns[0][0] < t - WINDOW_S) columns.forEach((col) => col.shift());
    charts[name].setData(columns);
  }
}

function makeCharts() {
  const make = (name, labels, unit) => {
    const el = $(`chart-${name}`);
    const opts = {
      width: Math.max(280, el.clientWidth),
      height: 170,
      legend: { live: false },
      series: [{}, ...labels.map((label, i) => ({ label, stroke: COLORS[i % COLORS.length], width: 1.5 }))],
      axes: [{}, { size: 80, values: (u, ticks) => ticks.map(unit) }],
      scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    };
    data[name] = [[], ...labels.map(() => [])];
    return new uPlot(opts, data[name], el);
  };
  const plain = (v) => number.format(v);
  return {
    connections: make('connections', ['WebSockets'], plain),
    messages: make('messages', ['messages in', 'deliveries out'], plain),
    bytes: make('bytes', ['read', 'written'], bytes),
    closes: make('closes', [...CHARTED_CLOSES, 'other'], plain),
  };
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${number.format(n)} ${units[i]}`;
}

function duration(s) {
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

// Actions through the API, each answer shown as it came.
async function act(method, path, body) {
  const out = $('answer');
  try {
    const answer = await api(method, path, body);
    out.dataset.status = answer.status;
    out.textContent = `${method} ${path} → ${answer.status}\n${answer.text}`;
    if (answer.status === 401) signOut('Wrong token: the server answered 401 Unauthorized.');
  } catch (e) {
    out.dataset.status = 'error';
    out.textContent = `${method} ${path} failed: ${e.message}`;
  }
}

const room = (id) => encodeURIComponent($(id).value);
const user = (id) => encodeURIComponent($(id).value);
const onSubmit = (id, fn) => $(id).addEventListener('submit', (e) => {
  e.preventDefault();
  fn();
});

onSubmit('login', () => signIn($('token').value.trim()));
onSubmit('publish', () => act('POST', `/api/rooms/${room('publish-room')}/messages`, $('publish-text').value));
onSubmit('presence', () => act('GET', `/api/rooms/${room('presence-room')}/presence`));
onSubmit('disconnect', () =>
  act('POST', `/api/users/${user('disconnect-user')}/disconnect`, $('disconnect-reason').value));
onSubmit('remove', () => act('DELETE', `/api/rooms/${room('remove-room')}/users/${user('remove-user')}`));
$('logout').addEventListener('click', () => signOut(''));

if (token) poll();
