// mioket's browser pages share this: where to connect, staying connected, and
// formatting. Plain JavaScript, no build step; served by the server at /mioket.js
// and found beside the pages when they are opened from disk.
'use strict';

// Where to connect: ?ws=URL wins; a served page talks to the host and port that
// served it (wss:// under https); a page opened from disk tries the default port.
function socketUrl() {
  const asked = new URLSearchParams(location.search).get('ws');
  if (asked) return asked;
  if (location.protocol === 'https:') return `wss://${location.host}/`;
  if (location.protocol === 'http:') return `ws://${location.host}/`;
  return 'ws://localhost:8765/';
}

// Keeps one WebSocket open. After a drop it waits min(cap, base * 2^failures),
// scaled by a random 50-100% so that many pages do not come back in lockstep.
// `url` is a string, or a function called before every attempt (a page that resumes
// puts what it has seen in the URL). `options.protocols` is offered in the handshake;
// on.open(protocol) gets the one the server chose ('' for none).
// The returned object sends, reconnects at once (reconnect: after a change of URL), and,
// for tests, drop() closes the socket as a lost connection would (the usual backoff
// follows) and hold(true) keeps the next attempt waiting until hold(false).
function keepConnected(url, on, options = {}) {
  const BASE_MS = 500, CAP_MS = 15000;
  let ws = null, failures = 0, timer = 0, held = false, due = false;
  function connect() {
    timer = 0;
    if (held) { due = true; return; }
    let target = typeof url === 'function' ? url() : url;
    on.state('connecting', failures ? `reconnecting to ${target} (attempt ${failures})…` : `connecting to ${target}…`);
    try {
      ws = new WebSocket(target, options.protocols || []);
    } catch (e) {
      ws = null;
      on.state('closed', `cannot connect to ${target}: ${e.message}`);
      return;
    }
    target = ws.url; // as the browser resolved it: ?ws= may be relative
    if (typeof url !== 'function') url = target;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => { failures = 0; on.state('open', `open — ${target}`); on.open(ws.protocol); };
    ws.onmessage = (e) => on.message(e.data);
    ws.onclose = (e) => {
      ws = null;
      const delay = Math.min(CAP_MS, BASE_MS * 2 ** failures) * (0.5 + Math.random() / 2);
      failures++;
      const why = e.reason ? `${e.code}, ${e.reason}` : `${e.code}`;
      on.state('closed', `closed (${why}) — reconnecting in ${(delay / 1000).toFixed(1)} s`);
      on.close(e);
      timer = setTimeout(connect, delay);
    };
  }
  connect();
  return {
    send(data) {
      if (!ws || ws.readyState !== WebSocket.OPEN) return false;
      ws.send(data);
      return true;
    },
    reconnect() {
      if (ws) {
        ws.onopen = ws.onmessage = ws.onclose = null;
        ws.close(1000);
        ws = null;
      }
      clearTimeout(timer);
      failures = 0;
      connect();
    },
    drop() {
      if (ws) ws.close();
    },
    hold(on) {
      held = on;
      if (!held && due) { due = false; connect(); }
    },
  };
}

function clock(date) {
  return [date.getHours(), date.getMinutes(), date.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

// Binary messages show as their size and the first bytes in hex.
function describeBinary(buffer) {
  const bytes = new Uint8Array(buffer), PREVIEW = 16;
  const hex = Array.from(bytes.subarray(0, PREVIEW), (b) => b.toString(16).padStart(2, '0')).join(' ');
  const size = `${bytes.length} byte${bytes.length === 1 ? '' : 's'}`;
  return `binary, ${size}${bytes.length ? ': ' + hex : ''}${bytes.length > PREVIEW ? ' …' : ''}`;
}
