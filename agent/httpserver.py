"""A small HTTP/1.1 server on asyncio, with explicit limits, for the webhook and status endpoints.

Why not http.server: its threads sit in blocking reads, so a client sending one byte a second
holds a thread for as long as it likes. Here a connection costs no thread while it is read, every
read has a total deadline, the body limit is enforced from Content-Length before any of the body
is read, and the number of open connections is bounded. One request per connection.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from http import HTTPStatus

log = logging.getLogger("sync_agent.http")


@dataclass(frozen=True)
class Limits:
    max_body: int = 1024 * 1024
    max_header: int = 16 * 1024
    header_seconds: float = 10.0  # the whole request line and headers
    body_seconds: float = 30.0  # the whole body
    drain_bytes: int = 64 * 1024 * 1024  # read and discarded after an early answer, at most
    drain_seconds: float = 5.0
    max_connections: int = 128


@dataclass
class Request:
    method: str
    path: str
    headers: dict  # lower-cased names
    body: bytes = b""
    peer: str = ""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)


class HttpServer:
    """Serve `handler(Request) -> Response` (called in a worker thread) on HOST:PORT in its own thread."""

    def __init__(self, host, port, handler, limits=Limits(), early=None):
        self.host, self.port = host, port
        self.handler = handler
        self.early = early  # early(Request without body) -> Response or None, before the body is read
        self.limits = limits
        self._loop = None
        self._server = None
        self._thread = None
        self._ready = threading.Event()
        self._error = None
        self._open = 0

    def start(self):
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        return self

    def stop(self):
        if self._loop and self._server:
            self._loop.call_soon_threadsafe(self._server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    def _serve(self):
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(
                self._connection, self.host, self.port, limit=self.limits.max_header, reuse_address=True))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as e:
            self._error = OSError(f"cannot listen on {self.host}:{self.port}: {e.strerror}")
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _connection(self, reader, writer):
        peer = writer.get_extra_info("peername")
        self._open += 1
        try:
            if self._open > self.limits.max_connections:
                await self._send(writer, Response(503, b'{"error": "too many connections"}'))
                return
            await self._one_request(reader, writer, f"{peer[0]}:{peer[1]}" if peer else "")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - a bad request must never take the listener down
            log.exception("HTTP connection failed")
        finally:
            self._open -= 1
            writer.close()

    async def _one_request(self, reader, writer, peer):
        lim = self.limits
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), lim.header_seconds)
        except asyncio.TimeoutError:
            return await self._send(writer, _error(408, "request headers too slow"))
        except asyncio.LimitOverrunError:
            return await self._send(writer, _error(431, "request headers too large"))
        except asyncio.IncompleteReadError:
            return
        req = _parse_head(head)
        if req is None:
            return await self._send(writer, _error(400, "malformed request"))
        req.peer = peer
        length = req.headers.get("content-length")
        if "transfer-encoding" in req.headers:
            # The body's length is unknown: read and drop what comes (within the drain limits), as for
            # 413, so a sender still writing gets the answer rather than a reset (SPEC section 7).
            expect = req.headers.get("expect", "").lower() == "100-continue"
            return await self._send(writer, _error(411, "send a Content-Length, not chunked"),
                                    drain=0 if expect else lim.drain_bytes, reader=reader)
        try:
            n = int(length) if length is not None else 0
            if n < 0:
                raise ValueError
        except ValueError:
            return await self._send(writer, _error(400, "bad Content-Length"))
        early = self.early(req) if self.early else None
        if early is None and n > lim.max_body:
            early = _error(413, f"body over {lim.max_body} bytes")
        if early is not None:
            # Answer now, then read what the client still sends and drop it, so the answer is
            # not lost to a reset when we close with unread data (SPEC section 7).
            if n and req.headers.get("expect", "").lower() != "100-continue":
                await self._send(writer, early, drain=min(n, lim.drain_bytes), reader=reader)
            else:
                await self._send(writer, early)
            return
        if req.headers.get("expect", "").lower() == "100-continue" and n:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            req.body = await asyncio.wait_for(reader.readexactly(n), lim.body_seconds) if n else b""
        except asyncio.TimeoutError:
            return await self._send(writer, _error(408, "request body too slow"))
        resp = await asyncio.get_running_loop().run_in_executor(None, self._call, req)
        await self._send(writer, resp)

    def _call(self, req):
        try:
            return self.handler(req)
        except Exception:  # noqa: BLE001
            log.exception("handler failed for %s %s", req.method, req.path)
            return _error(500, "internal error")

    async def _send(self, writer, resp, drain=0, reader=None):
        reason = HTTPStatus(resp.status).phrase if resp.status in HTTPStatus._value2member_map_ else ""
        lines = [f"HTTP/1.1 {resp.status} {reason}", f"Content-Type: {resp.content_type}",
                 f"Content-Length: {len(resp.body)}", "Connection: close", "Cache-Control: no-store",
                 "X-Content-Type-Options: nosniff"]
        lines += [f"{k}: {v}" for k, v in resp.headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body)
        try:
            await asyncio.wait_for(writer.drain(), self.limits.drain_seconds)
            if writer.can_write_eof():
                writer.write_eof()
            if drain and reader is not None:
                await asyncio.wait_for(_discard(reader, drain), self.limits.drain_seconds)
        except (asyncio.TimeoutError, ConnectionError):
            pass


async def _discard(reader, n):
    while n > 0:
        chunk = await reader.read(min(n, 65536))
        if not chunk:
            return
        n -= len(chunk)


def _parse_head(head: bytes):
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        return None
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        key = name.lower()
        value = value.strip()
        if key in headers:
            if key == "content-length":
                if headers[key] != value:
                    return None  # two different lengths: refuse rather than guess
                continue
            value = f"{headers[key]}, {value}"
        headers[key] = value
    path = parts[1].split("?", 1)[0]
    return Request(method=parts[0].upper(), path=path, headers=headers)


def _error(status, message):
    import json

    return Response(status, json.dumps({"error": message}).encode())
