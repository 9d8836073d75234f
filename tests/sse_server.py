"""A relay channel on loopback, the way smee.io and gosmee serve one: every GET of the channel gets a
chunked text/event-stream that stays open; what is published goes to every open stream.

smee: `event: ready` on connect, `event: ping` now and then, and each delivery as a default (message)
event whose data is JSON of the lower-cased request headers plus `body` (the parsed JSON, which the
relay re-serialises), `query` and `timestamp`. gosmee: the raw body as base64 in `bodyB`, and keep-alive
comment lines (`: keepalive`).
"""
import base64
import json
import queue
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_DROP = object()  # queue sentinel: cut the connection


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    channel = None  # set on a per-server subclass

    def log_message(self, *args):
        pass

    def do_GET(self):
        ch = self.channel
        if self.path.split("?", 1)[0] != ch.path:
            body = b"no such channel"
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        q = ch._attach(self.connection)
        try:
            self._chunk(ch.greeting.encode())
            last = time.monotonic()
            while True:
                try:
                    item = q.get(timeout=0.05)
                except queue.Empty:
                    item = None
                if item is _DROP:
                    self.connection.shutdown(socket.SHUT_RDWR)  # abrupt, as a dying relay or network
                    return
                if item is not None:
                    self._chunk(item)
                    continue
                if ch.keepalive and not ch.silent and time.monotonic() - last >= ch.keepalive:
                    self._chunk(ch.keepalive_text.encode())
                    last = time.monotonic()
        except OSError:
            return
        finally:
            ch._detach(q)

    def _chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class SSEServer:
    """A channel at http://127.0.0.1:PORT/CHANNEL. `connections` counts every stream ever opened."""

    def __init__(self, channel="/sync-agent-test-channel", keepalive=None, keepalive_text=": keepalive\n\n",
                 greeting="event: ready\ndata: {}\n\n"):
        self.path = channel
        self.keepalive = keepalive  # seconds between keep-alive lines; None: none
        self.keepalive_text = keepalive_text
        self.greeting = greeting
        self.silent = False  # True: no keep-alives (a connection that went quiet)
        self.connections = 0
        self._streams = []
        self._lock = threading.Lock()
        self._server = None
        self.port = None

    def start(self):
        handler = type("Handler", (_Handler,), {"channel": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self.drop_all()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}{self.path}"

    def open_streams(self):
        with self._lock:
            return len(self._streams)

    def _attach(self, conn):
        q = queue.Queue()
        with self._lock:
            self._streams.append(q)
            self.connections += 1
        return q

    def _detach(self, q):
        with self._lock:
            if q in self._streams:
                self._streams.remove(q)

    # what the relay sends ------------------------------------------------------------------
    def publish(self, text):
        """Send raw text/event-stream text (whole events, blank line included) to every open stream."""
        data = text.encode() if isinstance(text, str) else text
        with self._lock:
            streams = list(self._streams)
        for q in streams:
            q.put(data)
        return len(streams)

    def event(self, data, name=None):
        """One event; multi-line data goes out as several `data:` lines."""
        lines = ([f"event: {name}"] if name else []) + [f"data: {x}" for x in data.split("\n")]
        return self.publish("\n".join(lines) + "\n\n")

    def ping(self):
        return self.event("{}", "ping")

    def comment(self, text="keepalive"):
        return self.publish(f": {text}\n\n")

    def send_smee(self, headers, body_obj, query=None):
        """A delivery as smee.io relays it: the headers lower-cased, the body parsed (re-serialised here)."""
        doc = {k.lower(): v for k, v in headers.items()}
        doc.update(body=body_obj, query=query or {}, timestamp=int(time.time() * 1000))
        return self.event(json.dumps(doc, ensure_ascii=False))

    def send_gosmee(self, headers, raw_body):
        """A delivery as gosmee relays it: the raw body bytes kept as base64 in `bodyB`."""
        doc = {k.lower(): v for k, v in headers.items()}
        doc.update(bodyB=base64.b64encode(raw_body).decode(), timestamp=str(int(time.time() * 1000)))
        return self.event(json.dumps(doc))

    def drop_all(self):
        """Cut every open stream at once."""
        with self._lock:
            streams = list(self._streams)
        for q in streams:
            q.put(_DROP)
        return len(streams)
