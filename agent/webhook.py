"""Webhook deliveries: verify the signature over the raw bytes, then say which repos to nudge.

Pure functions and a small app object; the HTTP plumbing lives in httpserver.py.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

from .checkout import normalise_url

REPLAY_MEMORY = 10000  # delivery ids remembered


def verify_github(secret: bytes, body: bytes, header: Optional[str]) -> bool:
    """True when X-Hub-Signature-256 is `sha256=` + hex HMAC-SHA256(secret, body), compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want.encode(), header.strip().lower().encode())


@dataclass(frozen=True)
class Delivery:
    """What a verified push says, reduced to what routing needs."""

    event: str
    full_name: str = ""
    ref: str = ""
    urls: tuple = ()
    default_branch: Optional[str] = None
    deleted: bool = False


@dataclass
class Answer:
    status: int
    doc: dict = field(default_factory=dict)
    kind: str = "ignored"  # for metrics: nudged, ignored, duplicate, rejected


def parse_delivery(event: str, body: bytes) -> Delivery:
    """Read the parts of a GitHub delivery we route on; ValueError when the body is not a JSON object."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    repo = data.get("repository") if isinstance(data.get("repository"), dict) else {}
    urls = tuple(str(repo[k]) for k in ("clone_url", "ssh_url", "git_url", "html_url", "url")
                 if isinstance(repo.get(k), str))
    return Delivery(event=event, full_name=str(repo.get("full_name") or ""), ref=str(data.get("ref") or ""),
                    urls=urls, default_branch=repo.get("default_branch") if isinstance(
                        repo.get("default_branch"), str) else None, deleted=data.get("deleted") is True)


def route_push(d: Delivery, repos, branch_of) -> list:
    """Names of the configured repos a push is about: same repository and followed branch."""
    if not d.ref.startswith("refs/heads/"):
        return []
    pushed = d.ref[len("refs/heads/"):]
    urls = {normalise_url(u) for u in d.urls}
    out = []
    for spec in repos:
        if spec.source == "github":
            same = bool(d.full_name) and spec.slug.lower() == d.full_name.lower()
        else:
            same = normalise_url(spec.url) in urls
        if same and pushed == (branch_of(spec) or d.default_branch):
            out.append(spec.name)
    return out


class ReplayGuard:
    """Remembers recent delivery ids; thread-safe and bounded."""

    def __init__(self, size=REPLAY_MEMORY):
        self.size = size
        self._seen = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str) -> bool:
        with self._lock:
            if delivery_id in self._seen:
                self._seen.move_to_end(delivery_id)
                return False
            self._seen[delivery_id] = True
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True


class WebhookApp:
    """POST /webhook: verify, parse, route, nudge. `nudge(name)` asks the agent for a check."""

    def __init__(self, secret: Optional[str], repos_fn, branch_of, nudge):
        self.secret = secret.encode() if secret else None
        self.repos_fn = repos_fn
        self.branch_of = branch_of
        self.nudge = nudge
        self.replays = ReplayGuard()

    def handle(self, headers: dict, body: bytes) -> Answer:
        """headers: lower-cased names. Nothing is parsed before the signature checks out."""
        if self.secret is not None and not verify_github(self.secret, body, headers.get("x-hub-signature-256")):
            why = "missing" if not headers.get("x-hub-signature-256") else "bad"
            return Answer(401, {"error": f"{why} X-Hub-Signature-256"}, "rejected")
        event = headers.get("x-github-event", "")
        try:
            d = parse_delivery(event, body)
        except (ValueError, UnicodeDecodeError) as e:
            return Answer(400, {"error": f"the body is not JSON: {_short(e)}"}, "rejected")
        delivery = headers.get("x-github-delivery")
        if delivery and not self.replays.first_time(delivery):
            return Answer(200, {"ignored": "delivery seen before", "delivery": delivery[:64]}, "duplicate")
        if event == "ping":
            return Answer(200, {"ok": "pong", "ignored": "ping"}, "ignored")
        if event != "push":
            return Answer(200, {"ignored": f"event {event[:40]!r} is not a push"}, "ignored")
        names = route_push(d, self.repos_fn(), self.branch_of)
        if not names:
            return Answer(200, {"ignored": "no configured repo follows this repository and branch"}, "ignored")
        for n in names:
            self.nudge(n)
        return Answer(202, {"nudged": names}, "nudged")


def _short(e) -> str:
    return " ".join(str(e).split())[:80]
