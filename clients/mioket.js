// mioket's browser pages share this: where to connect, the echo page's connection,
// and formatting. Plain JavaScript, no build step; served by the server at /mioket.js
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

// Keeps one plain WebSocket open, for the echo page (a --mode echo server speaks no
// mioket.v1; the chat page uses the client module, clients/js/index.js, instead).
// After a drop it waits min(cap, base * 2^failures), scaled by a random 50-100% so that
// many pages do not come back in lockstep. The returned object sends.
function keepConnected(url, on) {
  const BASE_MS = 500, CAP_MS = 15000;
  let ws = null, failures = 0;
  function connect() {
    on.state('connecting', failures ? `reconnecting to ${url} (attempt ${failures})…` : `connecting to ${url}…`);
    try {
      ws = new WebSocket(url);
    } catch (e) {
      ws = null;
      on.state('closed', `cannot connect to ${url}: ${e.message}`);
      return;
    }
    url = ws.url; // as the browser resolved it: ?ws= may be relative
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => { failures = 0; on.state('open', `open — ${url}`); on.open(); };
    ws.onmessage = (e) => on.message(e.data);
    ws.onclose = (e) => {
      ws = null;
      const delay = Math.min(CAP_MS, BASE_MS * 2 ** failures) * (0.5 + Math.random() / 2);
      failures++;
      const why = e.reason ? `${e.code}, ${e.reason}` : `${e.code}`;
      on.state('closed', `closed (${why}) — reconnecting in ${(delay / 1000).toFixed(1)} s`);
      on.close(e);
      setTimeout(connect, delay);
    };
  }
  connect();
  return {
    send(data) {
      if (!ws || ws.readyState !== WebSocket.OPEN) return false;
      ws.send(data);
      return true;
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
