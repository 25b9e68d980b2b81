#!/usr/bin/env python3
"""A TLS client in front of a wss:// server, for test runners that speak only ws://.

    tls-relay.py HOST:PORT CAFILE [SERVER_NAME]

Listens on 127.0.0.1 (a free port, printed as `relay on 127.0.0.1:PORT` on stdout) and,
for each plain connection it accepts, opens a TLS connection to HOST:PORT that trusts only
CAFILE (the certificate is checked, for SERVER_NAME, default localhost), then copies bytes
both ways as they come: each read is written on at once (one TLS record per read on the
way in), so the server sees the runner's chunking. An end on either side ends the other
(a close from the server reaches the runner as a close, a reset as a close), so the
runner judges who closed first as it would without the relay. Stops on SIGTERM/SIGINT.
Used by scripts/autobahn.sh to run Autobahn|Testsuite over wss:// with kosoku.
"""

import asyncio
import signal
import ssl
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


async def main():
    host, port = sys.argv[1].rsplit(":", 1)
    context = ssl.create_default_context(cafile=sys.argv[2])
    server_name = sys.argv[3] if len(sys.argv) > 3 else "localhost"

    async def handle(plain_reader, plain_writer):
        try:
            tls_reader, tls_writer = await asyncio.open_connection(
                host, int(port), ssl=context, server_hostname=server_name
            )
        except (OSError, ssl.SSLError) as e:
            print(f"relay: cannot connect: {e}", file=sys.stderr)
            plain_writer.close()
            return
        await asyncio.gather(pipe(plain_reader, tls_writer), pipe(tls_reader, plain_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print("relay on 127.0.0.1:%d" % server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
