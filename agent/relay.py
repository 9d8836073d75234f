"""Relay subscriptions for machines that cannot be reached: Server-Sent Events from smee.io or gosmee.

Each event goes through the same verification and routing as a POST to /webhook. After every
(re)connect every repo is checked once through the API, since deliveries may have been lost.
"""
from __future__ import annotations

import base64
import json
import logging
import random
import socket
import threading
import time

import requests
import urllib3

log = logging.getLogger("sync_agent.relay")
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 90.0  # smee pings every 30 s: silence this long means a dead connection
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
STABLE = 60.0  # a connection that lasted this long resets the backoff
_NOT_HEADERS = ("body", "bodyB", "query", "timestamp")


def parse_sse(chunks):
    """Yield (event, data) from an iterable of byte chunks in text/event-stream format."""
    buf = b""
    event, data = "message", []
    for chunk in chunks:
        buf += chunk
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            line, buf = buf[:i].rstrip(b"\r").decode("utf-8", "replace"), buf[i + 1:]
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = "message", []
            elif line.startswith(":"):
                continue  # a comment: gosmee's keep-alive
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value or "message"
                elif name == "data":
                    data.append(value)
        if len(buf) > 4 * 1024 * 1024:
            raise ValueError("an event line over 4 MiB")


def delivery_of(data: str):
    """(headers, raw body, other renderings to try) from a relay message's data, or None."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or ("body" not in doc and "bodyB" not in doc):
        return None
    headers = {str(k).lower(): str(v) for k, v in doc.items() if k not in _NOT_HEADERS and isinstance(v, (str, int))}
    if isinstance(doc.get("bodyB"), str):  # gosmee keeps the raw bytes: the signature holds
        try:
            return headers, base64.b64decode(doc["bodyB"], validate=True), []
        except ValueError:
            return None
    body = doc["body"]
    # smee re-serialises the body; GitHub's own bodies are compact JSON with raw UTF-8, so that
    # rendering reproduces the signed bytes in most cases. A few escaping variants cover the rest.
    first = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    others = [json.dumps(body, separators=(",", ":"), ensure_ascii=True),
              first.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
              json.dumps(body, indent=2, ensure_ascii=False)]
    return headers, first.encode(), [o.encode() for o in others]


def _chunks(response):
    """Bytes as they arrive (read1), chunked or not; iter_content would wait to fill its buffer."""
    while True:
        data = response.raw.read1(65536)
        if not data:
            return
        yield data


def _why(e: Exception) -> str:
    if isinstance(e, requests.Timeout) or "Read timed out" in str(e):
        return f"no data for {READ_TIMEOUT:g} s"
    if isinstance(e, requests.ConnectionError):
        return "cannot connect" if "Max retries" in str(e) or "refused" in str(e) else "connection broken"
    if isinstance(e, (urllib3.exceptions.ProtocolError, ConnectionError)):
        return "connection broken"
    if isinstance(e, ValueError):
        return str(e)[:80]
    return type(e).__name__


class RelayClient:
    """One subscription, in its own thread, reconnecting forever with capped, jittered backoff."""

    def __init__(self, url, app, on_connect, index=0):
        self.url = url
        self.app = app
        self.on_connect = on_connect
        self.label = f"relay[{index}]"  # the channel URL is a capability: keep it out of logs
        self._stop = threading.Event()
        self._thread = None
        self._response = None
        self.connected = False
        self.events = 0

    def start(self):
        self._thread = threading.Thread(target=self._loop, name=self.label, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        r = self._response
        if r is not None:
            # Wake the reading thread now: closing the response alone waits for the next byte,
            # which on a quiet channel is up to READ_TIMEOUT away.
            sock = getattr(getattr(r.raw, "connection", None), "sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
                r.close()
            except Exception:  # noqa: BLE001 - already closed
                pass
        if self._thread:
            self._thread.join(5)

    def _loop(self):
        delay = BACKOFF_FIRST

        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self._listen()
                why = "closed by the relay"
            except Exception as e:  # noqa: BLE001 - requests, urllib3, a bad stream: reconnect whatever it was
                why = _why(e)
            self.connected = False
            if self._stop.is_set():
                return
            if time.monotonic() - t0 > STABLE:
                delay = BACKOFF_FIRST
            wait = delay * (0.5 + random.random() / 2)
            log.warning("%s: connection lost (%s); reconnecting in %.1f s", self.label, why, wait)
            self._stop.wait(wait)
            delay = min(BACKOFF_MAX, delay * 2)

    def _listen(self):
        with requests.get(self.url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                          headers={"Accept": "text/event-stream", "User-Agent": "sync-agent"}) as r:
            self._response = r
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code}")
            self.connected = True
            log.info("%s: connected; checking every repo once (deliveries may have been missed)", self.label)
            self.on_connect()
            for event, data in parse_sse(_chunks(r)):
                if self._stop.is_set():
                    return
                if event in ("ready", "ping"):
                    continue
                self._deliver(data)

    def _deliver(self, data):
        d = delivery_of(data)
        if d is None:
            log.warning("%s: an event that is not a relayed delivery was ignored", self.label)
            return
        headers, body, others = d
        self.events += 1
        ans = self.app.handle(headers, body, trigger="relay", bodies=others)
        if ans.kind == "rejected":
            log.warning("%s: relayed delivery rejected: %s", self.label, ans.doc.get("error"))
        else:
            log.debug("%s: relayed delivery: %s %s", self.label, ans.status, ans.doc)
        return ans
