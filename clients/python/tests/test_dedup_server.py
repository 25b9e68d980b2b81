"""Publish ids against the real server (issue 23): the server publishes an id once per room
within its --dedup-window, so the client's ids are unique across connections, and a publish
retried with its id (the one its error carries) is published once."""

from __future__ import annotations

import asyncio
import re

import pytest

import mioket_client
from conftest import LIMIT, mioket_server, tcp_proxy, wait_until
from mioket_client import Backoff, Disconnected, PublishTimeout

FAST = {"backoff": Backoff(initial=0.02, maximum=0.1), "heartbeat": 30}
ID = re.compile(r"^p-[0-9a-f]{12}-\d+$")


async def test_two_clients_publishing_once_each_are_two_messages() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server:
            async with (
                mioket_client.connect(server.url(), **FAST) as reader,
                mioket_client.connect(server.url(), **FAST) as a,
                mioket_client.connect(server.url(), **FAST) as b,
            ):
                room = await reader.join("two")
                assert await (await a.join("two")).publish("from a") == 1
                assert await (await b.join("two")).publish("from b") == 2
                got = [await room.get() for _ in range(2)]
                assert [m.data for m in got] == ["from a", "from b"]


async def test_a_publish_retried_with_its_id_is_published_once() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server:
            async with (
                mioket_client.connect(server.url(), **FAST) as reader,
                mioket_client.connect(server.url(), **FAST) as writer,
            ):
                room = await reader.join("retry")
                out = await writer.join("retry")
                assert await out.publish("order 7", id="order-7") == 1
                assert await out.publish("order 7", id="order-7") == 1
                assert await out.publish("next") == 2
                got = [await room.get() for _ in range(2)]
                assert [(m.seq, m.data) for m in got] == [(1, "order 7"), (2, "next")]
                for bad in ["", "k" * 65]:
                    with pytest.raises(ValueError):
                        await out.publish("x", id=bad)


async def test_a_cut_before_the_ack_then_a_retry_with_the_errors_id_is_published_once() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server, tcp_proxy(server.port) as proxy:
            async with (
                mioket_client.connect(server.url(), **FAST) as reader,
                mioket_client.connect(proxy.url(), **FAST) as writer,
            ):
                room = await reader.join("cut")
                out = await writer.join("cut")
                # Sent, then the link is cut: perhaps published, surely not acked.
                publishing = asyncio.create_task(out.publish("exactly once"))
                await wait_until(lambda: publishing.done() or any(k.startswith("p-") for k in writer._pending))
                proxy.cut()
                try:
                    seq = await publishing
                except Disconnected as e:
                    assert e.id is not None and ID.match(e.id), e.id
                    seq = await out.publish("exactly once", id=e.id)
                assert seq == 1
                # A timeout carries its id too (or a disconnect, if the cut is noticed only now).
                proxy.freeze()
                with pytest.raises((PublishTimeout, Disconnected)) as raised:
                    await out.publish("stalled", timeout=0.2)
                assert raised.value.id is not None and ID.match(raised.value.id)
                assert await room.publish("after") == 2
                got = [await room.get() for _ in range(2)]
                assert [(m.seq, m.data) for m in got] == [(1, "exactly once"), (2, "after")]
