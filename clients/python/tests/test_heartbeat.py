"""The mioket.v1 heartbeat: a dead link (the proxy stops forwarding) is noticed in time."""

from __future__ import annotations

import asyncio

import mioket_client
from conftest import LIMIT, mioket_server, tcp_proxy, wait_until
from mioket_client import Backoff

HEARTBEAT = 0.3
TIMEOUT = 0.3


async def test_dead_link_is_noticed_and_the_client_resumes() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server, tcp_proxy(server.port) as proxy:
            states: list[str] = []
            async with mioket_client.connect(
                proxy.url(), heartbeat=HEARTBEAT, heartbeat_timeout=TIMEOUT,
                backoff=Backoff(initial=0.02, maximum=0.1), on_state=states.append,
            ) as client, mioket_client.connect(server.url(), heartbeat=30) as writer:
                room = await client.join("lobby")
                out = await writer.join("lobby")
                # an idle but live link: pings are answered with pongs (a server without
                # the op answers an error, which is life too) and nothing reconnects
                await wait_until(lambda: client.pongs >= 3)
                assert client.connections == 1 and client.state == "connected"
                proxy.freeze()
                loop = asyncio.get_running_loop()
                frozen_at = loop.time()
                await client.wait_state("disconnected", "connecting")
                noticed = loop.time() - frozen_at
                assert noticed <= HEARTBEAT + TIMEOUT + 1.0, noticed
                await out.publish("while dead")
                await client.wait_state("connected")
                assert client.connections == 2
                got = await room.get()
                assert (got.seq, got.data) == (1, "while dead")
                assert room.recovered is True and room._queue.empty()
                assert states[:3] == ["connecting", "connected", "disconnected"]
