"""A fake Gitee (v5), GitLab (v4) or Gitea (v1) REST API on loopback, backed by real bare git repositories.

Besides the head routes it serves the repositories themselves over git's smart HTTP (`git http-backend`),
so the clone URL the API names is one git can really fetch from; on the GitLab style, when a token is
required, git must present it as `Basic oauth2:TOKEN`, as GitLab wants.
"""
import base64
import hashlib
import json
import math
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from loopback import LoopbackServer, TrackedHandler

_GIT_ENV = {"LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
_TOKEN_AUTH = re.compile(r"^\s*token\s+(\S+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Style:
    """How one forge shapes its API: prefix, where the token goes, whether answers carry ETags."""

    prefix: str
    etags: bool
    rate_prefix: str  # rate-limit header family


STYLES = {
    "gitee": Style("/api/v5", etags=True, rate_prefix="X-RateLimit-"),
    "gitlab": Style("/api/v4", etags=True, rate_prefix="RateLimit-"),
    "gitea": Style("/api/v1", etags=False, rate_prefix="X-RateLimit-"),
}


@dataclass
class _Reply:
    status: int
    body: bytes
    ctype: str = "application/json; charset=utf-8"
    etag: str | None = None
    headers: dict | None = None


def _json(status, obj, etags=False):
    """A JSON reply; with etags, a 200 carries a weak ETag of the body (as Rack-based forges send)."""
    body = json.dumps(obj).encode()
    etag = f'W/"{hashlib.sha256(body).hexdigest()[:32]}"' if etags and status == 200 else None
    return _Reply(status, body, etag=etag)


def _etag_matches(if_none_match, etag):
    if not if_none_match or not etag:
        return False
    strip = lambda tag: tag.strip().removeprefix("W/")  # noqa: E731
    wanted = {strip(tag) for tag in if_none_match.split(",")}
    return "*" in wanted or strip(etag) in wanted


def _git_env():
    return {**_GIT_ENV, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _rev_parse(bare, rev):
    out = subprocess.run(["git", "--git-dir", bare, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                         capture_output=True, text=True, env=_git_env())
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


class _Handler(TrackedHandler):
    def do_GET(self):
        self._serve(b"")

    def do_POST(self):
        self._serve(self._read_body())

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self, body_in):
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, body = self.forge._answer(self.command, self.path, headers, body_in)
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 304:
            self.wfile.write(body)


class FakeForge(LoopbackServer):
    """One forge of the given style ("gitee", "gitlab", "gitea") with ETags, faults, rate limits and a token check."""

    handler = _Handler

    def __init__(self, style, token=None):
        self.style_name = style
        self.style = STYLES[style]
        self.token = token  # when set, API (and GitLab git) requests must present it
        self.etags = self.style.etags
        self._lock = threading.Lock()
        self._repos = {}  # lowercased path -> (path, bare, default branch)
        self._init_server()
        self.requests = []
        self.clear_faults()

    @property
    def base_url(self):
        return self.web_root + self.style.prefix

    def clone_url(self, path):
        return f"{self.web_root}/{path}.git"

    # repositories ----------------------------------------------------------
    def add_repo(self, path, bare, default_branch="main"):
        """Serve a bare repository under `owner/repo` (GitLab: `group/.../project`)."""
        with self._lock:
            self._repos[path.lower()] = (path, str(Path(bare).absolute()), default_branch)

    # faults ----------------------------------------------------------------
    def fail_next(self, n, status=502):
        """Answer the next n API requests with this status."""
        with self._lock:
            self._fail_n, self._fail_status = n, status

    def fail_for(self, seconds, status=503):
        with self._lock:
            self._fail_until, self._fail_until_status = time.monotonic() + seconds, status

    def rate_limit(self, seconds):
        """Refuse API requests for a while: 429 with Retry-After (and, GitLab style, RateLimit-Remaining 0)."""
        with self._lock:
            self._rl_until, self._rl_epoch = time.monotonic() + seconds, time.time() + seconds

    def set_quota(self, remaining, limit=100, reset_in=60):
        """From now on every API answer announces the quota; each request spends one."""
        with self._lock:
            self._quota = {"limit": limit, "remaining": remaining, "reset": int(time.time() + reset_in)}

    def answer_next(self, n, status, body):
        """Answer the next n API requests with this status and body (bytes, or an object sent as JSON)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self._lock:
            self._canned = [(status, data)] * n

    def clear_faults(self):
        with self._lock:
            self._fail_n, self._fail_status = 0, 502
            self._fail_until, self._fail_until_status = 0.0, 503
            self._rl_until, self._rl_epoch = 0.0, 0.0
            self._quota = None
            self._canned = []

    # log -------------------------------------------------------------------
    def api_requests(self):
        with self._lock:
            return [r for r in self.requests if r["kind"] != "git"]

    def head_requests(self):
        return [r for r in self.api_requests() if r["kind"] == "head"]

    def git_requests(self):
        with self._lock:
            return [r for r in self.requests if r["kind"] == "git"]

    def reset_log(self):
        with self._lock:
            self.requests.clear()

    # serving ---------------------------------------------------------------
    def _answer(self, method, raw_target, headers, body_in):
        parts = urlsplit(raw_target)
        raw, query = parts.path, parse_qs(parts.query)
        if ".git/" in raw and not raw.startswith(self.style.prefix + "/"):
            return self._git(method, raw, parts.query, headers, body_in)
        token = self._token_of(headers, query)
        kind, reply = self._route(method, raw)
        with self._lock:
            status, extra, body = self._apply(kind, reply, token, headers)
            self.requests.append({"t": time.monotonic(), "method": method, "path": raw, "query": query,
                                  "headers": headers, "status": status, "kind": kind, "token": token})
        return status, extra, body

    def _token_of(self, headers, query):
        if self.style_name == "gitee":
            return (query.get("access_token") or [None])[0]
        if self.style_name == "gitlab":
            return headers.get("private-token")
        m = _TOKEN_AUTH.match(headers.get("authorization", ""))
        return m.group(1) if m else None

    def _route(self, method, raw):
        """(kind, reply) for an API path, before faults and limits; `raw` is still percent-encoded."""
        prefix = self.style.prefix + "/"
        if method != "GET" or not raw.startswith(prefix):
            return "unknown", self._not_found("404 Not Found")
        rest = raw[len(prefix):]
        if self.style_name == "gitlab":
            segs = rest.split("/")
            if len(segs) < 2 or segs[0] != "projects":
                return "unknown", self._not_found("404 Not Found")
            path = unquote(segs[1])  # the full path is one segment: grp%2Fsub%2Fdemo
            if len(segs) == 2:
                kind, branch = "repo", None
            elif len(segs) == 5 and segs[2:4] == ["repository", "branches"] and segs[4]:
                kind, branch = "head", unquote(segs[4])
            else:  # an unencoded slash in the path or the branch lands here, as on GitLab
                return "unknown", self._not_found("404 Not Found")
        else:
            m = re.fullmatch(r"repos/([^/]+)/([^/]+)(?:/branches/(.+))?", rest)
            if not m:
                return "unknown", self._not_found("Not Found")
            path = f"{unquote(m.group(1))}/{unquote(m.group(2))}"
            kind, branch = ("head", unquote(m.group(3))) if m.group(3) else ("repo", None)
        with self._lock:
            found = self._repos.get(path.lower())
        if found is None:
            return kind, self._not_found("404 Project Not Found" if self.style_name == "gitlab" else "Not Found")
        if kind == "repo":
            return kind, _json(200, self._repo_doc(*found), self.etags)
        sha = _rev_parse(found[1], f"refs/heads/{branch}")
        if sha is None:
            return kind, self._not_found("404 Branch Not Found" if self.style_name == "gitlab" else "Branch Not Found")
        return kind, _json(200, self._branch_doc(found[0], branch, sha), self.etags)

    def _not_found(self, message):
        return _json(404, {"message": message})

    def _repo_doc(self, path, _bare, default_branch):
        owner, name = path.rsplit("/", 1)
        web = f"{self.web_root}/{path}"
        if self.style_name == "gitee":
            return {"full_name": path, "path": name, "name": name, "namespace": {"path": owner},
                    "default_branch": default_branch, "html_url": web, "ssh_url": f"git@127.0.0.1:{path}.git"}
        if self.style_name == "gitlab":
            return {"id": abs(hash(path)) % 10**6, "path_with_namespace": path, "default_branch": default_branch,
                    "web_url": web, "http_url_to_repo": self.clone_url(path),
                    "ssh_url_to_repo": f"git@127.0.0.1:{path}.git"}
        return {"full_name": path, "name": name, "owner": {"login": owner}, "default_branch": default_branch,
                "html_url": web, "clone_url": self.clone_url(path), "ssh_url": f"git@127.0.0.1:{path}.git"}

    def _branch_doc(self, path, branch, sha):
        if self.style_name == "gitee":
            return {"name": branch, "commit": {"sha": sha, "url": f"{self.base_url}/repos/{path}/commits/{sha}"},
                    "protected": False}
        if self.style_name == "gitlab":
            return {"name": branch, "merged": False, "protected": False,
                    "commit": {"id": sha, "short_id": sha[:8], "title": "a commit"}}
        return {"name": branch, "protected": False, "commit": {"id": sha, "message": "a commit\n"}}

    def _apply(self, kind, reply, token, headers):
        """Faults, rate limit, credentials, canned answers and conditionals, in that order (lock held)."""
        now = time.monotonic()
        extra = {}
        quota_headers = {}
        if self._quota is not None:
            q = self._quota
            q["remaining"] = max(0, q["remaining"] - 1)
            p = self.style.rate_prefix
            quota_headers = {f"{p}Limit": str(q["limit"]), f"{p}Remaining": str(q["remaining"]),
                             f"{p}Reset": str(q["reset"])}
        if self._fail_n > 0:
            self._fail_n -= 1
            reply = _json(self._fail_status, {"message": "injected fault"})
        elif now < self._fail_until:
            reply = _json(self._fail_until_status, {"message": "injected fault"})
        elif now < self._rl_until:
            reply = _json(429, {"message": "Too Many Requests"})
            extra["Retry-After"] = str(max(1, math.ceil(self._rl_until - now)))
            if self.style_name == "gitlab":
                quota_headers.update({"RateLimit-Remaining": "0", "RateLimit-Reset": str(math.ceil(self._rl_epoch))})
        elif self.token and token != self.token:
            reply = _json(401, {"message": "401 Unauthorized"})
        elif self._canned:
            status, body = self._canned.pop(0)
            reply = _Reply(status, body)
        elif reply.status == 200 and _etag_matches(headers.get("if-none-match"), reply.etag):
            reply = _Reply(304, b"", reply.ctype, reply.etag)
        extra.update(quota_headers)
        extra["Content-Type"] = reply.ctype
        if reply.etag:
            extra["ETag"] = reply.etag
        return reply.status, extra, reply.body

    # git smart HTTP --------------------------------------------------------
    def _git(self, method, raw, query, headers, body_in):
        repo_path, _, rest = unquote(raw).lstrip("/").partition(".git/")
        with self._lock:
            found = self._repos.get(repo_path.lower())
            self.requests.append({"t": time.monotonic(), "method": method, "path": raw, "query": parse_qs(query),
                                  "headers": headers, "status": None, "kind": "git", "token": None})
            entry = self.requests[-1]
        if found is None:
            entry["status"] = 404
            return 404, {"Content-Type": "text/plain"}, b"not found\n"
        if self.style_name == "gitlab" and self.token:
            want = "Basic " + base64.b64encode(f"oauth2:{self.token}".encode()).decode()
            if headers.get("authorization") != want:
                entry["status"] = 401
                challenge = {"Content-Type": "text/plain", "WWW-Authenticate": 'Basic realm="GitLab"'}
                return 401, challenge, b"HTTP Basic: Access denied\n"
        bare = Path(found[1])
        env = {**_git_env(), "GIT_PROJECT_ROOT": str(bare.parent), "GIT_HTTP_EXPORT_ALL": "1",
               "PATH_INFO": f"/{bare.name}/{rest}", "REQUEST_METHOD": method, "QUERY_STRING": query,
               "CONTENT_TYPE": headers.get("content-type", ""), "CONTENT_LENGTH": str(len(body_in)),
               "REMOTE_ADDR": "127.0.0.1"}
        if headers.get("content-encoding"):
            env["HTTP_CONTENT_ENCODING"] = headers["content-encoding"]
        if headers.get("git-protocol"):
            env["GIT_PROTOCOL"] = headers["git-protocol"]
        out = subprocess.run(["git", "http-backend"], input=body_in, env=env, capture_output=True, timeout=60)
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out.stdout else b"\n\n"
        head, _, body = out.stdout.partition(sep)
        status, extra = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                extra[name.strip()] = value.strip()
        entry["status"] = status
        return status, extra, body
