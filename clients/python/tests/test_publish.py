"""Acks, errors, timeouts and disconnects of publish; presence; against the real server."""

from __future__ import annotations

import asyncio

import pytest

import mioket_client
from conftest import LIMIT, mioket_server, tcp_proxy, wait_until
from mioket_client import (
    Backoff,
    Disconnected,
    Message,
    ProtocolError,
    PublishTimeout,
    ServerError,
)

FAST = {"backoff": Backoff(initial=0.02, maximum=0.1), "heartbeat": 30}


async def test_publish_returns_the_acked_seq_and_the_message_comes_back() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server:
            async with mioket_client.connect(server.url(), **FAST) as client:
                room = await client.join("lobby")
                assert client.room("lobby") is room
                assert await room.publish("one") == 1
                assert await room.publish(b"\x00\x01\xff") == 2
                assert await room.publish("three") == 3
                got = [await room.get() for _ in range(3)]
                assert got == [
                    Message("lobby", room.epoch, 1, "one"),
                    Message("lobby", room.epoch, 2, b"\x00\x01\xff"),
                    Message("lobby", room.epoch, 3, "three"),
                ]
                assert got[0].sender is None


async def test_join_errors_are_raised_and_presence_is_followed() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server:
            async with mioket_client.connect(server.url(), **FAST) as client:
                with pytest.raises(ServerError) as raised:
                    await client.join("bad\x01name")
                assert raised.value.reason == "invalid room name"
                assert client.room("bad\x01name") is None
                room = await client.join("lobby")
                assert room.online == 1
                async with mioket_client.connect(server.url(), **FAST) as other:
                    assert (await other.join("lobby")).online == 2
                    await wait_until(lambda: room.online == 2, timeout=5)
                await wait_until(lambda: room.online == 1, timeout=5)


async def test_publish_rejected_on_disconnect_before_the_ack() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server, tcp_proxy(server.port) as proxy:
            async with mioket_client.connect(proxy.url(), **FAST) as client:
                room = await client.join("lobby")
                assert await room.publish("before") == 1
                proxy.freeze()  # the publish goes out but no ack can come back
                publishing = asyncio.create_task(room.publish("lost?"))
                await wait_until(lambda: any(k.startswith("p-") for k in client._pending))
                proxy.cut()
                with pytest.raises(Disconnected):
                    await publishing
                # the client reconnects by itself and publishing works again
                assert await room.publish("after") >= 2


async def test_publish_times_out_without_an_ack() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server, tcp_proxy(server.port) as proxy:
            async with mioket_client.connect(proxy.url(), **FAST) as client:
                room = await client.join("lobby")
                proxy.freeze()
                with pytest.raises(PublishTimeout):
                    await room.publish("stuck", timeout=0.2)
                assert isinstance(PublishTimeout(), TimeoutError)


async def test_leave_ends_the_iteration_and_stops_the_messages() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server:
            async with mioket_client.connect(server.url("home"), **FAST) as client, \
                    mioket_client.connect(server.url("news"), **FAST) as writer:
                news = await client.join("news")
                out = await writer.join("news")
                await out.publish("a")
                assert (await news.get()).data == "a"
                await news.leave()
                with pytest.raises(StopAsyncIteration):
                    await news.get()
                assert client.room("news") is None
                await out.publish("b")
                again = await client.join("news")
                assert again is not news
                got = [await again.get() for _ in range(2)]  # a fresh join: the history
                assert [m.data for m in got] == ["a", "b"]


async def test_a_server_without_mioket_v1_is_a_protocol_error() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server("--mode", "echo") as server:
            with pytest.raises(ProtocolError):
                await mioket_client.connect(server.url(), heartbeat=30)
