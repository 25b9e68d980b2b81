"""asyncio client for mioket's ``mioket.v1`` protocol.

    import asyncio, mioket_client

    async def main():
        async with mioket_client.connect("ws://127.0.0.1:8765/lobby") as client:
            room = await client.join("lobby")
            print("published as", await room.publish("hello"))
            async for item in room:
                if isinstance(item, mioket_client.Gap):
                    print("missed messages")
                else:
                    print(item.seq, item.sender, item.data)

    asyncio.run(main())

See README.md for the model: rooms resumed with exactly-once delivery across reconnects,
acks, the heartbeat, tokens and close codes.
"""

from .backoff import Backoff
from .client import Client, Event, Gap, Left, Message, Room, State, connect
from .errors import (
    ClientClosed,
    ClosedError,
    Disconnected,
    Forbidden,
    Gone,
    MioketError,
    ProtocolError,
    PublishTimeout,
    ServerError,
    Unauthorized,
)

__all__ = [
    "Backoff",
    "Client",
    "ClientClosed",
    "ClosedError",
    "Disconnected",
    "Event",
    "Forbidden",
    "Gap",
    "Gone",
    "Left",
    "Message",
    "MioketError",
    "ProtocolError",
    "PublishTimeout",
    "Room",
    "ServerError",
    "State",
    "Unauthorized",
    "connect",
]
