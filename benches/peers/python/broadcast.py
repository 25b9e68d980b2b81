"""Broadcast server on Python `websockets`, for benches/compare.sh: every message to every
client with websockets.broadcast(), as its tutorial does. Compression is websockets'
default (permessage-deflate with context takeover, 12-bit windows, memLevel 5).

    python broadcast.py [--port N]   (0: any free port; prints "listening on ws://...:PORT")
"""

import asyncio
import signal
import sys

from websockets.asyncio.server import broadcast, serve

CLIENTS = set()


async def handler(websocket):
    CLIENTS.add(websocket)
    try:
        async for message in websocket:
            broadcast(CLIENTS, message)
    finally:
        CLIENTS.discard(websocket)


async def main(port):
    async with serve(handler, "127.0.0.1", port) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening on ws://127.0.0.1:{port}", flush=True)
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(int(args[args.index("--port") + 1]) if "--port" in args else 0))
