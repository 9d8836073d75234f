"""A notification service on loopback for apprise's `json://127.0.0.1:PORT/PATH` target: it records every
POST (path and the JSON apprise sends: title, message, type), and can refuse (HTTP 500) or hang."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from waiting import wait_until


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    receiver = None  # set on a per-server subclass

    def log_message(self, *args):
        pass

    def do_POST(self):
        rcv = self.receiver
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = {"unparsed": raw.decode("utf-8", "replace")}
        with rcv.lock:
            rcv.posts.append({"path": self.path, "at": time.monotonic(), **doc})
        if rcv.mode == "hang":
            rcv.release.wait(60)  # never answers while the test runs
            self.close_connection = True
            return
        status = 500 if rcv.mode == "error" else 200
        body = b'{"error": "refused"}' if status == 500 else b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Receiver:
    """mode: "ok" (200), "error" (500 for every POST) or "hang" (reads the request, never answers)."""

    def __init__(self, mode="ok"):
        self.mode = mode
        self.posts = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self._server = None
        self.port = None

    def start(self):
        handler = type("Handler", (_Handler,), {"receiver": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, path="/"):
        """The apprise URL that posts JSON here."""
        return f"json://127.0.0.1:{self.port}{path}"

    def messages(self, path=None):
        """Every notification received (optionally only those posted to `path`), oldest first."""
        with self.lock:
            return [p for p in self.posts if path is None or p["path"] == path]

    def wait_for(self, count, path=None, timeout=10.0):
        """Wait until at least `count` notifications arrived; return them all."""
        return wait_until(lambda: len(self.messages(path)) >= count and self.messages(path), timeout,
                          what=f"{count} notification(s) at {path or 'any path'} (got {len(self.messages(path))})")
