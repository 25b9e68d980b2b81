#!/usr/bin/env python3
"""Writes the checked-in seed corpora (fuzz/corpus/TARGET/). Run from anywhere;
it overwrites only the files it names. The conn layout is documented in tests/support/src/fuzz_checks.rs."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])  # RFC 6455 5.7


def mask(payload, key=KEY):
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def frame(b0, payload, key=KEY):
    """A masked client frame (payloads under 126 bytes)."""
    return bytes([b0, 0x80 | len(payload)]) + key + mask(payload, key)


def write(target, name, data):
    os.makedirs(os.path.join(HERE, "corpus", target), exist_ok=True)
    with open(os.path.join(HERE, "corpus", target, name), "wb") as f:
        f.write(data)


# frame_header: the RFC 6455 5.7 examples and the longest header.
write("frame_header", "rfc-hello-masked", bytes.fromhex("818537fa213d7f9f4d5158"))
write("frame_header", "rfc-hello-unmasked", bytes.fromhex("810548656c6c6f"))
write("frame_header", "rfc-fragment-first", bytes.fromhex("010348656c"))
write("frame_header", "rfc-fragment-last", bytes.fromhex("80026c6f"))
write("frame_header", "rfc-ping", bytes.fromhex("890548656c6c6f"))
write("frame_header", "rfc-pong-masked", bytes.fromhex("8a8537fa213d7f9f4d5158"))
write("frame_header", "rfc-256-binary", bytes.fromhex("827e0100"))
write("frame_header", "rfc-64k-binary", bytes.fromhex("827f0000000000010000"))
write("frame_header", "close-1000-masked", frame(0x88, b"\x03\xe8"))
write("frame_header", "longest-header", bytes.fromhex("82ff000000000001000037fa213d"))

# handshake: the RFC 6455 1.2 request and its usual refusals.
RFC_REQUEST = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")
write("handshake", "rfc-upgrade", RFC_REQUEST)
write("handshake", "allowed-origin", RFC_REQUEST.replace(b"http://example.com", b"http://GOOD.example"))
write("handshake", "version-8", RFC_REQUEST.replace(b"Version: 13", b"Version: 8"))
write("handshake", "post", RFC_REQUEST.replace(b"GET", b"POST"))
write("handshake", "http-1.0", RFC_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"))
write("handshake", "short-key", RFC_REQUEST.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="))
write("handshake", "plain-get-and-frames", b"GET /index.html?x=1 HTTP/1.1\r\nHost: x\r\n\r\n" + frame(0x81, b"Hello"))

# conn: 3 setup bytes, then operations (first byte % 10 picks it):
# 0 raw(n, bytes) 1 frame(h, n, bytes, key4[, lie]) 2 close(c, n, reason, k0, k2) 3 feed(n)
# 4 tick(50 ms * n) 5 send(b, n) 6 our close(code, n, reason) 7 drain(4n) 8 end of stream
# 9 a 1 KiB header line
LIMITS = 6 | 2 << 3 | 6 << 5  # max_message 1000, max_fragments 8, max_backpressure 4096
TIMERS = 1 | 2 << 2           # ping every 1 s, pong due in 2 s; all timeouts on
UPGRADE, GET, NOTHING, ECHO = 0, 2, 3, 4


def conn(name, ops, timers=TIMERS, first=UPGRADE):
    write("conn", name, bytes([LIMITS, timers, first]) + ops)


def raw(data):
    assert len(data) < 256
    return bytes([0, len(data)]) + data


FEED_ALL, DRAIN_ALL = bytes([3, 0]), bytes([7, 0])
# In echo mode the masked "Hello" comes back as the RFC's unmasked one: 81 05 48 65 6c 6c 6f.
conn("rfc-hello-echoed", raw(bytes.fromhex("818537fa213d7f9f4d5158")) + FEED_ALL + DRAIN_ALL, first=UPGRADE | ECHO)
conn("fragmented-byte-at-a-time", raw(frame(0x01, b"Hel") + frame(0x89, b"ping") + frame(0x80, b"lo")) + bytes([3, 1]) * 40 + DRAIN_ALL)
conn("ping-pong-close", raw(frame(0x89, b"Hello") + frame(0x88, b"\x03\xe8bye")) + FEED_ALL + DRAIN_ALL)
conn("generated-frames", bytes([1, 0x09, 3]) + b"abc" + KEY + bytes([1, 0x00, 2]) + b"de" + KEY + bytes([2, 0x20, 3]) + b"bye" + b"\x01\x02" + FEED_ALL)
conn("server-side", FEED_ALL + bytes([5, 0x04, 10, 5, 0x01, 20, 7, 3, 4, 21, 4, 30, 6, 1, 4]) + b"gone" + bytes([4, 50]) + DRAIN_ALL)
conn("message-right-after-accept", FEED_ALL + bytes([5, 0x41, 200]) + DRAIN_ALL)
conn("plain-get", raw(b"garbage after the head") + FEED_ALL + DRAIN_ALL, first=GET)
conn("refused-503", FEED_ALL + DRAIN_ALL, timers=TIMERS | 0x80)
# Our first ping (after 1 s) carries sequence number 1; the pong that echoes it
# clears the pong deadline, so the connection survives the 2 s timeout.
conn("heartbeat-answered", FEED_ALL + DRAIN_ALL + bytes([4, 21]) + raw(frame(0x8A, b"\0\0\0\1")) + FEED_ALL + bytes([4, 30]) + DRAIN_ALL)
conn("head-over-8-kib-gets-431", raw(b"GET / HTTP/1.1\r\n") + bytes([9]) * 9 + FEED_ALL + DRAIN_ALL, first=NOTHING)
conn("no-request-handshake-timeout", raw(b"GET / HTTP/1.1\r\n") + FEED_ALL + bytes([4, 255]), first=NOTHING)

# rooms: a script of clients, ops and time on one App (layout in tests/support/src/fuzz_rooms.rs).
def rooms(name, setup, steps):
    write("rooms", name, bytes([setup]) + steps)


def step(kind, a=0, n=0, data=b""):
    return bytes([kind | a << 3, n]) + data


CONNECT, OP, BINARY, RAW, END, TIME, HTTP, API = range(8)
V1_A, PLAIN_A, V1_B, PLAIN_ROOT = 1, 0, 3, 4
rooms("v1-and-plain-publish", 0b0101101, step(CONNECT, V1_A) + step(CONNECT, PLAIN_A) + step(OP, 0, 0) + step(OP, 0, 1, b"plain says hi")[:2] + step(OP, 12, 1, b"plain says hi")[2:] + step(BINARY, 0, 2, b"\x00\x01") + step(TIME, 0, 15))
rooms("join-leave-errors", 0b0011010, step(CONNECT, V1_A) + b"".join(step(OP, k, 0) for k in range(10)) + step(TIME, 0, 12) + step(OP, 0, 0))
rooms("resume-after-reconnect", 0b0000011, step(CONNECT, V1_A) + step(OP, 0, 0) * 3 + step(END, 0, 0) + step(CONNECT, V1_A, 8 + 2) + step(OP, 0, 0) + step(CONNECT, V1_A, 8 + 7))
rooms("api-and-http", 0b0000001, step(CONNECT, V1_A) + step(API, 0, 5, b"hello") + step(API, 0, 4, b"nope") + step(HTTP, 1) + step(HTTP, 2) + step(HTTP, 3) + step(HTTP, 0, 18, b"GET /x HTTP/1.1\r\n\r\n"))
rooms("ttl-and-room-limit", 0b0000100, step(CONNECT, V1_A) + step(CONNECT, V1_B) + step(CONNECT, 2 * 2) + step(END, 0, 0) + step(TIME, 0, 30) + step(CONNECT, 5 * 2 + 1) + step(CONNECT, 4 * 2))
rooms("raw-bytes-into-a-v1-client", 0b0000001, step(CONNECT, V1_A) + step(RAW, 0, 6, bytes([0x81, 0x80, 1, 2, 3, 4])) + step(RAW, 0, 3, b"\x89\x80\x00"))

# conn with permessage-deflate offered (byte 2 bit 7): operation 9 sends compressed messages.
DEFLATE = 0x80
COMPRESSED = 9
def compressed(flags, data, copies=0):
    return bytes([COMPRESSED, flags, len(data)]) + data + bytes([copies, 0x11, 0x22])
conn("deflate-text-whole-and-fragmented", compressed(0, b"hello deflate ") + compressed(0b1110, b"fragmented with a ping ", 40) + FEED_ALL + DRAIN_ALL, first=UPGRADE | ECHO | DEFLATE)
conn("deflate-binary-bomb-past-the-limit", compressed(1, b"\x00" * 200, 255) + FEED_ALL + DRAIN_ALL, first=UPGRADE | DEFLATE)
conn("deflate-garbage-and-rsv1-on-continuation", compressed(0x10, b"\xff\xfe\xfd not deflate") + compressed(0x22, b"rsv1 again on the continuation", 3) + FEED_ALL + DRAIN_ALL, first=UPGRADE | DEFLATE)
conn("rsv1-without-the-extension", raw(bytes([0xC1, 0x81]) + KEY + mask(b"x")) + FEED_ALL + DRAIN_ALL)

# inflate: byte 0 picks the limit (0, 100, 4096, 1 MiB); then a compressed message.
import zlib
def deflate_raw(data, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out
write("inflate", "rfc-hello", bytes([1]) + bytes.fromhex("f248cdc9c90700"))
write("inflate", "rfc-hello-bfinal", bytes([1]) + bytes.fromhex("f348cdc9c90700"))
write("inflate", "rfc-stored-block", bytes([1]) + bytes.fromhex("000500faff48656c6c6f00"))
write("inflate", "json-document", bytes([2]) + deflate_raw(b'{"id":1,"tags":["a","b"],"text":"again and again"}' * 20))
write("inflate", "bomb-past-4-kib", bytes([2]) + deflate_raw(b"\x00" * 100000, 9))
write("inflate", "exactly-100", bytes([1]) + deflate_raw(b"x" * 100))
write("inflate", "garbage", bytes([3]) + b"\xff\xff\xff\xff not deflate")
