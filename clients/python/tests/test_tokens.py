"""The token contract of issue 21 against a fake mioket.v1 server, for what the real server
does not do on demand (test_tokens_server.py runs the contract against the real one):
bearer tokens per connection, refresh before expiry, 4001 = new token and reconnect at
once, 4401/4403/4410 and HTTP 401/403 terminal, get_token raising Unauthorized, a refresh
with the token in use not sent, read_only passed on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

import mioket_client
from conftest import LIMIT, fake_server, message, wait_until, welcome
from mioket_client import Backoff, Forbidden, Gone, Message, ServerError, Unauthorized


def tokens() -> Any:
    calls: list[str] = []

    async def get_token() -> str:
        await asyncio.sleep(0)  # async sources work; sync ones too (below)
        calls.append(f"t{len(calls) + 1}")
        return calls[-1]

    return get_token, calls


async def no_backoff_sleep(delay: float) -> None:
    raise AssertionError(f"backoff sleep {delay} where none was due")


async def test_token_sent_refreshed_before_expiry_and_sender_told() -> None:
    refreshes: list[tuple[float, str]] = []
    welcomed: list[float] = []

    async def handler(ws: ServerConnection, n: int) -> None:
        loop = asyncio.get_running_loop()
        await ws.send(welcome(user="alice", expires_in=1))
        welcomed.append(loop.time())
        await ws.send(message(1, "hi", **{"from": "bob"}))
        async for frame in ws:
            op = json.loads(frame)
            if op["op"] == "refresh":
                refreshes.append((loop.time(), op["token"]))
                await ws.send(json.dumps({"type": "refreshed", "expires_in": 1}))

    get_token, calls = tokens()
    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            async with mioket_client.connect(fake.url(), get_token=get_token, heartbeat=30) as client:
                room = await client.join("lobby")
                got = await room.get()
                assert got == Message("lobby", "00000000000000e1", 1, "hi", "bob")
                assert got.sender == "bob" and client.user == "alice"
                await wait_until(lambda: len(refreshes) >= 2, timeout=5)
                assert fake.connections[0]["authorization"] == "Bearer t1"
                assert [token for _, token in refreshes[:2]] == ["t2", "t3"]
                # each refresh came before the token's 1 s ran out
                assert refreshes[0][0] - welcomed[0] < 1.0
                assert refreshes[1][0] - refreshes[0][0] < 1.0
                assert len(fake.connections) == 1 and client.expires_in == 1


async def test_4001_gets_a_new_token_and_reconnects_at_once_resuming() -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.send(welcome(seq=2, expires_in=60))
            await ws.send(message(1, "a"))
            await ws.send(message(2, "b"))
            await ws.close(4001, "token expired")
        else:
            await ws.send(welcome(seq=3, recovered=True, expires_in=60))
            await ws.send(message(3, "c"))
            await ws.wait_closed()

    get_token, calls = tokens()
    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            async with mioket_client.connect(
                fake.url(), get_token=get_token, heartbeat=30, sleep=no_backoff_sleep,
            ) as client:
                room = await client.join("lobby")
                assert [(await room.get()).seq for _ in range(2)] == [1, 2]
                # the server closed with 4001 (token expired): t2, at once, resuming
                got = await room.get()
                assert (got.seq, got.data) == (3, "c")
                assert [c["authorization"] for c in fake.connections] == ["Bearer t1", "Bearer t2"]
                assert "since=2" in fake.connections[1]["path"]
                assert "epoch=00000000000000e1" in fake.connections[1]["path"]
                assert room.gaps == 0 and client.connections == 2


@pytest.mark.parametrize(
    ("code", "error"), [(4401, Unauthorized), (4403, Forbidden), (4410, Gone)]
)
async def test_terminal_close_codes_stop_for_good(code: int, error: type) -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(welcome(seq=1))
        await ws.send(message(1, "last"))
        await ws.close(code, "no more")

    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            async with mioket_client.connect(
                fake.url(), get_token=lambda: "tok", heartbeat=30, sleep=no_backoff_sleep,
            ) as client:
                room = await client.join("lobby")
                items = []
                with pytest.raises(error) as raised:
                    async for item in room:
                        items.append(item)
                assert [m.data for m in items] == ["last"]  # queued messages come first
                assert raised.value.code == code and raised.value.reason == "no more"
                assert client.state == "closed" and client.error is raised.value
                assert client._task is not None and client._task.done()  # no more attempts
                with pytest.raises(error):
                    await room.publish("x")
                with pytest.raises(error):
                    await client.join("other")
                assert len(fake.connections) == 1


async def test_get_token_raising_unauthorized_stops_before_connecting() -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        raise AssertionError("no connection expected")

    def get_token() -> str:
        raise Unauthorized("logged out")

    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            with pytest.raises(Unauthorized, match="logged out"):
                async with mioket_client.connect(fake.url(), get_token=get_token):
                    pass
            assert fake.connections == []


async def test_get_token_failing_otherwise_is_retried_with_backoff() -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(welcome())
        await ws.wait_closed()

    attempts: list[int] = []

    def get_token() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("auth service down")
        return "ok"

    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            async with mioket_client.connect(
                fake.url(), get_token=get_token, sleep=sleep, heartbeat=30,
                backoff=Backoff(random=lambda: 0.5),
            ):
                assert len(delays) == 2 and delays == [0.25, 0.5]
                assert [c["authorization"] for c in fake.connections] == ["Bearer ok"]


@pytest.mark.parametrize(("status", "error"), [(401, Unauthorized), (403, Forbidden)])
async def test_a_refused_upgrade_401_or_403_is_terminal(status: int, error: type) -> None:
    def refuse(connection: Any, request: Any) -> Response:
        return Response(status, "Refused", Headers([("Content-Length", "9")]), b"bad token")

    async def handler(ws: ServerConnection, n: int) -> None:
        raise AssertionError("no upgrade expected")

    async with asyncio.timeout(LIMIT):
        async with fake_server(handler, process_request=refuse) as fake:
            with pytest.raises(error) as raised:
                await mioket_client.connect(fake.url(), get_token=lambda: "t", sleep=no_backoff_sleep)
            assert raised.value.code == status and raised.value.reason == "bad token"


async def test_an_error_answer_rejects_the_publish() -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(welcome())
        async for frame in ws:
            op = json.loads(frame)
            if op["op"] == "publish":
                await ws.send(json.dumps({"type": "error", "id": op["id"], "reason": "forbidden"}))

    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            async with mioket_client.connect(fake.url(), heartbeat=30) as client:
                room = await client.join("lobby")
                with pytest.raises(ServerError) as raised:
                    await room.publish("no")
                assert raised.value.reason == "forbidden"
                assert client.state == "connected"


async def test_a_refresh_that_gets_the_token_in_use_sends_nothing() -> None:
    """One fixed token (a script's): refreshing with it would refresh nothing, and with a
    shrinking ``expires_in`` would come ever faster. ``read_only`` is passed on."""
    ops: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(welcome(user="rita", expires_in=1, read_only=True))
        async for frame in ws:
            ops.append(json.loads(frame))

    calls: list[int] = []

    def get_token() -> str:
        calls.append(1)
        return "the-one-token"

    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            async with mioket_client.connect(fake.url(), get_token=get_token, heartbeat=30) as client:
                room = await client.join("lobby")
                await wait_until(lambda: len(calls) >= 2, timeout=5)  # the refresh asked
                await asyncio.sleep(0.3)
                assert room.read_only is True and client.user == "rita"
                assert [op for op in ops if op["op"] == "refresh"] == []
