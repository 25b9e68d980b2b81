// Broadcast server on Node's `ws` with permessage-deflate, for benches/compare.sh: every
// message to every open client, the way ws's README broadcasts. perMessageDeflate: true
// takes ws's defaults (zlib level 6 through Node's zlib, context takeover both ways,
// messages under 1 KiB sent plain, at most 10 deflate jobs at a time).
//
//   node broadcast.js [--port N]   (0: any free port; prints "listening on ws://...:PORT")
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const i = process.argv.indexOf('--port');
const port = i > 0 ? Number(process.argv[i + 1]) : 0;

const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: true });

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    wss.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

wss.on('listening', () => {
  console.log(`listening on ws://127.0.0.1:${wss.address().port}`);
});

process.on('SIGTERM', () => process.exit(0));
