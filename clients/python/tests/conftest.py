"""Test helpers: the real mioket binary, a TCP proxy that can cut or freeze links, HS256
tokens made here, a fake mioket.v1 server (scripted cases the real server cannot make)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from websockets.asyncio.server import ServerConnection, serve

REPO = Path(__file__).resolve().parents[3]
MIOKET_BIN = os.environ.get("MIOKET_BIN") or str(REPO / "target" / "release" / "mioket")
#: Every test body runs under this bound (seconds).
LIMIT = 20


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition of in-process state (no event exists for it) within a bound."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class Server:
    """The real mioket binary on 127.0.0.1, a free port, for at most 120 s."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.output: list[str] = []

    def url(self, room: str = "lobby") -> str:
        return f"ws://127.0.0.1:{self.port}/{room}"

    async def metric(self, name: str) -> int:
        """A counter of ``GET /metrics`` (e.g. ``mioket_upgrades_total``)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        body = (await reader.read()).decode()
        writer.close()
        found = re.search(rf"^{re.escape(name)} (\d+)$", body, re.MULTILINE)
        assert found, f"no {name} in /metrics"
        return int(found.group(1))


def make_token(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 JWT (RFC 7519), made as an issuer would: base64url of the header and the
    claims, and their HMAC-SHA256."""

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    signed = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + part(json.dumps(claims).encode())
    return signed + "." + part(hmac.new(secret, signed.encode(), hashlib.sha256).digest())


def token_for(
    secret: bytes, sub: str, *, read: tuple[str, ...] = ("*",), write: tuple[str, ...] = ("*",),
    ttl: int = 3600,
) -> str:
    """A token for ``sub`` that may read and write those rooms, for ``ttl`` s from now."""
    claims = {"sub": sub, "exp": int(time.time()) + ttl, "rooms": {"read": list(read), "write": list(write)}}
    return make_token(secret, claims)


@contextlib.asynccontextmanager
async def mioket_server(*args: str) -> AsyncIterator[Server]:
    if not os.access(MIOKET_BIN, os.X_OK):
        raise RuntimeError(f"no server binary at {MIOKET_BIN} (cargo build --release, or set MIOKET_BIN)")
    proc = await asyncio.create_subprocess_exec(
        "timeout", "120", MIOKET_BIN,
        "--host", "127.0.0.1", "--port", "0", "--ping-interval", "0", "--welcome", "", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(10):
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                raise RuntimeError("mioket exited before listening:\n" + "".join(lines))
            line = raw.decode(errors="replace")
            lines.append(line)
            found = re.search(r"listening on ws://127\.0\.0\.1:(\d+)", line)
            if found:
                break
    server = Server(proc, int(found.group(1)))
    server.output = lines

    async def drain() -> None:  # keep the pipe from filling up
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            lines.append(raw.decode(errors="replace"))
            del lines[:-200]

    drainer = asyncio.create_task(drain())
    try:
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        drainer.cancel()


class _Link:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.head = b""  # what the client sent first: its upgrade request
        self.flowing = asyncio.Event()
        self.flowing.set()

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


class Proxy:
    """A TCP proxy on 127.0.0.1 to ``upstream_port``.

    ``cut()`` aborts every open link; ``freeze()`` silently stops forwarding on every open
    link while keeping its sockets open (a dead link); ``refuse`` closes new connections at
    once. New links forward normally (unless refused). ``heads`` keeps the first bytes each
    client sent (its upgrade request, headers included).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.accepted = 0
        self.refuse = False
        self.links: list[_Link] = []
        self.heads: list[bytes] = []
        self._server: asyncio.base_events.Server | None = None

    def url(self, room: str = "lobby") -> str:
        return f"ws://127.0.0.1:{self.port}/{room}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()

    def cut(self) -> None:
        for link in self.links:
            link.abort()
        self.links.clear()

    def freeze(self) -> None:
        for link in self.links:
            link.flowing.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self.links.append(link)
        await asyncio.gather(
            self._pump(reader, up_writer, link, self.heads), self._pump(up_reader, writer, link),
            return_exceptions=True,
        )
        link.abort()

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link,
        heads: list[bytes] | None = None,
    ) -> None:
        while True:
            await link.flowing.wait()
            data = await reader.read(65536)
            if not data:
                writer.transport.abort()
                return
            if heads is not None:
                heads.append(data)
                heads = None
            await link.flowing.wait()
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def tcp_proxy(upstream_port: int) -> AsyncIterator[Proxy]:
    proxy = Proxy(upstream_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


class FakeServer:
    """A few lines of mioket.v1 on ``websockets``, scripted by the test's ``handler``.

    Records each connection's ``Authorization`` header and request path (with query).
    """

    def __init__(self, handler: Callable[[ServerConnection, int], Awaitable[None]]) -> None:
        self.handler = handler
        self.connections: list[dict[str, Any]] = []
        self.port = 0

    def url(self, room: str = "lobby") -> str:
        return f"ws://127.0.0.1:{self.port}/{room}"

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.connections.append(
            {"authorization": ws.request.headers.get("Authorization"), "path": ws.request.path}
        )
        await self.handler(ws, len(self.connections))


@contextlib.asynccontextmanager
async def fake_server(
    handler: Callable[[ServerConnection, int], Awaitable[None]], **options: Any
) -> AsyncIterator[FakeServer]:
    fake = FakeServer(handler)
    async with serve(fake._handle, "127.0.0.1", 0, subprotocols=["mioket.v1"], **options) as srv:
        fake.port = next(iter(srv.sockets)).getsockname()[1]
        yield fake


def welcome(room: str = "lobby", epoch: str = "00000000000000e1", seq: int = 0, **extra: Any) -> str:
    return json.dumps({"type": "welcome", "room": room, "epoch": epoch, "seq": seq,
                       "online": 1, "text": None, **extra})


def message(seq: int, data: str, room: str = "lobby", **extra: Any) -> str:
    return json.dumps({"type": "message", "room": room, "seq": seq, "data": data, **extra})


PYTHON = sys.executable
