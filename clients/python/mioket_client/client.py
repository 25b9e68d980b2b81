"""The mioket.v1 client: one connection, many rooms, resumed across reconnects."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Union
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from .backoff import Backoff
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

log = logging.getLogger("mioket_client")

#: The longest publish id the server takes (bytes of UTF-8).
MAX_ID = 64

State = Literal["disconnected", "connecting", "connected", "closed"]
TokenSource = Callable[[], Union[str, None, Awaitable[Union[str, None]]]]

SUBPROTOCOL = "mioket.v1"

#: Close codes after which the client gets a new token and reconnects at once.
RETRY_WITH_NEW_TOKEN = {4001}
#: Close codes (and HTTP statuses of a refused upgrade) that stop the client for good.
TERMINAL: dict[int, type[ClosedError]] = {
    4401: Unauthorized,
    4403: Forbidden,
    4410: Gone,
    401: Unauthorized,
    403: Forbidden,
}


@dataclass(frozen=True)
class Message:
    """A message of a room, delivered once, in seq order."""

    room: str
    epoch: str
    seq: int
    #: ``str`` for a text payload, ``bytes`` for a binary one.
    data: str | bytes
    #: The sender's token subject (the envelope's ``from``), ``None`` without a token.
    sender: str | None = None
    #: The envelope as received (fields this version does not know included).
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Gap:
    """The server could not resume the room (``recovered:false``): messages may be missing.

    Messages after it come from the room's retained history of ``epoch``. ``previous_epoch``
    and ``after_seq`` are where the client had got to; when the epoch changed, the room was
    made anew and its numbering starts again.
    """

    room: str
    epoch: str
    previous_epoch: str | None
    after_seq: int


@dataclass(frozen=True)
class Left:
    """The server took the room away: ``reason`` is ``forbidden`` (a refreshed token no
    longer reads it) or ``removed`` (a moderator removed the user). It is the room's last
    event, and the room is not joined again on a reconnect (as after :meth:`Room.leave`)."""

    room: str
    reason: str


Event = Union[Message, Gap, Left]


class _End:
    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


class Room:
    """A room of a client. ``async for item in room`` yields :class:`Message` and :class:`Gap`.

    Iteration ends (``StopAsyncIteration``) after :meth:`leave` or ``client.close()``, and
    raises the :class:`ClosedError` that stopped the client otherwise.
    """

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name
        #: The room's epoch, once known.
        self.epoch: str | None = None
        #: The seq of the last message delivered (put in this room's queue).
        self.seq = 0
        #: Members online, from the welcome and presence envelopes.
        self.online: int | None = None
        #: The last welcome's ``recovered`` (``None`` when it did not ask to resume).
        self.recovered: bool | None = None
        #: The last welcome's ``text`` (the server's --welcome).
        self.welcome_text: str | None = None
        #: The last welcome's ``read_only``: this connection may not publish here.
        self.read_only = False
        #: How many gaps were told.
        self.gaps = 0
        #: Why the server took the room away (``forbidden``, ``removed``), once it did.
        self.left_reason: str | None = None
        self._wanted = True
        self._gap_open = False
        self._queue: asyncio.Queue[Event | _End] = asyncio.Queue()

    def __repr__(self) -> str:
        return f"<Room {self.name!r} epoch={self.epoch} seq={self.seq}>"

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later read ends too
            if item.exc is not None:
                raise item.exc
            raise StopAsyncIteration
        return item

    async def get(self, timeout: float | None = None) -> Event:
        """The next message or gap (``StopAsyncIteration`` when the room ended)."""
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    async def messages(self) -> AsyncIterator[Message]:
        """Only the messages (gaps are still counted in ``gaps``)."""
        async for item in self:
            if isinstance(item, Message):
                yield item

    async def publish(self, data: str | bytes, *, timeout: float | None = None, id: str | None = None) -> int:
        """Publish ``data`` to the room and return its seq once the server acked it.

        Waits for a connection if the client is reconnecting. Raises :class:`ServerError`
        on an error answer, :class:`PublishTimeout` when no ack came in ``timeout``
        (default: the client's ``publish_timeout``), :class:`Disconnected` when the link
        was lost before the ack, :class:`ClosedError` when the client stopped. Those
        three carry the publish's ``id``: publishing again with ``id=`` is safe (the server
        publishes an id once per room within its ``--dedup-window`` and answers a repeat
        with the first seq). Without ``id`` the publish gets a new one, unique across
        connections (a random prefix per client and a counter).
        It is never retried automatically: see the README.
        """
        return await self._client._publish(self, data, timeout, id)

    async def presence(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Ask the server who is in the room (the ``presence`` op) and return its answer:
        ``{"room", "online", "users": [{"user", "info"?, "connections"}], "truncated"?}``.

        Waits for a connection like :meth:`publish`. Raises :class:`ServerError` on an
        error answer (e.g. ``forbidden``), :class:`PublishTimeout` when no answer came in
        ``timeout`` (default: the client's ``publish_timeout``), :class:`Disconnected` when
        the link was lost first, :class:`MioketError` when the room was left.
        """
        return await self._client._presence(self, timeout)

    async def leave(self) -> None:
        """Leave the room: no more messages; iteration ends after the queued ones."""
        await self._client._leave(self)

    def _end(self, exc: BaseException | None) -> None:
        self._queue.put_nowait(_End(exc))


