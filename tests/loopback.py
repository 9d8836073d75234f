"""Plumbing shared by the loopback fakes: a threaded HTTP/1.1 server whose open connections can be cut."""
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class TrackedHandler(BaseHTTPRequestHandler):
    """Keep-alive handler that registers its connection with its server's owner (`forge`)."""

    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid a 40 ms delayed-ACK stall
    forge = None  # set on a per-server subclass

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.forge._track(self.connection, add=True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.forge._track(self.connection, add=False)


class LoopbackServer:
    """start()/stop() on 127.0.0.1 (the same port again after a stop); `handler` is a TrackedHandler class.

    A subclass sets `self._lock` before calling start() and serves through `handler`.
    """

    handler = TrackedHandler

    def _init_server(self):
        self._conns = set()
        self._server = None
        self.port = None

    def start(self):
        """Listen on 127.0.0.1 and serve in a daemon thread."""
        handler = type("Handler", (self.handler,), {"forge": self})
        self._server = _Server(("127.0.0.1", self.port or 0), handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        """Stop listening and cut open keep-alive connections, so clients see the outage."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def web_root(self):
        return f"http://127.0.0.1:{self.port}"

    def _track(self, conn, add):
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)
