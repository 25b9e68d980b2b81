"""presence() and the server's ``left`` (issue 22) against the real server, with HS256
tokens made here: ``await room.presence()`` asks the server and lists the users with their
connection counts and info; a moderation removal (``DELETE /api/rooms/{room}/users/{user}``)
yields ``Left`` with reason ``removed``, later publishes fail, and the room is not joined
again after a reconnect."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

import mioket_client
from conftest import LIMIT, fake_server, make_token, mioket_server, tcp_proxy, wait_until, welcome
from mioket_client import Backoff, ClientClosed, Left, Message, MioketError

SECRET = b"the python presence tests sign their tokens with this"
FAST: dict[str, Any] = {"backoff": Backoff(initial=0.02, maximum=0.1), "heartbeat": 30}


def token(sub: str, info: dict[str, Any] | None = None) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 3600, "rooms": {"read": ["*"], "write": ["*"]}}
    if info is not None:
        claims["info"] = info
    return make_token(SECRET, claims)


@pytest.fixture
def args(tmp_path: Path) -> tuple[str, ...]:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    return ("--jwt-secret-file", str(path), "--api-token", "t", "--welcome", "")


async def api(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(payload) if payload.strip() else None


async def test_presence_lists_two_users_with_their_connections_and_info(args: tuple[str, ...]) -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server(*args) as server:
            alice = lambda: token("alice", {"name": "Alice"})  # noqa: E731
            async with mioket_client.connect(server.url(), get_token=alice, **FAST) as a1, \
                    mioket_client.connect(server.url(), get_token=alice, **FAST) as a2, \
                    mioket_client.connect(server.url(), get_token=lambda: token("bob"), **FAST) as bob:
                for client in (a1, a2):
                    await client.join("lobby")
                room = await bob.join("lobby")
                await wait_until(lambda: room.epoch is not None)
                answer = await room.presence()
                assert answer == {
                    "room": "lobby",
                    "online": 3,
                    "users": [
                        {"user": "alice", "info": {"name": "Alice"}, "connections": 2},
                        {"user": "bob", "connections": 1},
                    ],
                }
                assert room.online == 3
                await room.leave()
                with pytest.raises(MioketError, match="was left"):
                    await room.presence()


async def test_presence_raises_once_the_client_stopped(args: tuple[str, ...]) -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server(*args) as server:
            async with mioket_client.connect(server.url(), get_token=lambda: token("carol"), **FAST) as client:
                room = await client.join("lobby")
                await client.close()
                with pytest.raises(ClientClosed):
                    await room.presence(timeout=1)


async def test_a_removal_yields_left_and_the_room_is_not_rejoined(args: tuple[str, ...]) -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server(*args) as server, tcp_proxy(server.port) as proxy:
            async with mioket_client.connect(proxy.url("other"), get_token=lambda: token("dave"), **FAST) as client:
                other = await client.join("other")
                lobby = await client.join("lobby")
                await wait_until(lambda: lobby.epoch is not None and other.epoch is not None)
                status, body = await api(server.port, "DELETE", "/api/rooms/lobby/users/dave")
                assert (status, body) == (200, {"room": "lobby", "user": "dave", "connections": 1})
                assert await lobby.get(timeout=LIMIT) == Left("lobby", "removed")
                with pytest.raises(StopAsyncIteration):
                    await lobby.get(timeout=LIMIT)
                assert lobby.left_reason == "removed" and client.room("lobby") is None
                with pytest.raises(MioketError, match="was left"):
                    await lobby.publish("late")
                # reconnect: other is joined again, lobby is not
                connections = client.connections
                proxy.cut()
                await wait_until(lambda: client.connections > connections and client.state == "connected")
                await api(server.port, "POST", "/api/rooms/lobby/messages", b"not for dave")
                await api(server.port, "POST", "/api/rooms/other/messages", b"for dave")
                got = await other.get(timeout=LIMIT)
                if not isinstance(got, Message):  # the empty room was made anew meanwhile: a gap
                    got = await other.get(timeout=LIMIT)
                assert isinstance(got, Message) and got.data == "for dave"
                status, presence = await api(server.port, "GET", "/api/rooms/lobby/presence")
                assert status == 200 and presence["online"] == 0


async def test_a_publish_waiting_for_its_ack_fails_when_the_server_takes_the_room_away() -> None:
    """A scripted server that never acks and answers a publish in ``news`` with
    ``left``/``forbidden``: the publish fails, ``Left`` ends the room, and the next
    connection does not join it again."""
    joins: list[str] = []
    sockets: list[ServerConnection] = []

    async def handler(ws: ServerConnection, n: int) -> None:
        sockets.append(ws)
        await ws.send(welcome())
        async for frame in ws:
            op = json.loads(frame)
            if op["op"] == "join":
                joins.append(op["room"])
                await ws.send(welcome(room=op["room"]))
            elif op["op"] == "publish":
                await ws.send(json.dumps({"type": "left", "room": op["room"], "reason": "forbidden"}))

    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            async with mioket_client.connect(fake.url(), heartbeat=30, **{"backoff": FAST["backoff"]}) as client:
                news = await client.join("news")
                with pytest.raises(MioketError, match="was left"):
                    await news.publish("x", timeout=LIMIT)
                assert await news.get(timeout=LIMIT) == Left("news", "forbidden")
                assert client.room("news") is None and joins == ["news"]
                await sockets[0].close(1011, "going away")  # a reconnect: news is not joined again
                await wait_until(lambda: len(fake.connections) == 2 and client.state == "connected")
                await asyncio.sleep(0.2)
                assert joins == ["news"]
