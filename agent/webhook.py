"""Webhook deliveries: verify the signature over the raw bytes, then say which repos to nudge.

Pure functions and a small app object; the HTTP plumbing lives in httpserver.py.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

from .checkout import normalise_url

REPLAY_MEMORY = 10000  # delivery ids remembered
GITEE_WINDOW_MS = 5 * 60 * 1000  # how old a Gitee signature's timestamp may be
SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def verify_github(secret: bytes, body: bytes, header: Optional[str]) -> bool:
    """True when X-Hub-Signature-256 is `sha256=` + hex HMAC-SHA256(secret, body), compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want.encode(), header.strip().lower().encode())


def verify_gitea(secret: bytes, body: bytes, header: Optional[str]) -> bool:
    """X-Gitea-Signature / X-Forgejo-Signature: hex HMAC-SHA256 of the body, no prefix."""
    if not header:
        return False
    want = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want.encode(), header.strip().lower().encode())


def verify_token(secret: bytes, header: Optional[str]) -> bool:
    """GitLab's X-Gitlab-Token (and Gitee's password mode): the secret itself, compared in constant time."""
    return bool(header) and hmac.compare_digest(secret, header.encode())


def verify_gitee(secret: bytes, token: Optional[str], timestamp: Optional[str], now_ms: float) -> bool:
    """X-Gitee-Token: the password itself, or base64(HMAC-SHA256(secret, f"{ts}\\n{secret}")) with a recent
    X-Gitee-Timestamp (the signature does not cover the body, so an old one must not be replayed)."""
    if not token:
        return False
    if verify_token(secret, token):
        return True
    if not timestamp or not timestamp.isdigit() or abs(now_ms - int(timestamp)) > GITEE_WINDOW_MS:
        return False
    mac = hmac.new(secret, timestamp.encode() + b"\n" + secret, hashlib.sha256).digest()
    # Gitee's own documentation URL-encodes the base64 sign, what it sends is plain base64: take both.
    # (Plain base64 holds no '%', so decoding leaves it as it is.)
    return hmac.compare_digest(base64.b64encode(mac), urllib.parse.unquote(token.strip()).encode())


def forge_of(headers: dict) -> str:
    """Which forge sent a delivery, from its headers (Gitea also sends GitHub's, so it goes first)."""
    if "x-gitea-event" in headers or "x-forgejo-event" in headers or "x-gitea-signature" in headers \
            or "x-forgejo-signature" in headers:
        return "gitea"
    if "x-gitlab-event" in headers or "x-gitlab-token" in headers:
        return "gitlab"
    if "x-gitee-event" in headers or "x-gitee-token" in headers:
        return "gitee"
    return "github"


def authentic(forge: str, secret: bytes, headers: dict, body: bytes, now_ms: float) -> Optional[str]:
    """None when the delivery proves it knows the secret; else what is wrong with it."""
    if forge == "gitea":
        sig = headers.get("x-gitea-signature") or headers.get("x-forgejo-signature")
        return None if verify_gitea(secret, body, sig) else ("bad" if sig else "missing") + " X-Gitea-Signature"
    if forge == "gitlab":
        tok = headers.get("x-gitlab-token")
        return None if verify_token(secret, tok) else ("bad" if tok else "missing") + " X-Gitlab-Token"
    if forge == "gitee":
        tok = headers.get("x-gitee-token")
        ok = verify_gitee(secret, tok, headers.get("x-gitee-timestamp"), now_ms)
        return None if ok else ("bad or expired" if tok else "missing") + " X-Gitee-Token"
    sig = headers.get("x-hub-signature-256")
    return None if verify_github(secret, body, sig) else ("bad" if sig else "missing") + " X-Hub-Signature-256"


def event_of(forge: str, headers: dict) -> str:
    """The event in GitHub's words: push, ping, or something else."""
    if forge == "gitea":
        ev = headers.get("x-gitea-event") or headers.get("x-forgejo-event") or headers.get("x-github-event", "")
    elif forge == "gitlab":
        ev = headers.get("x-gitlab-event", "")
    elif forge == "gitee":
        ev = headers.get("x-gitee-event", "")
    else:
        ev = headers.get("x-github-event", "")
    return {"push hook": "push", "push": "push", "ping": "ping"}.get(ev.strip().lower(), ev.strip()[:40])


def delivery_id(forge: str, headers: dict) -> Optional[str]:
    names = {"github": ("x-github-delivery",), "gitea": ("x-gitea-delivery", "x-forgejo-delivery",
                                                          "x-github-delivery"),
             "gitlab": ("x-gitlab-event-uuid", "idempotency-key"), "gitee": ("x-gitee-delivery",)}[forge]
    for n in names:
        if headers.get(n):
            return f"{forge}:{headers[n][:100]}"
    return None


@dataclass(frozen=True)
class Delivery:
    """What a verified push says, reduced to what routing needs."""

    event: str
    full_name: str = ""
    ref: str = ""
    urls: tuple = ()
    default_branch: Optional[str] = None
    deleted: bool = False
    forge: str = "github"
    after: Optional[str] = None  # the new head the push announces


@dataclass
class Answer:
    status: int
    doc: dict = field(default_factory=dict)
    kind: str = "ignored"  # for metrics: nudged, ignored, duplicate, rejected


