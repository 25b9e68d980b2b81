"""Tokens against the real server (issue 21), with HS256 JWTs made here and the server
started with --jwt-secret-file: get_token for every connection (``Authorization: Bearer``),
the welcome's user, the sender of messages, refresh before expiry, a 4001 at expiry
answered with a new token and a resume without gap or duplicate, 4401/4403 terminal, a
forbidden publish rejected. (test_tokens.py holds scripted cases against a fake server.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import mioket_client
from conftest import LIMIT, make_token, mioket_server, tcp_proxy, token_for, wait_until
from mioket_client import Backoff, ClosedError, Forbidden, Message, ServerError, Unauthorized

SECRET = b"the python client tests sign their tokens with this"
FAST: dict[str, Any] = {"backoff": Backoff(initial=0.02, maximum=0.1), "heartbeat": 30}


def token(sub: str, **kwargs: Any) -> str:
    return token_for(SECRET, sub, **kwargs)


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    return str(path)


def checking(secret_file: str, *args: str) -> tuple[str, ...]:
    """Server arguments: tokens checked with the test secret, no leeway on exp."""
    return ("--jwt-secret-file", secret_file, "--jwt-leeway", "0", *args)


async def test_a_token_for_every_connection_the_user_and_each_sender(secret_file: str) -> None:
    given: list[str] = []

    def get_token() -> str:
        given.append(token("alice", read=("lobby",), write=("lobby",)))
        return given[-1]

    args = checking(secret_file, "--anonymous-read", "*", "--anonymous-write", "*")
    async with asyncio.timeout(LIMIT):
        async with mioket_server(*args) as server, tcp_proxy(server.port) as proxy:
            async with mioket_client.connect(proxy.url(), get_token=get_token, **FAST) as reader, \
                    mioket_client.connect(server.url(), get_token=lambda: token("bob"), **FAST) as bob, \
                    mioket_client.connect(server.url(), **FAST) as anonymous:
                room = await reader.join("lobby")
                await wait_until(lambda: reader.user is not None and room.epoch is not None)
                assert reader.user == "alice" and room.read_only is False
                assert f"Authorization: Bearer {given[0]}\r\n".encode() in proxy.heads[0]
                bob_room = await bob.join("lobby")
                assert await bob_room.publish("hi from bob") == 1
                assert bob.user == "bob" and anonymous.user is None
                assert await (await anonymous.join("lobby")).publish("from nobody") == 2
                got = [await room.get(), await room.get()]
                assert [(m.seq, m.data, m.sender) for m in got if isinstance(m, Message)] == [
                    (1, "hi from bob", "bob"), (2, "from nobody", None),
                ]

                # A cut: the reconnect asks get_token again and sends the new token.
                proxy.cut()
                await wait_until(lambda: reader.connections == 2 and reader.state == "connected")
                assert len(given) == 2
                assert f"Authorization: Bearer {given[1]}\r\n".encode() in proxy.heads[1]
                assert await bob_room.publish("after the cut") == 3
                third = await room.get()
                assert isinstance(third, Message) and (third.seq, third.sender) == (3, "bob")
                assert room.gaps == 0 and room.recovered is True and reader.user == "alice"

            # History carries the senders too: a late reader without a token gets all three.
            async with mioket_client.connect(server.url(), **FAST) as late:
                room = await late.join("lobby")
                history = [await room.get() for _ in range(3)]
                assert [(m.seq, m.sender) for m in history if isinstance(m, Message)] == [
                    (1, "bob"), (2, None), (3, "bob"),
                ]


async def test_refreshed_before_expiry_one_connection_through_several_lifetimes(secret_file: str) -> None:
    calls: list[str] = []

    def get_token() -> str:
        calls.append(token("alice", ttl=4))  # lives 3-4 s (exp is a whole second)
        return calls[-1]

    async with asyncio.timeout(LIMIT):
        async with mioket_server(*checking(secret_file)) as server:
            async with mioket_client.connect(server.url(), get_token=get_token, **FAST) as client:
                room = await client.join("lobby")
                await asyncio.sleep(8)
                assert client.state == "connected" and client.connections == 1
                assert len(calls) >= 3, f"the connection's token and two refreshes at least: {len(calls)}"
                assert await room.publish("still allowed") == 1
                assert await server.metric("mioket_upgrades_total") == 1


async def test_4001_at_expiry_new_token_and_resume_without_gap_or_duplicate(secret_file: str) -> None:
    calls: list[str] = []
    sleeps: list[float] = []

    # The first token lives 1-2 s; refreshes fail (the token service is down), so the
    # server closes with 4001 at expiry; the reconnect's token is a long one.
    def get_token() -> str:
        if client.state == "connected":
            raise OSError("the token service is down")
        calls.append(token("alice", ttl=2 if not calls else 3600))
        return calls[-1]

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        await asyncio.sleep(delay)

    total = 400
    args = checking(secret_file, "--history", "1000")
    async with asyncio.timeout(LIMIT):
        async with mioket_server(*args) as server:
            client = mioket_client.Client(server.url(), get_token=get_token, sleep=sleep, **FAST)
            try:
                await client.start()
                room = await client.join("lobby")
                got: list[int] = []

                async def read() -> None:
                    async for item in room:
                        assert isinstance(item, Message), item
                        got.append(item.seq)
                        if len(got) == total:
                            return

                reading = asyncio.create_task(read())
                async with mioket_client.connect(
                    server.url(), get_token=lambda: token("walt"), **FAST,
                ) as writer:
                    out = await writer.join("lobby")
                    for i in range(1, total + 1):  # about 4 s: through the expiry
                        assert await out.publish(f"m{i}") == i
                        await asyncio.sleep(0.01)
                    await reading
                assert got == list(range(1, total + 1)), "every seq once, in order"
                assert room.gaps == 0 and room.recovered is True
                assert client.connections == 2 and len(calls) == 2
                assert sleeps == [], "reconnected at once, no backoff"
                assert await server.metric("mioket_upgrades_total") == 3  # the reader twice, the writer
            finally:
                await client.close()


OTHER_SECRET = make_token(b"another secret", {"sub": "mallory", "exp": 4_000_000_000, "rooms": {"read": ["*"]}})


@pytest.mark.parametrize(
    ("given", "args", "error", "code", "reason"),
    [
        ("not-a-jwt", (), Unauthorized, 4401, None),
        (OTHER_SECRET, (), Unauthorized, 4401, None),
        (None, ("--anonymous-read", "public/*"), Unauthorized, 4401, "token required"),
        ("eve", (), Forbidden, 4403, "forbidden"),
    ],
    ids=["garbage", "another-secret", "no-token", "not-readable"],
)
async def test_4401_and_4403_are_terminal(
    secret_file: str, given: str | None, args: tuple[str, ...], error: type, code: int, reason: str | None,
) -> None:
    calls: list[int] = []

    def get_token() -> str | None:
        calls.append(1)
        return token("eve", read=("elsewhere",), write=("elsewhere",)) if given == "eve" else given

    async with asyncio.timeout(LIMIT):
        async with mioket_server(*checking(secret_file, *args)) as server:
            # The upgrade succeeds (101) and the close follows: connect() may return first.
            try:
                client = await mioket_client.connect(server.url(), get_token=get_token, **FAST)
            except ClosedError as error_at_connect:
                stopped = error_at_connect
            else:
                stopped = await client.wait_closed()
                assert client.state == "closed"
            assert isinstance(stopped, error) and stopped.code == code, repr(stopped)
            if reason is not None:
                assert stopped.reason == reason
            upgraded = await server.metric("mioket_upgrades_total")
            await asyncio.sleep(1)  # many backoff delays: nothing is tried again
            assert len(calls) == 1, "get_token asked once: no second attempt"
            assert await server.metric("mioket_upgrades_total") == upgraded


async def test_a_forbidden_publish_is_rejected_and_nothing_is_published(secret_file: str) -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server(*checking(secret_file)) as server:
            async with mioket_client.connect(
                server.url(), get_token=lambda: token("rita", read=("lobby",), write=()), **FAST,
            ) as reader, mioket_client.connect(
                server.url(), get_token=lambda: token("walt", read=("lobby",), write=("lobby",)), **FAST,
            ) as writer:
                room = await reader.join("lobby")
                await wait_until(lambda: room.epoch is not None)
                assert room.read_only is True, "the welcome says read_only"
                with pytest.raises(ServerError) as raised:
                    await room.publish("not allowed")
                assert raised.value.reason == "forbidden"
                with pytest.raises(ServerError) as raised:
                    await reader.join("secret")  # not readable either
                assert raised.value.reason == "forbidden"
                assert reader.state == "connected" and reader.connections == 1

                # The writer's message is the room's first: the refused publish took no seq.
                assert await (await writer.join("lobby")).publish("allowed") == 1
                message = await room.get()
                assert isinstance(message, Message)
                assert (message.seq, message.data, message.sender) == (1, "allowed", "walt")
