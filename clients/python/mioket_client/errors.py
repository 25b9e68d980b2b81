"""Exceptions of mioket_client."""

from __future__ import annotations


class MioketError(Exception):
    """Base class of every error this package raises."""


class ClosedError(MioketError):
    """The client stopped for good (state ``closed``); it will not reconnect.

    ``code`` is the WebSocket close code (or HTTP status) that ended it, when there was one.
    """

    def __init__(self, reason: str = "", code: int | None = None) -> None:
        super().__init__(reason or type(self).__name__)
        self.reason = reason
        self.code = code


class ClientClosed(ClosedError):
    """The application called ``Client.close()``."""


class Unauthorized(ClosedError):
    """The token was refused (close code 4401, HTTP 401).

    ``get_token`` raises it to stop the client for good (e.g. the user logged out).
    """


class Forbidden(ClosedError):
    """The token does not allow this (close code 4403, HTTP 403)."""


class Gone(ClosedError):
    """The server ended this session for good (close code 4410)."""


class ProtocolError(ClosedError):
    """The server does not speak ``mioket.v1`` (e.g. an echo-mode server)."""


class Disconnected(MioketError):
    """The link was lost before the server acked the publish.

    The message may or may not have been published: publishing again with the same
    ``id`` (``room.publish(data, id=error.id)``) publishes it once either way.
    """

    def __init__(self, message: str = "", id: str | None = None) -> None:
        super().__init__(message or type(self).__name__)
        self.id = id


class PublishTimeout(MioketError, TimeoutError):
    """No ack came within the publish timeout (the message may still be published):
    ``id`` is the publish's, for a retry that cannot duplicate it."""

    def __init__(self, message: str = "", id: str | None = None) -> None:
        super().__init__(message or type(self).__name__)
        self.id = id


class ServerError(MioketError):
    """The server answered an op with ``{"type":"error"}``; ``reason`` is its reason."""

    def __init__(self, reason: str, id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.id = id