_URL_KEYS = ("clone_url", "ssh_url", "git_url", "html_url", "url", "git_http_url", "git_ssh_url", "http_url",
             "web_url")


def parse_delivery(event: str, body: bytes, forge: str = "github") -> Delivery:
    """Read the parts of a delivery we route on; ValueError when the body is not a JSON object."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    repo = data.get("project") if forge == "gitlab" else data.get("repository")
    repo = repo if isinstance(repo, dict) else {}
    name = repo.get("path_with_namespace") if forge == "gitlab" else (repo.get("full_name")
                                                                      or repo.get("path_with_namespace"))
    urls = tuple(str(repo[k]) for k in _URL_KEYS if isinstance(repo.get(k), str))
    after = str(data.get("after") or "")
    deleted = data.get("deleted") is True or (after != "" and set(after) == {"0"})
    branch = repo.get("default_branch")
    return Delivery(event=event, full_name=str(name or ""), ref=str(data.get("ref") or ""), urls=urls,
                    default_branch=branch if isinstance(branch, str) else None, deleted=deleted, forge=forge,
                    after=after if SHA_RE.match(after) and not deleted else None)


def route_push(d: Delivery, repos, branch_of) -> list:
    """Names of the configured repos a push is about: same repository and followed branch."""
    if not d.ref.startswith("refs/heads/"):
        return []
    pushed = d.ref[len("refs/heads/"):]
    urls = {normalise_url(u) for u in d.urls}
    out = []
    for spec in repos:
        if spec.source == "git":
            same = normalise_url(spec.url) in urls
        else:
            same = spec.source == d.forge and bool(d.full_name) and spec.slug.lower() == d.full_name.lower()
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
    """Deliveries from POST /webhook and from relays: verify, parse, route, nudge.

    `nudge(name, trigger, after)` asks the agent for a check of a repo; `after` is the head the
    verified delivery announced, or None.

    Each repo's deliveries are verified with its own secret when it names one, else with the
    [webhook] secret; a delivery moves only repos whose secret it proves it knows. `insecure`
    (insecure_no_secret): repos with no secret at all take unsigned deliveries.
    """

    def __init__(self, secret: Optional[str], repos_fn, branch_of, nudge, clock=time.time, insecure=None):
        self.secret = secret.encode() if secret else None
        self.insecure = self.secret is None if insecure is None else insecure
        self.repos_fn = repos_fn
        self.branch_of = branch_of
        self.nudge = nudge
        self.clock = clock
        self.replays = ReplayGuard()

    def key_of(self, spec) -> Optional[bytes]:
        """The secret a delivery about this repo must prove it knows (None: unsigned is accepted)."""
        own = getattr(spec, "secret", None)
        return own.encode() if own else self.secret

    def handle(self, headers: dict, body: bytes, trigger: str = "webhook", bodies=None) -> Answer:
        """headers: lower-cased names. Nothing is parsed before the delivery proves it knows a secret.

        bodies: other renderings of the same body to try the signature on (a relay that re-serialised it).
        """
        forge = forge_of(headers)
        repos = self.repos_fn()
        keys = list(dict.fromkeys(k for k in [self.secret, *map(self.key_of, repos)] if k))
        key, body, problem = self._verify(forge, headers, [body, *(bodies or ())], keys)
        if key is None and not self.insecure:
            return Answer(401, {"error": problem or "no webhook secret configured"}, "rejected")
        event = event_of(forge, headers)
        try:
            d = parse_delivery(event, body, forge)
        except (ValueError, UnicodeDecodeError) as e:
            return Answer(400, {"error": f"the body is not JSON: {_short(e)}"}, "rejected")
        did = delivery_id(forge, headers)
        if did and not self.replays.first_time(did):
            return Answer(200, {"ignored": "delivery seen before", "delivery": did}, "duplicate")
        if event == "ping":
            return Answer(200, {"ok": "pong", "ignored": "ping"}, "ignored")
        if event != "push":
            return Answer(200, {"ignored": f"event {event!r} is not a push"}, "ignored")
        names = route_push(d, repos, self.branch_of)
        if not names:
            return Answer(200, {"ignored": "no configured repo follows this repository and branch"}, "ignored")
        by_name = {r.name: r for r in repos}
        names = [n for n in names if self.key_of(by_name[n]) == key]
        if not names:  # signed, but with another repo's secret (or unsigned, for a repo that has one)
            return Answer(401, {"error": "the delivery is not signed with this repository's secret"}, "rejected")
        after = d.after if key is not None else None  # an unverified body is no evidence
        for n in names:
            self.nudge(n, trigger, after)
        return Answer(202, {"nudged": names}, "nudged")


    def _verify(self, forge, headers, renderings, keys):
        """(the key it verified with, the rendering that verified, None), or (None, the body as sent, the
        first reason it did not)."""
        problem = None
        for k in keys:
            for rendering in renderings:
                why = authentic(forge, k, headers, rendering, self.clock() * 1000)
                if why is None:
                    return k, rendering, None
                problem = problem or why
        return None, renderings[0], problem


def _short(e) -> str:
    return " ".join(str(e).split())[:80]
