"""``python -m mioket_client ws://127.0.0.1:8765/lobby``: print the room, publish what is typed."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading

from . import ClosedError, Gap, Left, MioketError, connect


def _show(text: str) -> None:
    print(text, flush=True)


def _read_lines(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str]) -> None:
    # a daemon thread: a blocked readline never holds the exit up
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line)
    loop.call_soon_threadsafe(lines.put_nowait, "")


async def _typed(client, room) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue()
    threading.Thread(target=_read_lines, args=(loop, lines), daemon=True).start()
    while True:
        line = await lines.get()
        if not line:
            return  # end of input
        line = line.rstrip("\n")
        if not line:
            continue
        try:
            seq = await room.publish(line)
            print(f"(sent #{seq})", file=sys.stderr, flush=True)
        except MioketError as error:
            print(f"(not sent: {error})", file=sys.stderr, flush=True)


async def _printed(client, room) -> None:  # type: ignore[no-untyped-def]
    async for item in room:
        if isinstance(item, Gap):
            _show("-- some messages were missed --")
            continue
        if isinstance(item, Left):
            _show(f"-- the server took the room away ({item.reason}) --")
            continue
        data = item.data if isinstance(item.data, str) else f"<{len(item.data)} bytes>"
        sender = f"{item.sender}: " if item.sender else ""
        _show(f"#{item.seq} {sender}{data}")


async def _main(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("MIOKET_TOKEN")
    get_token = (lambda: token) if token else None
    try:
        async with connect(args.url, get_token=get_token) as client:
            room = await client.join(client.path_room)
            print(f"(connected to room {room.name!r}; type to publish)", file=sys.stderr, flush=True)
            printer = asyncio.create_task(_printed(client, room))
            typist = asyncio.create_task(_typed(client, room))
            done, _ = await asyncio.wait({printer, typist}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            printer.cancel()
    except ClosedError as error:
        print(f"closed: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mioket_client",
        description="Print a mioket room's messages as they come; publish each line typed.",
    )
    parser.add_argument("url", help="ws://host:port/ROOM")
    parser.add_argument("--token", help="bearer token (default: $MIOKET_TOKEN)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
