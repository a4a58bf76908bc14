"""Byte relays between the upper apiserver and the lower one: logs, and upgraded streams.

Exec, attach and port-forward are HTTP requests upgraded to a stream protocol:
SPDY/3.1 from the upper apiserver up to Kubernetes 1.35, WebSocket
(``v4.channel.k8s.io`` and later) from older or newer callers. tensile does not speak
either. As vcluster does, it sends the same upgrade to the lower apiserver's
``pods/exec``, ``pods/attach`` or ``pods/portforward`` with the lower credentials and the
caller's protocol headers, hands the lower answer back, and once both sides switched
protocols copies bytes both ways until either side closes; then it closes both. The
stream protocol runs end to end, so every version and channel either side supports
works, and nothing is buffered beyond one read.

aiohttp does not treat ``Upgrade: SPDY/3.1`` as an upgrade (only ``websocket``), so after
sending the 101 the connection is taken over: its transport gets a plain asyncio stream
protocol and aiohttp sees no more bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

from aiohttp import web

log = logging.getLogger("tensile.kubelet")

#: Request headers of the caller that belong to the stream protocol and go on downstairs.
FORWARDED_REQUEST_HEADERS = ("upgrade", "connection", "x-stream-protocol-version", "sec-websocket-key",
                             "sec-websocket-version", "sec-websocket-protocol", "sec-websocket-extensions")
#: Response headers of the lower apiserver that go back up with its 101.
FORWARDED_RESPONSE_HEADERS = ("upgrade", "connection", "x-stream-protocol-version", "sec-websocket-accept",
                              "sec-websocket-protocol", "sec-websocket-extensions", "content-type")
MAX_HEAD_BYTES = 64 * 1024
MAX_ERROR_BODY = 1024 * 1024
CHUNK = 64 * 1024

Headers = list[tuple[str, str]]


class BadResponse(ValueError):
    """The lower apiserver's answer to an upgrade is not HTTP."""


def _clean(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def request_head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 request head; header values lose any CR/LF, so nothing can be smuggled in."""
    lines = [f"{method} {_clean(target)} HTTP/1.1", f"Host: {_clean(host)}"]
    lines += [f"{_clean(k)}: {_clean(v)}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")


def forwarded(headers: Iterable[tuple[str, str]], names: Sequence[str]) -> Headers:
    return [(k, v) for k, v in headers if k.lower() in names]


def parse_response_head(raw: bytes) -> tuple[int, str, Headers]:
    """Status, reason and headers of an HTTP/1.x response head (ending in a blank line)."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadResponse(f"not an HTTP response: {lines[0][:100]!r}")
    headers: Headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadResponse(f"bad header line {line[:100]!r}")
        headers.append((name.strip(), value.strip()))
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


def header(headers: Headers, name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


async def read_response(reader: asyncio.StreamReader, timeout: float) -> tuple[int, str, Headers]:
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.LimitOverrunError as exc:
        raise BadResponse("response head too long") from exc
    except asyncio.IncompleteReadError as exc:
        raise BadResponse("the connection closed before a response") from exc
    if len(raw) > MAX_HEAD_BYTES:
        raise BadResponse("response head too long")
    return parse_response_head(raw)


async def read_body(reader: asyncio.StreamReader, headers: Headers, timeout: float) -> bytes:
    """An error response's body, at most :data:`MAX_ERROR_BODY` bytes."""
    length = header(headers, "content-length")
    try:
        if length is not None and length.isdigit():
            return await asyncio.wait_for(reader.readexactly(min(int(length), MAX_ERROR_BODY)), timeout)
        return await asyncio.wait_for(reader.read(MAX_ERROR_BODY), timeout)
    except (asyncio.IncompleteReadError, TimeoutError, OSError):
        return b""


def take_over(request: web.Request) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The request's connection as plain asyncio streams; aiohttp reads no more from it."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the caller went away")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 ** 20, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if isinstance(transport, asyncio.ReadTransport) and not transport.is_reading():
        transport.resume_reading()  # aiohttp may have paused it: its buffer no longer matters
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def hand_back(request: web.Request) -> None:
    """Tell aiohttp the taken-over connection is gone, so it forgets it (else one handler leaks per stream).

    Its protocol never saw the bytes or the close after :func:`take_over`; this is the close it missed.
    """
    request.protocol.connection_lost(None)


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, counter: list[int]) -> None:
    while True:
        data = await source.read(CHUNK)
        if not data:
            return
        counter[0] += len(data)
        sink.write(data)
        await sink.drain()


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError, ConnectionError):
        await asyncio.wait_for(writer.wait_closed(), 5)


async def splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> tuple[int, int]:
    """Copy bytes a->b and b->a until either side ends; close both. Bytes moved each way."""
    up, down = [0], [0]
    tasks = [asyncio.create_task(_pump(a[0], b[1], up)), asyncio.create_task(_pump(b[0], a[1], down))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, (ConnectionError, OSError)):
                log.warning("stream relay ended with %s: %s", type(exc).__name__, exc)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await task
        await close(a[1])
        await close(b[1])
    return up[0], down[0]
