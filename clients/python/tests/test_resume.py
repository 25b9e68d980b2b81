"""Resume against the real server: exactly-once across cuts, gaps told, a new epoch."""

from __future__ import annotations

import asyncio
import contextlib

import mioket_client
from conftest import LIMIT, mioket_server, tcp_proxy, wait_until
from mioket_client import Backoff, Gap, Message

FAST = {"backoff": Backoff(initial=0.02, maximum=0.1), "heartbeat": 30}


async def test_exactly_once_across_cuts_while_1000_are_published() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server("--history", "1000") as server, tcp_proxy(server.port) as proxy:
            async with mioket_client.connect(proxy.url(), **FAST) as reader, \
                    mioket_client.connect(server.url(), **FAST) as writer:
                room = await reader.join("lobby")
                out = await writer.join("lobby")
                received: list[Message] = []
                cut_at = {300, 650}

                async def read() -> None:
                    async for item in room:
                        assert isinstance(item, Message), item
                        received.append(item)
                        if len(received) in cut_at:
                            proxy.cut()  # the reader's link dies mid-stream
                        if len(received) == 1000:
                            return

                reading = asyncio.create_task(read())
                acks = [await out.publish(f"m{i}") for i in range(1, 1001)]
                await reading
                assert acks == list(range(1, 1001))
                assert [m.seq for m in received] == list(range(1, 1001))
                assert [m.data for m in received] == [f"m{i}" for i in range(1, 1001)]
                assert reader.connections >= 3 and proxy.accepted >= 3
                assert room.gaps == 0 and room.recovered is True


async def test_gap_told_when_the_history_is_too_short() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server("--history", "5") as server, tcp_proxy(server.port) as proxy:
            async with mioket_client.connect(proxy.url(), **FAST) as reader, \
                    mioket_client.connect(server.url(), **FAST) as writer:
                room = await reader.join("lobby")
                out = await writer.join("lobby")
                for i in range(1, 4):
                    await out.publish(f"m{i}")
                assert [(await room.get()).seq for _ in range(3)] == [1, 2, 3]
                epoch = room.epoch
                proxy.refuse = True
                proxy.cut()
                await reader.wait_state("disconnected", "connecting")
                for i in range(4, 24):
                    await out.publish(f"m{i}")
                proxy.refuse = False
                gap = await room.get()
                assert gap == Gap("lobby", epoch, epoch, 3)
                rest = [await room.get() for _ in range(5)]
                assert [m.seq for m in rest] == [19, 20, 21, 22, 23]
                assert [m.data for m in rest] == [f"m{i}" for i in range(19, 24)]
                assert room.recovered is False and room.gaps == 1
                assert room._queue.empty()


async def test_new_epoch_after_a_server_restart_is_a_gap_and_numbering_restarts() -> None:
    async with asyncio.timeout(LIMIT), contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(mioket_server())
        proxy = await stack.enter_async_context(tcp_proxy(first.port))
        reader = await stack.enter_async_context(mioket_client.connect(proxy.url(), **FAST))
        room = await reader.join("lobby")
        async with mioket_client.connect(first.url(), **FAST) as writer:
            out = await writer.join("lobby")
            for i in range(1, 6):
                await out.publish(f"old{i}")
        assert [(await room.get()).seq for _ in range(5)] == [1, 2, 3, 4, 5]
        old_epoch = room.epoch
        proxy.refuse = True
        proxy.cut()
        await reader.wait_state("disconnected", "connecting")
        first.proc.terminate()  # the room and its epoch are gone
        await first.proc.wait()
        async with mioket_server() as second:
            proxy.upstream_port = second.port
            async with mioket_client.connect(second.url(), **FAST) as writer:
                out = await writer.join("lobby")
                assert [await out.publish(f"new{i}") for i in (1, 2)] == [1, 2]
                proxy.refuse = False
                gap = await room.get()
                assert isinstance(gap, Gap)
                assert gap.previous_epoch == old_epoch and gap.after_seq == 5
                assert gap.epoch != old_epoch
                got = [await room.get() for _ in range(2)]
                assert [(m.epoch, m.seq, m.data) for m in got] == [
                    (gap.epoch, 1, "new1"), (gap.epoch, 2, "new2")]
                assert room.recovered is False


async def test_a_joined_room_resumes_with_the_join_op() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server, tcp_proxy(server.port) as proxy:
            async with mioket_client.connect(proxy.url("home"), **FAST) as reader, \
                    mioket_client.connect(server.url("news"), **FAST) as writer:
                news = await reader.join("news")
                assert news.epoch is not None and news.online == 2
                out = await writer.join("news")
                await out.publish("n1")
                assert (await news.get()).data == "n1"
                proxy.refuse = True
                proxy.cut()
                await reader.wait_state("disconnected", "connecting")
                await out.publish("n2")
                await out.publish("n3")
                proxy.refuse = False
                await reader.wait_state("connected")
                got = [await news.get() for _ in range(2)]
                assert [(m.seq, m.data) for m in got] == [(2, "n2"), (3, "n3")]
                await wait_until(lambda: news.recovered is True)
                assert news.gaps == 0
                await out.publish("n4")
                assert (await news.get()).seq == 4
                assert news._queue.empty()


async def test_a_position_kept_by_the_application_resumes_in_join_and_url() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server:
            async with mioket_client.connect(server.url("news"), **FAST) as writer:
                out = await writer.join("news")
                for i in range(1, 5):
                    await out.publish(f"n{i}")
                epoch = out.epoch
                assert epoch is not None
                # join op: since 2 of the right epoch -> 3, 4 and recovered
                async with mioket_client.connect(server.url("home"), **FAST) as client:
                    news = await client.join("news", since=2, epoch=epoch)
                    got = [await news.get() for _ in range(2)]
                    assert [m.seq for m in got] == [3, 4] and news.recovered is True
                    stale = await client.join("stale", since=7, epoch="0123456789abcdef")
                    assert stale.recovered is False  # a gap: another epoch
                # the URL's room: the position in the query
                url = f"{server.url('news')}?since=3&epoch={epoch}"
                async with mioket_client.connect(url, **FAST) as client:
                    news = await client.join("news")
                    got = await news.get()
                    assert (got.seq, got.data) == (4, "n4") and news.recovered is True
                async with mioket_client.connect(f"{server.url('news')}?since=3&epoch=ffffffffffffffff", **FAST) as client:
                    news = await client.join("news")
                    gap = await news.get()
                    assert gap == Gap("news", epoch, "ffffffffffffffff", 3)
                    assert [(await news.get()).seq for _ in range(4)] == [1, 2, 3, 4]
