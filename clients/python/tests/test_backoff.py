"""Full-jitter backoff: bounds, growth, reset after a stable connection; an injected random
source, sleep and clock (no wall time)."""

from __future__ import annotations

import asyncio
import itertools
import random

from websockets.asyncio.server import ServerConnection

import mioket_client
from conftest import LIMIT, fake_server, wait_until, welcome
from mioket_client import Backoff


def test_caps_double_from_half_a_second_to_twenty() -> None:
    backoff = Backoff(random=lambda: 1.0)  # the top of each draw: the caps themselves
    assert [backoff.next() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 20, 20, 20]
    backoff.reset()
    assert backoff.next() == 0.5
    zero = Backoff(random=lambda: 0.0)
    assert [zero.next() for _ in range(3)] == [0, 0, 0]


def test_full_jitter_stays_within_bounds_and_uses_the_whole_range() -> None:
    draws = random.Random(22)
    backoff = Backoff(random=draws.random)
    for attempt in range(200):
        cap = backoff.cap(backoff.attempt)
        delay = backoff.next()
        assert 0 <= delay <= cap <= 20
        assert cap == min(20, 0.5 * 2**attempt)
    # late delays spread over [0, 20], not bunched at the top
    late = Backoff(random=random.Random(7).random)
    late.attempt = 10
    sample = [late.next() for _ in range(500)]
    assert min(sample) < 2 and max(sample) > 18


async def test_the_client_waits_backoff_delays_and_resets_after_a_stable_connection() -> None:
    now = [0.0]
    lifetimes = iter([0, 0, 0, 60, 0])  # how long each connection lasts, by the fake clock

    clients: list[mioket_client.Client] = []

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(welcome())
        await wait_until(lambda: clients[0].connections == n)  # it took its clock reading
        now[0] += next(lifetimes, 0)
        await ws.close(1011, "going")

    delays: list[float] = []
    gate = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) >= 5:
            await gate.wait()  # park the loop: the test has what it needs

    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            client = mioket_client.Client(
                fake.url(), heartbeat=30, sleep=sleep, clock=lambda: now[0],
                stable_after=10, backoff=Backoff(random=lambda: 1.0),
            )
            clients.append(client)
            try:
                await client.start()
                await wait_until(lambda: len(delays) >= 5)
                # attempts 0, 1, 2 fail fast; the 4th lasted 60 s: back to 0.5 s
                assert delays == [0.5, 1, 2, 0.5, 1]
                assert client.state == "disconnected"
            finally:
                await client.close()
            assert client.state == "closed"


async def test_a_second_4001_in_a_row_backs_off() -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(welcome())
        await ws.close(4001, "token expired")

    delays: list[float] = []
    counter = itertools.count(1)

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0.01)

    async with asyncio.timeout(LIMIT):
        async with fake_server(handler) as fake:
            async with mioket_client.connect(
                fake.url(), heartbeat=30, sleep=sleep, get_token=lambda: f"t{next(counter)}",
                backoff=Backoff(random=lambda: 1.0),
            ):
                await wait_until(lambda: len(fake.connections) >= 4)
                # the 1st 4001: a new token at once; a 4001 again right after it (a server
                # that keeps refusing new tokens): with backoff
                assert delays[:2] == [0.5, 1.0]
                auth = [c["authorization"] for c in fake.connections[:4]]
                assert auth == ["Bearer t1", "Bearer t2", "Bearer t3", "Bearer t4"]