class Client:
    """A mioket.v1 client. Use :func:`connect` to make one.

    ``url`` is ``ws://host:port/ROOM``: the path's room is joined by the upgrade (it is
    ``client.join(ROOM)``'s room). Keyword arguments:

    - ``get_token``: called (sync or async) before every connection and before the token
      expires; returns the token (sent as ``Authorization: Bearer``) or ``None`` (a refresh
      that gets ``None`` or the token in use sends nothing). Raising
      :class:`Unauthorized` stops the client for good; other exceptions count as a failed
      attempt (backoff).
    - ``heartbeat`` / ``heartbeat_timeout``: after ``heartbeat`` s without any frame the
      client sends a ``ping`` op; when still nothing arrived ``heartbeat_timeout`` s later,
      the link is dead: it is dropped and the client reconnects.
    - ``publish_timeout``: default timeout of :meth:`Room.publish` and :meth:`join`.
    - ``backoff``: a :class:`Backoff` (full jitter, 0.5 s to 20 s by default);
      ``stable_after``: a connection that lasted this long resets it.
    - ``refresh_margin``: refresh the token this long before it expires (at most half
      its lifetime).
    - ``on_state``: called with the new state on every change.
    - ``sleep`` / ``clock``: injectable for tests (the backoff's sleep, the monotonic clock).
    """

    def __init__(
        self,
        url: str,
        *,
        get_token: TokenSource | None = None,
        heartbeat: float = 10.0,
        heartbeat_timeout: float = 5.0,
        publish_timeout: float = 10.0,
        backoff: Backoff | None = None,
        stable_after: float = 10.0,
        refresh_margin: float = 30.0,
        open_timeout: float = 10.0,
        on_state: Callable[[State], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        websocket_options: dict[str, Any] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws:// or wss:// URL: {url}")
        self.url = url
        self._parts = parts
        self.path_room = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        self._get_token = get_token
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.publish_timeout = publish_timeout
        self.backoff = backoff or Backoff()
        self.stable_after = stable_after
        self.refresh_margin = refresh_margin
        self.open_timeout = open_timeout
        self._on_state = on_state
        self._sleep = sleep
        self._clock = clock
        self._ws_options = websocket_options or {}

        self.state: State = "disconnected"
        #: The token's subject, from the last welcome (``None`` without a token).
        self.user: str | None = None
        #: Seconds the token had left at the last welcome or ``refreshed``.
        self.expires_in: float | None = None
        #: Connections opened so far (for diagnostics and tests).
        self.connections = 0
        #: Heartbeat pings sent so far, and pongs received.
        self.pings_sent = 0
        self.pongs = 0
        #: The error that stopped the client, once ``closed``.
        self.error: ClosedError | None = None

        path_room = Room(self, self.path_room)
        query = dict(parse_qsl(parts.query))
        if "epoch" in query:  # a position the application kept, in the URL
            path_room.epoch = query["epoch"]
            path_room.seq = int(query.get("since", "0"))
        self._rooms: dict[str, Room] = {self.path_room: path_room}
        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._pending: dict[str, tuple[asyncio.Future[Any], ClientConnection]] = {}
        self._join_ids: dict[str, str] = {}  # room -> id of its pending join op
        self._op_rooms: dict[str, str] = {}  # id of a pending publish or presence -> its room
        self._next_id = 0
        # Publish ids are ``p-PREFIX-N``: the prefix random per client, so that ids are
        # unique across connections (the server publishes an id once per room).
        self._id_prefix = f"p-{secrets.token_hex(6)}-"
        self._last_rx = 0.0
        self._task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._token: str | None = None  # the token of the live connection, latest refresh's
        self._closing = False

    # ----------------------------------------------------------------- public API

    async def start(self, *, wait: bool = True) -> None:
        """Start connecting (and reconnecting); with ``wait``, until the first connection.

        Raises the :class:`ClosedError` if the client stops before it connected.
        """
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if wait:
            await self.wait_state("connected")

    async def close(self) -> None:
        """Close the connection and stop for good (state ``closed``)."""
        self._closing = True
        if self._task is not None and not self._task.done():
            ws = self._ws
            if ws is not None:
                try:
                    await asyncio.wait_for(ws.close(), 2)
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001
                pass
        self._finish(ClientClosed("closed by the application"))

    async def wait_closed(self) -> ClosedError:
        """Wait until the client stopped; return the error that stopped it."""
        await self.wait_state("closed")
        assert self.error is not None
        return self.error

    async def wait_state(self, *states: State, timeout: float | None = None) -> State:
        """Wait until the state is one of ``states``.

        Raises the stopping :class:`ClosedError` if the client is closed and ``closed``
        is not among ``states``.
        """
        async with asyncio.timeout(timeout):
            while True:
                if self.state in states:
                    return self.state
                if self.state == "closed":
                    assert self.error is not None
                    raise self.error
                event = self._state_changed
                await event.wait()

    def room(self, name: str) -> Room | None:
        """The joined room of that name, if any."""
        room = self._rooms.get(name)
        return room if room is not None and room._wanted else None

    async def join(
        self,
        name: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        timeout: float | None = None,
    ) -> Room:
        """Join a room (or get the path's room) and return it.

        ``since``/``epoch`` resume from a position the application kept. When connected,
        waits for the server's welcome (raises :class:`ServerError` on an error answer,
        e.g. ``invalid room name`` or ``too many rooms``); when not, the room is joined on
        the next connection. Rejoined with its position after every reconnect.
        """
        if self.state == "closed":
            assert self.error is not None
            raise self.error
        if (since is None) != (epoch is None):
            raise ValueError("since and epoch go together (a seq names a message only in its epoch)")
        room = self._rooms.get(name)
        if room is not None and room._wanted:
            return room
        room = Room(self, name)
        self._rooms[name] = room
        if since is not None:
            room.seq = since
            room.epoch = epoch
        ws = self._ws
        if ws is None:
            return room
        try:
            await self._request(ws, self._join_op(room), timeout)
        except Disconnected:
            pass  # joined again on the next connection
        except (ServerError, PublishTimeout):
            room._wanted = False
            if name != self.path_room:
                del self._rooms[name]
            raise
        return room

    # ----------------------------------------------------------- room operations

    async def _publish(self, room: Room, data: str | bytes, timeout: float | None, id: str | None = None) -> int:
        if id is not None and not (isinstance(id, str) and 0 < len(id.encode()) <= MAX_ID):
            raise ValueError(f"a publish id is a string of 1 to {MAX_ID} bytes")
        if id is not None and id in self._pending:
            raise ValueError(f"a publish with id {id!r} is already waiting for its ack")
        if not room._wanted:
            raise MioketError(f"room {room.name!r} was left")
        op: dict[str, Any] = {"op": "publish", "room": room.name, "id": id or self._new_id(self._id_prefix)}
        if isinstance(data, str):
            op["data"] = data
        else:
            op["b64"] = base64.b64encode(bytes(data)).decode("ascii")
        timeout = self.publish_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                ws = await self._wait_connected()
                answer = await self._request(ws, op, None)
        except TimeoutError:
            raise PublishTimeout(f"no ack in {timeout} s", id=op["id"]) from None
        except (Disconnected, ServerError) as e:
            e.id = op["id"]
            raise
        return int(answer["seq"])

    async def _presence(self, room: Room, timeout: float | None) -> dict[str, Any]:
        if not room._wanted:
            raise MioketError(f"room {room.name!r} was left")
        timeout = self.publish_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                ws = await self._wait_connected()
                answer = await self._request(ws, {"op": "presence", "room": room.name}, None)
        except TimeoutError:
            raise PublishTimeout(f"no presence answer in {timeout} s") from None
        if isinstance(answer.get("online"), int):
            room.online = answer["online"]
        result: dict[str, Any] = {
            "room": room.name,
            "online": answer.get("online"),
            "users": answer.get("users") if isinstance(answer.get("users"), list) else [],
        }
        if answer.get("truncated") is True:
            result["truncated"] = True
        return result

    def _on_left(self, env: dict[str, Any]) -> None:
        """The server took a room away: as if the application left it (not rejoined), its
        pending publishes and presence questions fail, and ``Left`` is its last event."""
        room = self._rooms.get(env.get("room", ""))
        if room is None or not room._wanted:
            return
        room._wanted = False
        room.left_reason = str(env.get("reason"))
        for ident, name in list(self._op_rooms.items()):
            if name == room.name:
                self._answer(ident, None, MioketError(f"room {room.name!r} was left ({room.left_reason})"))
        room._queue.put_nowait(Left(room.name, room.left_reason))
        room._end(None)

    async def _leave(self, room: Room) -> None:
        if not room._wanted:
            return
        room._wanted = False
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(json.dumps({"op": "leave", "room": room.name}))
            except ConnectionClosed:
                pass
        room._end(None)

    # -------------------------------------------------------------------- plumbing

    def _set_state(self, state: State) -> None:
        if self.state == state or self.state == "closed":
            return
        self.state = state
        event, self._state_changed = self._state_changed, asyncio.Event()
        event.set()
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:  # noqa: BLE001
                log.exception("on_state callback failed")

    def _finish(self, error: ClosedError) -> None:
        if self.state == "closed":
            return
        self.error = error
        self._connected.set()  # wake waiters: they see the error
        for fut, _ in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(error)
        for room in self._rooms.values():
            if room._wanted:
                room._end(None if isinstance(error, ClientClosed) else error)
        self._set_state("closed")

    async def _wait_connected(self) -> ClientConnection:
        while True:
            if self.state == "closed":
                assert self.error is not None
                raise self.error
            if self._ws is not None and self.state == "connected":
                return self._ws
            self._connected.clear()
            await self._connected.wait()

    def _new_id(self, prefix: str) -> str:
        self._next_id += 1
        return f"{prefix}{self._next_id}"

    async def _request(
        self, ws: ClientConnection, op: dict[str, Any], timeout: float | None
    ) -> dict[str, Any]:
        """Send ``op`` with its id (a fresh one if it has none); the answer is its ack or
        welcome, or an error."""
        if "id" not in op:
            op["id"] = self._new_id(op["op"][0] + "-")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[op["id"]] = (fut, ws)
        if op["op"] == "join":
            self._join_ids[op["room"]] = op["id"]
        elif "room" in op:
            self._op_rooms[op["id"]] = op["room"]
        try:
            async with asyncio.timeout(timeout):
                try:
                    await ws.send(json.dumps(op))
                except ConnectionClosed:
                    raise Disconnected("connection lost before the ack") from None
                answer: dict[str, Any] = await fut
                return answer
        except TimeoutError:
            raise PublishTimeout(f"no answer in {timeout} s") from None
        finally:
            self._pending.pop(op["id"], None)
            self._op_rooms.pop(op["id"], None)
            if op["op"] == "join" and self._join_ids.get(op["room"]) == op["id"]:
                del self._join_ids[op["room"]]

    def _join_op(self, room: Room) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "join", "room": room.name}
        if room.epoch is not None:
            op["since"] = room.seq
            op["epoch"] = room.epoch
        return op

    def _connect_url(self) -> str:
        """The URL with the path room's resume position in its query."""
        room = self._rooms[self.path_room]
        query = [(k, v) for k, v in parse_qsl(self._parts.query) if k not in ("since", "epoch")]
        if room.epoch is not None:
            query += [("since", str(room.seq)), ("epoch", room.epoch)]
        return urlunsplit(self._parts._replace(query=urlencode(query)))

    async def _fetch_token(self) -> str | None:
        if self._get_token is None:
            return None
        token = self._get_token()
        if inspect.isawaitable(token):
            token = await token
        return token

    # ------------------------------------------------------------ the connection loop

    async def _run(self) -> None:
        last_code: int | None = None
        try:
            while True:
                self._set_state("connecting")
                code = await self._attempt()
                if self._closing:
                    return
                if code in TERMINAL:
                    raise TERMINAL[code](self._last_reason, code)
                if code in RETRY_WITH_NEW_TOKEN and (
                    last_code not in RETRY_WITH_NEW_TOKEN or self._was_stable
                ):
                    last_code = code
                    continue  # a new token, at once (a 4001 again soon after: backoff)
                last_code = code
                self._set_state("disconnected")
                await self._sleep(self.backoff.next())
        except ClosedError as error:
            self._finish(error)
        except asyncio.CancelledError:
            self._finish(ClientClosed("closed by the application"))
            raise
        except Exception as error:  # noqa: BLE001 - a bug: stop rather than spin
            log.exception("mioket client failed")
            closed = ClosedError(f"client failed: {error!r}")
            closed.__cause__ = error
            self._finish(closed)

    _last_reason = ""
    _was_stable = False

    async def _attempt(self) -> int | None:
        """One connection: open it, serve it until it ends; return its close code."""
        self._last_reason = ""
        self._was_stable = False
        try:
            token = await self._fetch_token()
        except ClosedError:
            raise
        except Exception:  # noqa: BLE001
            log.warning("get_token failed", exc_info=True)
            return None
        self._token = token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        options: dict[str, Any] = {
            "subprotocols": [SUBPROTOCOL],
            "additional_headers": headers,
            "ping_interval": None,  # the mioket.v1 heartbeat does this
            "open_timeout": self.open_timeout,
            "close_timeout": 2,
            "proxy": None,
            "max_size": None,
        }
        options.update(self._ws_options)
        try:
            ws = await ws_connect(self._connect_url(), **options)
        except InvalidStatus as error:
            status = error.response.status_code
            if status in TERMINAL:
                body = error.response.body.decode("utf-8", "replace") if error.response.body else ""
                raise TERMINAL[status](body.strip() or f"HTTP {status}", status) from None
            log.info("upgrade refused: HTTP %s", status)
            return None
        except (OSError, TimeoutError, WebSocketException) as error:
            log.info("connect failed: %r", error)
            return None
        if ws.subprotocol != SUBPROTOCOL:
            await ws.close()
            raise ProtocolError("the server did not accept the mioket.v1 subprotocol")
        opened = self._clock()
        try:
            await self._serve(ws)
        finally:
            self._was_stable = self._clock() - opened >= self.stable_after
            if self._was_stable:
                self.backoff.reset()
        self._last_reason = ws.close_reason or ""
        return ws.close_code

    async def _serve(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        self._last_rx = loop.time()
        self.connections += 1
        heartbeat = loop.create_task(self._heartbeat(ws))
        try:
            # rejoin every room with its position; rooms joined meanwhile (while a send
            # waited) are picked up by the next round; none can slip in after the last
            done: set[str] = set()
            while todo := [r for r in self._rooms.values() if r.name not in done]:
                for room in todo:
                    done.add(room.name)
                    if room.name == self.path_room:
                        if not room._wanted:
                            await ws.send(json.dumps({"op": "leave", "room": room.name}))
                    elif room._wanted:
                        await ws.send(json.dumps(self._join_op(room)))
            self._ws = ws
            self._set_state("connected")
            self._connected.set()
            async for frame in ws:
                self._last_rx = loop.time()
                if isinstance(frame, str):
                    self._on_envelope(frame)
        except ConnectionClosed:
            pass
        finally:
            self._ws = None
            self._connected.clear()
            heartbeat.cancel()
            if self._refresh_task is not None:
                self._refresh_task.cancel()
                self._refresh_task = None
            for key, (fut, fut_ws) in list(self._pending.items()):
                if fut_ws is ws and not fut.done():
                    fut.set_exception(Disconnected("connection lost before the answer"))
            if ws.transport is not None:
                ws.transport.abort()
            if self.state != "closed":
                self._set_state("disconnected")

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """Ping when idle; drop the link when nothing at all comes back in time."""
        loop = asyncio.get_running_loop()
        while True:
            idle = loop.time() - self._last_rx
            if idle < self.heartbeat:
                await asyncio.sleep(self.heartbeat - idle)
                continue
            sent = loop.time()
            self.pings_sent += 1
            ping = json.dumps({"op": "ping", "id": self._new_id("hb-")})
            try:
                await asyncio.wait_for(ws.send(ping), self.heartbeat_timeout)
                await asyncio.sleep(max(0.0, sent + self.heartbeat_timeout - loop.time()))
            except TimeoutError:
                pass
            except ConnectionClosed:
                return
            if self._last_rx < sent:
                log.info("no frame for %.1f s: the link is dead", loop.time() - sent + self.heartbeat)
                if ws.transport is not None:
                    ws.transport.abort()
                return

    # -------------------------------------------------------------------- envelopes

    def _on_envelope(self, frame: str) -> None:
        try:
            env = json.loads(frame)
        except ValueError:
            log.warning("not JSON: %.80r", frame)
            return
        if not isinstance(env, dict):
            return
        kind = env.get("type")
        if kind == "message":
            self._on_message(env)
        elif kind == "welcome":
            self._on_welcome(env)
        elif kind == "ack":
            self._answer(env.get("id"), env, None)
        elif kind == "error":
            ident = env.get("id")
            reason = str(env.get("reason"))
            if isinstance(ident, str) and ident.startswith("hb-"):
                return  # a server without the ping op: any answer shows the link lives
            if not self._answer(ident, None, ServerError(reason, ident)):
                log.warning("server error: %s", reason)
        elif kind == "presence":
            if self._answer(env.get("id"), env, None):
                return  # the answer of a presence op (room.online is set by its asker)
            room = self._rooms.get(env.get("room", ""))
            if room is not None and isinstance(env.get("online"), int):
                room.online = env["online"]
        elif kind == "left":
            self._on_left(env)
        elif kind == "refreshed":
            self._on_expiry(env.get("expires_in"))
        elif kind == "pong":
            self.pongs += 1
        # unknown types: only life

    def _answer(self, ident: Any, value: Any, error: BaseException | None) -> bool:
        entry = self._pending.get(ident) if isinstance(ident, str) else None
        if entry is None or entry[0].done():
            return False
        if error is not None:
            entry[0].set_exception(error)
        else:
            entry[0].set_result(value)
        return True

    def _on_welcome(self, env: dict[str, Any]) -> None:
        name = env.get("room")
        room = self._rooms.get(name) if isinstance(name, str) else None
        if "user" in env:
            self.user = env.get("user")
        if "expires_in" in env:
            self._on_expiry(env.get("expires_in"))
        if room is None:
            return
        epoch = str(env.get("epoch"))
        recovered = env.get("recovered")
        room.online = env.get("online", room.online)
        room.recovered = recovered
        room.welcome_text = env.get("text")
        room.read_only = env.get("read_only") is True
        if room.epoch is not None and (recovered is False or epoch != room.epoch):
            if room._wanted:
                room.gaps += 1
                room._queue.put_nowait(Gap(room.name, epoch, room.epoch, room.seq))
            room._gap_open = True
            if epoch != room.epoch:
                room.seq = 0
        room.epoch = epoch
        # a welcome carries no id: it answers the pending join of its room, if any
        self._answer(self._join_ids.get(room.name), env, None)

    def _on_message(self, env: dict[str, Any]) -> None:
        room = self._rooms.get(env.get("room", ""))
        seq = env.get("seq")
        if room is None or not room._wanted or not isinstance(seq, int) or room.epoch is None:
            return
        if seq <= room.seq:
            return  # seen already (a replay after a resume)
        if room.seq and seq != room.seq + 1 and not room._gap_open:
            room.gaps += 1
            room._queue.put_nowait(Gap(room.name, room.epoch, room.epoch, room.seq))
        room._gap_open = False
        if "b64" in env:
            data: str | bytes = base64.b64decode(env["b64"])
        else:
            data = env.get("data", "")
        room.seq = seq
        room._queue.put_nowait(Message(room.name, room.epoch, seq, data, env.get("from"), env))

    # ------------------------------------------------------------------------ tokens

    def _on_expiry(self, expires_in: Any) -> None:
        if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool):
            return
        self.expires_in = float(expires_in)
        ws = self._ws
        if ws is None or self._get_token is None:
            return
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        delay = max(0.0, expires_in - min(self.refresh_margin, expires_in / 2))
        self._refresh_task = asyncio.get_running_loop().create_task(self._refresh(ws, delay))

    async def _refresh(self, ws: ClientConnection, delay: float) -> None:
        await asyncio.sleep(delay)
        while True:
            try:
                token = await self._fetch_token()
                break
            except ClosedError as error:
                if ws.transport is not None:
                    ws.transport.abort()
                self._task_error(error)
                return
            except Exception:  # noqa: BLE001 - the server's 4001 reconnects if it never works
                log.warning("get_token failed for a refresh", exc_info=True)
                await asyncio.sleep(1.0)
        # The same token again (one fixed token) would refresh nothing: the server closes
        # with 4001 at expiry and the reconnect asks get_token again.
        if token is None or token == self._token:
            return
        self._token = token
        try:
            await ws.send(json.dumps({"op": "refresh", "token": token, "id": self._new_id("r-")}))
        except ConnectionClosed:
            pass

    def _task_error(self, error: ClosedError) -> None:
        """Stop the connection loop with ``error`` (from a task beside it)."""
        task = self._task
        self._closing = True
        self._finish(error)
        if task is not None and not task.done():
            task.cancel()


class _Connect:
    """``connect(...)``: ``async with`` it (closes on exit) or ``await`` it."""

    def __init__(self, url: str, wait: bool, kwargs: dict[str, Any]) -> None:
        self._client = Client(url, **kwargs)
        self._wait = wait

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._start().__await__()

    async def _start(self) -> Client:
        try:
            await self._client.start(wait=self._wait)
        except BaseException:
            await self._client.close()
            raise
        return self._client

    async def __aenter__(self) -> Client:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()


def connect(url: str, *, wait: bool = True, **kwargs: Any) -> _Connect:
    """Connect to ``url`` (``ws://host:port/ROOM``) and keep the client connected.

    ``async with connect(url) as client:`` waits for the first connection (with ``wait``)
    and closes the client on exit; ``client = await connect(url)`` does the same without
    closing. Keyword arguments are :class:`Client`'s.
    """
    return _Connect(url, wait, kwargs)
