"""``python -m mioket_client URL`` against the real server: prints what comes, publishes
what is typed."""

from __future__ import annotations

import asyncio

import mioket_client
from conftest import LIMIT, PYTHON, mioket_server


async def test_cli_prints_messages_and_publishes_typed_lines() -> None:
    async with asyncio.timeout(LIMIT):
        async with mioket_server() as server:
            async with mioket_client.connect(server.url(), heartbeat=30) as client:
                room = await client.join("lobby")
                await room.publish("before the cli")  # history, printed on connect
                assert (await room.get()).seq == 1
                cli = await asyncio.create_subprocess_exec(
                    PYTHON, "-m", "mioket_client", server.url(),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                assert cli.stdin is not None and cli.stdout is not None
                try:
                    assert await cli.stdout.readline() == b"#1 before the cli\n"
                    await room.publish("from the test")
                    assert await cli.stdout.readline() == b"#2 from the test\n"
                    cli.stdin.write("typed by a user\n".encode())
                    await cli.stdin.drain()
                    await room.get()  # #2
                    typed = await room.get()
                    assert isinstance(typed, mioket_client.Message)
                    assert (typed.seq, typed.data) == (3, "typed by a user")
                    assert await cli.stdout.readline() == b"#3 typed by a user\n"
                    cli.stdin.close()  # end of input: the CLI closes and exits 0
                    assert await cli.wait() == 0
                finally:
                    if cli.returncode is None:
                        cli.kill()
                        await cli.wait()
