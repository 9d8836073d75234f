"""A fake GitHub REST API (Enterprise-style /api/v3) on loopback, backed by real bare git repositories."""
import hashlib
import http
import os
import json
import math
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from loopback import LoopbackServer, TrackedHandler

PREFIX = "/api/v3"
SHA_MEDIA = "application/vnd.github.sha"
DOCS = "https://docs.github.com/rest"
_GIT_ENV = {"LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
_AUTH = re.compile(r"^\s*(?:token|bearer)\s+(\S+)\s*$", re.IGNORECASE)


@dataclass
class _Reply:
    """One answer before faults, conditionals and rate limits are applied."""

    status: int
    body: bytes
    ctype: str = "application/json; charset=utf-8"
    etag: str | None = None


def _json(status, obj):
    """A JSON reply; a 200 carries a strong ETag of the body's sha256."""
    body = json.dumps(obj, ensure_ascii=False).encode()
    etag = f'"{hashlib.sha256(body).hexdigest()}"' if status == 200 else None
    return _Reply(status, body, etag=etag)


def _error(status, message):
    """A GitHub-style JSON error body."""
    return _json(status, {"message": message, "documentation_url": DOCS})


def _etag_matches(if_none_match, etag):
    """True when an If-None-Match header names the etag (weak or strong, or '*')."""
    if not if_none_match or not etag:
        return False
    strip = lambda tag: tag.strip().removeprefix("W/")  # noqa: E731
    wanted = {strip(tag) for tag in if_none_match.split(",")}
    return "*" in wanted or strip(etag) in wanted


def _git_env():
    """A minimal environment for read-only git calls: C locale, no user or system config."""
    return {**_GIT_ENV, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _rev_parse(bare, rev):
    """The commit sha that rev names in the bare repository, or None."""
    if not rev or rev.startswith("-"):
        return None
    out = subprocess.run(
        ["git", "--git-dir", bare, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True, text=True, env=_git_env())
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def _commit_info(bare, sha):
    """Author, committer, parents and message of one commit, as GitHub's JSON shapes them."""
    fmt = "%P%n%an%n%ae%n%aI%n%cn%n%ce%n%cI%n%B"
    out = subprocess.run(["git", "--git-dir", bare, "log", "-1", f"--format={fmt}", sha],
                         capture_output=True, text=True, env=_git_env()).stdout
    parents, an, ae, ad, cn, ce, cd, message = (out.split("\n", 7) + [""] * 8)[:8]
    return {
        "parents": [{"sha": p} for p in parents.split()],
        "commit": {"message": message.rstrip("\n"),
                   "author": {"name": an, "email": ae, "date": ad},
                   "committer": {"name": cn, "email": ce, "date": cd}},
    }


class _Handler(TrackedHandler):
    def do_GET(self):
        self._serve(send_body=True)

    def do_HEAD(self):
        self._serve(send_body=False)

    def do_other(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # drain, keep the connection usable
        self._serve(send_body=True)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_other

    def _serve(self, send_body):
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, body = self.forge._answer(self.command, self.path, headers)
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and status != 304:
            self.wfile.write(body)


class FakeGitHub(LoopbackServer):
    """GitHub's head-checking REST routes with ETags, rate limits and injectable faults."""

    handler = _Handler

    def __init__(self):
        self._lock = threading.Lock()
        self._repos = {}  # lowercased full name -> (full_name, bare path, default branch)
        self._budgets = {}  # token or None -> {"used": n, "reset": epoch}
        self._init_server()
        self.requests = []
        self.auth_limit, self.anon_limit = 5000, 60
        self.delay = 0.0
        self.require_token = None
        self.clear_faults()

    @property
    def base_url(self):
        return self.web_root + PREFIX

    # repositories ----------------------------------------------------------
    def add_repo(self, full_name, bare_path, default_branch="main"):
        """Serve a bare repository under owner/name (matched case-insensitively)."""
        with self._lock:
            self._repos[full_name.lower()] = (full_name, str(Path(bare_path).absolute()), default_branch)

    def remove_repo(self, full_name):
        """Forget a repository: its routes answer 404 from now on."""
        with self._lock:
            self._repos.pop(full_name.lower(), None)

    # faults ----------------------------------------------------------------
    def fail_next(self, n, status=502):
        """Answer the next n requests with this status and a JSON error."""
        with self._lock:
            self._fail_n, self._fail_n_status = n, status

    def fail_for(self, seconds, status=503):
        """Answer every request with this status for a while."""
        with self._lock:
            self._fail_until, self._fail_until_status = time.monotonic() + seconds, status

    def rate_limit(self, seconds, status=403):
        """Refuse every request as rate-limited for a while (403 with reset, or 429 with Retry-After)."""
        with self._lock:
            self._rl_until, self._rl_epoch, self._rl_status = time.monotonic() + seconds, time.time() + seconds, status

    def garbage_next(self, n):
        """Answer the next n requests 200 with a truncated body."""
        with self._lock:
            self._garbage_n = n

    def set_remaining(self, remaining, token=None):
        """Spend the hourly budget of a token (None: anonymous) down to `remaining`."""
        with self._lock:
            limit = self.auth_limit if token else self.anon_limit
            self._budget(token)["used"] = max(0, limit - remaining)

    def clear_faults(self):
        """Back to normal service (delay and require_token are left alone)."""
        with self._lock:
            self._fail_n, self._fail_n_status = 0, 502
            self._fail_until, self._fail_until_status = 0.0, 503
            self._rl_until, self._rl_epoch, self._rl_status = 0.0, 0.0, 403
            self._garbage_n = 0

    # log -------------------------------------------------------------------
    def head_requests(self, since=None):
        """Logged requests for a branch head (commits/{ref}), optionally from monotonic time `since`."""
        return [r for r in self._since(since) if r["kind"] == "head"]

    def count(self, since=None):
        """How many requests arrived (from monotonic time `since`)."""
        return len(self._since(since))

    def reset_log(self):
        with self._lock:
            self.requests.clear()

    def _since(self, since):
        with self._lock:
            return [r for r in self.requests if since is None or r["t"] >= since]

    # serving ---------------------------------------------------------------
    def _answer(self, method, raw_path, headers):
        """Status, headers and body for one request; logs it."""
        t = time.monotonic()
        if self.delay:
            time.sleep(self.delay)
        raw = urlsplit(raw_path).path
        kind, repo, reply = self._route(method, raw, headers.get("accept", ""))
        match = _AUTH.match(headers.get("authorization", ""))
        token = match.group(1) if match else None
        with self._lock:
            status, extra, body = self._apply(kind, reply, token, headers)
            self.requests.append({"t": t, "method": method, "path": unquote(raw), "headers": headers,
                                  "status": status, "kind": kind, "repo": repo})
        return status, extra, body

    def _route(self, method, raw, accept):
        """(kind, repo name, reply) for a path, ignoring faults and limits."""
        sub = raw[len(PREFIX):] if raw.startswith(PREFIX + "/") else None
        if sub is not None and sub.rstrip("/") == "/rate_limit":
            return "rate_limit", None, None
        if sub is None or not sub.startswith("/repos/") or method not in ("GET", "HEAD"):
            return "unknown", None, _error(404, "Not Found")
        parts = sub[len("/repos/"):].split("/", 2)
        if len(parts) < 2 or not parts[0] or not parts[1]:
            return "unknown", None, _error(404, "Not Found")
        asked = f"{unquote(parts[0])}/{unquote(parts[1])}"
        tail = parts[2] if len(parts) == 3 else ""
        if tail.strip("/") == "":
            kind, arg = "repo", None
        elif tail.startswith("commits/") and tail[len("commits/"):]:
            kind, arg = "head", unquote(tail[len("commits/"):])
        elif re.match(r"git/refs?/heads/.", tail):
            kind, arg = "ref", unquote(tail.split("/heads/", 1)[1])
        else:
            return "unknown", asked, _error(404, "Not Found")
        with self._lock:
            found = self._repos.get(asked.lower())
        if found is None:
            return kind, asked, _error(404, "Not Found")
        return kind, found[0], getattr(self, f"_{kind}_reply")(*found, arg, accept)

    def _repo_reply(self, full_name, bare, default_branch, _arg, _accept):
        owner, name = full_name.split("/", 1)
        return _json(200, {"full_name": full_name, "name": name, "owner": {"login": owner},
                           "default_branch": default_branch, "private": False,
                           "clone_url": Path(bare).as_uri(), "html_url": f"{self.web_root}/{full_name}",
                           "url": f"{self.base_url}/repos/{full_name}"})

    def _head_reply(self, full_name, bare, _default, ref, accept):
        sha = _rev_parse(bare, ref)
        if sha is None:
            return _error(422, f"No commit found for SHA: {ref}")
        if SHA_MEDIA in accept:
            return _Reply(200, sha.encode(), "text/plain; charset=utf-8", f'"{sha}"')
        return _json(200, {"sha": sha, "url": f"{self.base_url}/repos/{full_name}/commits/{sha}",
                           "html_url": f"{self.web_root}/{full_name}/commit/{sha}", **_commit_info(bare, sha)})

    def _ref_reply(self, full_name, bare, _default, branch, _accept):
        sha = _rev_parse(bare, f"refs/heads/{branch}")
        if sha is None:
            return _error(404, "Not Found")
        api = f"{self.base_url}/repos/{full_name}/git"
        return _json(200, {"ref": f"refs/heads/{branch}", "node_id": f"REF_{sha[:12]}",
                           "url": f"{api}/refs/heads/{branch}",
                           "object": {"sha": sha, "type": "commit", "url": f"{api}/commits/{sha}"}})

    def _budget(self, token):
        """The hourly counter of one identity, renewed when its window has passed (lock held)."""
        budget = self._budgets.get(token)
        if budget is None or time.time() >= budget["reset"]:
            budget = self._budgets[token] = {"used": 0, "reset": int(time.time()) + 3600}
        return budget

    def _apply(self, kind, reply, token, headers):
        """Faults, credentials, the rate limit and conditionals, in that order (lock held)."""
        now = time.monotonic()
        limit = self.auth_limit if token else self.anon_limit
        budget = self._budget(token)
        rl = {"limit": limit, "used": budget["used"], "reset": budget["reset"]}
        extra = {}
        charge = True
        if self._fail_n > 0:
            self._fail_n -= 1
            reply, charge = _error(self._fail_n_status, _phrase(self._fail_n_status)), False
        elif now < self._fail_until:
            reply, charge = _error(self._fail_until_status, _phrase(self._fail_until_status)), False
        elif now < self._rl_until:
            rl.update(used=limit, reset=math.ceil(self._rl_epoch))
            charge = False
            if kind == "rate_limit":
                reply = _json(200, _limits_body(rl))
            else:
                reply = _error(self._rl_status, "API rate limit exceeded for 127.0.0.1.")
                if self._rl_status == 429:
                    extra["Retry-After"] = str(max(1, math.ceil(self._rl_until - now)))
        elif self.require_token and token != self.require_token:
            reply, charge = _error(401, "Bad credentials"), False
        elif kind == "rate_limit":
            reply, charge = _json(200, _limits_body(rl)), False
        elif budget["used"] >= limit:
            reply, charge = _error(403, "API rate limit exceeded for 127.0.0.1."), False
        elif self._garbage_n > 0:
            self._garbage_n -= 1
            reply = _Reply(200, reply.body[: len(reply.body) // 2] or b'{"sha": ', reply.ctype)
        elif reply.status == 200 and _etag_matches(headers.get("if-none-match"), reply.etag):
            reply = _Reply(304, b"", reply.ctype, reply.etag)
            charge = token is None  # GitHub does not charge an authenticated 304
        if charge:
            budget["used"] += 1
            rl["used"] = budget["used"]
        extra.update({"Content-Type": reply.ctype,
                      "x-ratelimit-limit": str(rl["limit"]),
                      "x-ratelimit-remaining": str(max(0, rl["limit"] - rl["used"])),
                      "x-ratelimit-used": str(rl["used"]),
                      "x-ratelimit-reset": str(rl["reset"]),
                      "x-ratelimit-resource": "core"})
        if reply.etag:
            extra["ETag"] = reply.etag
        return reply.status, extra, reply.body


def _phrase(status):
    """The standard reason phrase for a status, for fault bodies."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Injected fault"


def _limits_body(rl):
    """The /rate_limit document for one identity's counters."""
    core = {"limit": rl["limit"], "used": rl["used"], "remaining": max(0, rl["limit"] - rl["used"]),
            "reset": rl["reset"], "resource": "core"}
    return {"resources": {"core": core}, "rate": core}
