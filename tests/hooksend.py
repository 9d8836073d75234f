"""Sending webhook deliveries and other HTTP requests to the agent's listener, as real clients would."""
import hashlib
import hmac
import http.client
import json
import re
import socket
import time
import uuid
from dataclasses import dataclass, field

ZEROS = "0" * 40


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign(secret, body):
    """GitHub's X-Hub-Signature-256 value for body."""
    secret = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def push_body(full_name, branch="main", before=ZEROS, after=ZEROS, deleted=False, ref=None, **extra):
    """A GitHub push payload (compact JSON, as GitHub sends it) for full_name's branch."""
    doc = {"ref": ref or f"refs/heads/{branch}", "before": before, "after": after,
           "created": before == ZEROS and not deleted, "deleted": deleted, "forced": False,
           "head_commit": None if deleted else {"id": after, "message": "a change"},
           "repository": {"full_name": full_name, "name": full_name.split("/")[-1], "default_branch": "main"},
           **extra}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def delivery_headers(event="push", secret=None, body=b"", delivery=None, signature=None):
    """Headers of a GitHub delivery; signed with secret unless signature is given (False: no signature)."""
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/test"}
    if signature is None and secret is not None:
        signature = sign(secret, body)
    if signature:
        headers["X-Hub-Signature-256"] = signature
    return headers


@dataclass
class Reply:
    status: int
    headers: dict  # lower-cased names
    body: bytes
    seconds: float = 0.0

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")


@dataclass
class Client:
    """http.client against the listener; keeps every reply so tests can search them all."""

    port: int
    host: str = "127.0.0.1"
    timeout: float = 10.0
    replies: list = field(default_factory=list)

    def request(self, method, path, body=None, headers=None):
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()
        reply.seconds = time.monotonic() - t0
        self.replies.append(reply)
        return reply

    def get(self, path):
        return self.request("GET", path)

    def deliver(self, body, event="push", secret=None, delivery=None, signature=None):
        """POST /webhook as GitHub would."""
        return self.request("POST", "/webhook", body,
                            delivery_headers(event, secret, body, delivery, signature))

    def all_text(self):
        """Every reply's status line, headers and body, as one string."""
        return "\n".join(f"{r.status} {r.headers} {r.text}" for r in self.replies)


def raw_exchange(port, head, body=b"", chunk=16384, pause=0.0, timeout=10.0):
    """Send head and then body over a plain socket, chunk by chunk, the way a sender that does not wait
    for an early answer does; then read until the server closes. Returns everything received.

    A reset while sending or reading ends that phase; whatever had arrived is returned.
    """
    return raw_exchange_full(port, head, body, chunk, pause, timeout)[0]


def raw_exchange_full(port, head, body=b"", chunk=16384, pause=0.0, timeout=10.0):
    """raw_exchange, and whether the whole request could be sent (False: the server reset the connection
    while the client was still sending: it closed without reading, and a client may lose the answer)."""
    got = bytearray()
    sent_whole = True
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(head)
            for i in range(0, len(body), chunk):
                s.sendall(body[i:i + chunk])
                if pause:
                    time.sleep(pause)
        except OSError:
            sent_whole = False
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                got += data
        except OSError:
            pass
    return bytes(got), sent_whole


def parse_raw(data):
    """(status, lower-cased headers, body) of a raw HTTP/1.1 answer; status None if there is none."""
    head, sep, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    if not m or not sep:
        return None, {}, b""
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), headers, body


def metric_samples(text):
    """{(name, frozenset(labels.items())): value} from Prometheus text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def metric_sum(samples, name, **labels):
    """The sum of a metric's samples whose labels include these."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))
