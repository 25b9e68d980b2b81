#!/usr/bin/env python3
"""Idle TLS connections against a release mioket: RSS per idle connection and server CPU
per handshake, with and without TLS in one run.

    cargo build --release
    python3 scripts/tls-idle.py [--connections 10000] [--key ec|rsa] [--plain]

For each transport (wss://, and ws:// with --plain), it starts target/release/mioket on
127.0.0.1 (a fresh self-signed certificate made with openssl), opens N connections (TLS
handshake, WebSocket upgrade, the welcome read), holds them idle, and reads the server's
RSS and CPU time from /proc. Numbers per connection are the difference to the server just
started, divided by N. Needs Python 3.8+ and the openssl command; nothing else.
"""

import argparse
import asyncio
import base64
import os
import resource
import ssl
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def make_cert(folder, kind):
    cert, key = os.path.join(folder, "fullchain.pem"), os.path.join(folder, "privkey.pem")
    algo = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if kind == "ec" else ["-newkey", "rsa:2048"]
    subprocess.run(
        ["openssl", "req", "-x509", *algo, "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", key, "-out", cert],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def start(binary, tls_files):
    args = [binary, "--host", "127.0.0.1", "--port", "0", "--max-connections", "30000", "--ping-interval", "0"]
    if tls_files:
        args += ["--tls-cert", tls_files[0], "--tls-key", tls_files[1]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "RUST_LOG": "warn"})
    line = proc.stdout.readline().strip()
    port = int(line.rsplit(":", 1)[1])
    return proc, port


async def open_one(port, context, held):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                   server_hostname="localhost" if context else None)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    # The welcome text frame (short: a 2-byte header).
    header = await reader.readexactly(2)
    await reader.readexactly(header[1] & 0x7F)
    held.append(writer)


async def open_all(port, context, count, concurrency):
    held = []
    gate = asyncio.Semaphore(concurrency)

    async def guarded():
        async with gate:
            await open_one(port, context, held)

    await asyncio.gather(*(guarded() for _ in range(count)))
    return held


def measure(binary, tls_files, count, concurrency, hold):
    proc, port = start(binary, tls_files)
    try:
        time.sleep(0.3)
        context = None
        if tls_files:
            context = ssl.create_default_context(cafile=tls_files[0])
        loop = asyncio.new_event_loop()
        # Warm-up: one connection, so that one-time costs (first allocations) are not counted.
        warm = loop.run_until_complete(open_all(port, context, 1, 1))
        time.sleep(0.2)
        rss0, cpu0 = rss(proc.pid), cpu_seconds(proc.pid)
        started = time.monotonic()
        held = loop.run_until_complete(open_all(port, context, count, concurrency))
        took = time.monotonic() - started
        time.sleep(0.5)
        rss1, cpu1 = rss(proc.pid), cpu_seconds(proc.pid)
        loop.run_until_complete(asyncio.sleep(hold))
        rss2 = rss(proc.pid)
        for writer in held + warm:
            writer.transport.abort()
        loop.close()
        return {
            "connections": len(held),
            "seconds to open": round(took, 1),
            "RSS B/conn just after opening": round((rss1 - rss0) / count),
            "RSS B/conn at the end of the hold": round((rss2 - rss0) / count),
            "server CPU us/connection (handshake, upgrade, welcome)": round((cpu1 - cpu0) / count * 1e6, 1),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to hold the connections idle")
    parser.add_argument("--key", choices=["ec", "rsa"], default="ec", help="P-256 ECDSA or RSA 2048")
    parser.add_argument("--plain", action="store_true", help="also measure ws:// for comparison")
    parser.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "mioket"))
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.connections + 100 > hard:
        sys.exit(f"need {args.connections + 100} file descriptors, the hard limit is {hard}")
    with tempfile.TemporaryDirectory() as folder:
        files = make_cert(folder, args.key)
        runs = [("wss", files)] + ([("ws", None)] if args.plain else [])
        for name, tls_files in runs:
            result = measure(args.bin, tls_files, args.connections, args.concurrency, args.hold)
            label = f"{name}://" + (f" ({args.key} key)" if tls_files else "")
            print(label)
            for k, v in result.items():
                print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
