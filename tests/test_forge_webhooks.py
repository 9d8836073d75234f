"""Gitee, GitLab, Gitea and Forgejo deliveries on POST /webhook (SPEC section 7, FIELD-NOTES "Webhook formats"),
told apart by their headers: a real `sync-agent run` daemon with a listener and one repo polled every hour,
so that only accepted deliveries move it. Each test runs twice: with a git-only repo (`url = file://...`)
matched by the payload's clone URL, and with the forge's own key (`gitee = "acme/demo"`...) matched by the
repository's name, its API played by a small loopback fake (ForgeAPI) for the start-up check.
The signature functions are tested directly against the field notes' sample.
"""
import base64
import hashlib
import hmac
import json
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, unquote, urlsplit

import pytest

import gitfix
from hooksend import Client, free_port
from waiting import wait_until

from agent.webhook import GITEE_WINDOW_MS, authentic, forge_of, verify_gitea, verify_gitee, verify_token

SECRET = "forge-Secret-8Wm3-never-in-logs"
QUIET = 0.6  # how long to watch for a check that must not happen
GITEE_SAMPLE = ("123654", "1672135206524", "AbEvusCKxqRkBtTr4fD47SGVP/mRwlt48iuUYMFRloI=")
SOURCES = ["git-url", "forge-key"]


class ForgeAPI:
    """The branch and repository routes of Gitee v5, GitLab v4 and Gitea v1 on loopback, answered from a bare repo."""

    def __init__(self):
        self.requests = []
        self.repos = {}  # (kind, lower-cased slug) -> (bare path, clone url)
        self._server = None

    def start(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                api.requests.append(self.path)
                status, doc = api.answer(urlsplit(self.path).path)
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def api_url(self, kind):
        version = {"gitee": "v5", "gitlab": "v4", "gitea": "v1"}[kind]
        return f"http://127.0.0.1:{self._server.server_address[1]}/{kind}/api/{version}"

    def answer(self, path):
        parts = path.split("/")  # '', kind, 'api', version, ...
        kind, rest = parts[1], parts[4:]
        if kind == "gitlab":  # /projects/<group%2Fproject>[/repository/branches/<b>]
            slug, branch = unquote(rest[1]), (unquote(rest[4]) if len(rest) > 4 else None)
        else:  # /repos/<owner>/<repo>[/branches/<b>]
            slug, branch = f"{rest[1]}/{rest[2]}", ("/".join(rest[4:]) if len(rest) > 4 else None)
        found = self.repos.get((kind, slug.lower()))
        if found is None:
            return 404, {"message": "Not Found"}
        bare, url = found
        if branch is None:
            return 200, {"default_branch": "main", "clone_url": url, "http_url_to_repo": url}
        sha = subprocess.run(["git", "--git-dir", str(bare), "rev-parse", "--verify", "--quiet",
                              f"refs/heads/{branch}"], capture_output=True, text=True).stdout.strip()
        if not sha:
            return 404, {"message": "Branch Not Found"}
        return 200, {"name": branch, "commit": {"sha": sha, "id": sha}}


@pytest.fixture
def forge_api():
    api = ForgeAPI().start()
    yield api
    api.stop()


@dataclass
class Listening:
    """A running daemon with a listener following one repo, `demo` (git-only, or on a forge by its key)."""

    remote: object
    path: Path
    config_path: Path
    daemon: object
    client: Client
    run_cli: object
    env: dict
    source: str  # "git-url" or "forge-key"
    api: object
    _mark: int = 0  # the daemon log's length when mark() was called

    @property
    def url(self):
        """The clone URL a delivery names: ours for a git-only repo; the forge's for a forge-keyed one."""
        return self.remote.url if self.source == "git-url" else "https://forge.example.com/acme/demo.git"

    @property
    def full_name(self):
        """The repository name a delivery names (in another case than the config's)."""
        return "ACME/Demo"

    def head(self):
        return gitfix.head(self.path)

    def webhook_checks(self):
        """History entries of checks a delivery asked for."""
        done = self.run_cli("history", "--json", "--limit", "100", "-c", self.config_path, env=self.env)
        assert done.returncode == 0, done.output
        return [x for x in json.loads(done.stdout) if x["trigger"] == "webhook"]

    def post(self, headers, body):
        return self.client.request("POST", "/webhook", body, {"Content-Type": "application/json", **headers})

    def accepted(self, reply, new):
        """A 202 naming the repo, then the checkout at `new` by a webhook check, fetched without asking the API."""
        asked = len(self.api.requests)
        assert reply.status == 202, reply.text
        assert reply.json() == {"nudged": ["demo"]}
        wait_until(lambda: self.head() == new, 10, what="the checkout at the pushed commit")
        assert len(self.api.requests) == asked

    def rejected(self, reply, what):
        """A 401 naming what is wrong (quiet() then shows that no check ran)."""
        assert reply.status == 401, reply.text
        assert what in reply.json()["error"], reply.text
        return reply

    def quiet(self, old, checks_before):
        """Nothing moved the checkout, recorded a webhook check or logged one since mark()."""
        time.sleep(QUIET)
        assert self.head() == old
        assert len(self.webhook_checks()) == checks_before
        assert "demo [webhook]" not in self.daemon.log()[self._mark:]

    def mark(self):
        self._mark = self.daemon.mark()

    def assert_secret_kept(self):
        assert SECRET not in self.daemon.log() and SECRET not in self.client.all_text()


@pytest.fixture(params=SOURCES)
def listening(request, tmp_path, remote, write_config, daemon, agent_env, cli, forge_api):
    """Factory: start(kind) -> Listening, after GET /healthz answers and the first check is recorded.

    git-url: `url = file://...` only; forge-key: `<kind> = "acme/demo"` with the fake API (and the file URL
    to fetch from).
    """

    def start(kind):
        r = remote("demo")
        path = tmp_path / "checkouts" / "demo"
        path.parent.mkdir(exist_ok=True)
        gitfix.clone(r.bare, path)
        port = free_port()
        repo = {"name": "demo", "url": r.url, "branch": "main", "path": str(path), "every": "1h"}
        config = {"agent": {"state_dir": str(tmp_path / "state"), "log_level": "debug"},
                  "webhook": {"listen": f"127.0.0.1:{port}", "secret_env": "HOOK_SECRET"}, "repos": [repo]}
        if request.param == "forge-key":
            repo[kind] = "acme/demo"
            config[kind] = {"api_url": forge_api.api_url(kind)}
            forge_api.repos[(kind, "acme/demo")] = (r.bare, r.url)
        config = write_config(config)
        env = dict(agent_env, HOOK_SECRET=SECRET)
        d = daemon(config, env=env)
        h = Listening(r, path, config, d, Client(port), cli, env, request.param, forge_api)

        def ready():
            if not d.alive():
                raise AssertionError(f"the daemon exited {d.proc.returncode}:\n{d.log()[-3000:]}")
            try:
                return h.client.get("/healthz").status == 200 and h.client.get("/status").json()["repos"][0][
                    "last_result"]
            except OSError:
                return False

        wait_until(ready, 15, 0.05, "the listener and the first check")
        first = h.client.get("/status").json()["repos"][0]
        assert first["last_result"].startswith("up-to-date"), first
        if request.param == "forge-key":
            assert first["source"] == f"{kind}:acme/demo" and forge_api.requests, "the forge's API was not asked"
        h.mark()
        return h

    return start


# ---- what each forge sends -------------------------------------------------------------------
def gitee_body(h, before, after):
    return json.dumps({"hook_name": "push_hooks", "ref": "refs/heads/main", "before": before, "after": after,
                       "repository": {"full_name": h.full_name, "path_with_namespace": h.full_name,
                                      "clone_url": h.url, "html_url": "https://gitee.com/acme/demo"},
                       "head_commit": {"id": after, "message": "更新"}}, ensure_ascii=False).encode()


def gitee_sign(secret, ts):
    """Gitee's signature mode: base64(HMAC-SHA256(secret, f"{ts}\\n{secret}"))."""
    return base64.b64encode(hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()).decode()


def now_ms():
    return int(time.time() * 1000)


def gitlab_delivery(h, before, after, token):
    url = h.url
    body = json.dumps({"object_kind": "push", "event_name": "push", "ref": "refs/heads/main", "before": before,
                       "after": after, "checkout_sha": after,
                       "project": {"path_with_namespace": h.full_name, "git_http_url": url,
                                   "git_ssh_url": "git@gitlab.example.com:acme/demo.git",
                                   "web_url": "https://gitlab.example.com/acme/demo"},
                       "repository": {"name": "demo", "git_http_url": url}}).encode()
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": str(uuid.uuid4())}
    if token is not None:
        headers["X-Gitlab-Token"] = token
    return headers, body


def gitea_delivery(h, before, after, secret, family):
    """Gitea (X-Gitea-*) or Forgejo (X-Forgejo-*): pretty-printed JSON, GitHub's headers too, all signed."""
    body = json.dumps({"ref": "refs/heads/main", "before": before, "after": after,
                       "repository": {"full_name": h.full_name, "clone_url": h.url,
                                      "ssh_url": "git@forge.example.com:acme/demo.git"},
                       "pusher": {"login": "dev"}}, indent=2).encode()
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    delivery = str(uuid.uuid4())
    prefix = "X-Gitea" if family == "gitea" else "X-Forgejo"
    headers = {f"{prefix}-Event": "push", f"{prefix}-Delivery": delivery, f"{prefix}-Signature": sig,
               "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": "sha256=" + sig}
    return headers, body


# ---- the daemon --------------------------------------------------------------------------------
def test_gitee_password_and_signature_modes(listening):
    """Gitee's password mode and signature mode (recent timestamp) are accepted and move the checkout;
    a wrong password or a signature with a 10-minute-old timestamp is 401 and causes no check."""
    h = listening("gitee")
    old = h.head()
    first = h.remote.pusher.commit()
    body = gitee_body(h, old, first)
    gitee = {"X-Gitee-Event": "Push Hook", "User-Agent": "git-oschina-hook"}

    h.accepted(h.post({**gitee, "X-Gitee-Token": SECRET}, body), first)
    assert len(h.webhook_checks()) == 1

    second = h.remote.pusher.commit()
    body = gitee_body(h, first, second)
    h.mark()
    stale = now_ms() - 10 * 60 * 1000
    h.rejected(h.post({**gitee, "X-Gitee-Token": gitee_sign(SECRET, stale), "X-Gitee-Timestamp": str(stale)},
                      body), "X-Gitee-Token")
    ts = now_ms()
    h.rejected(h.post({**gitee, "X-Gitee-Token": gitee_sign("not-the-secret", ts), "X-Gitee-Timestamp": str(ts)},
                      body), "X-Gitee-Token")
    h.rejected(h.post({**gitee, "X-Gitee-Token": "not-the-secret"}, body), "X-Gitee-Token")
    h.rejected(h.post(gitee, body), "missing X-Gitee-Token")
    h.quiet(first, 1)

    ts = now_ms()
    h.accepted(h.post({**gitee, "X-Gitee-Token": gitee_sign(SECRET, ts), "X-Gitee-Timestamp": str(ts)}, body),
               second)
    checks = h.webhook_checks()
    assert [(c["result"], c["new_sha"]) for c in checks] == [("updated", second), ("updated", first)]
    assert "demo [webhook] updated" in h.daemon.log()
    h.assert_secret_kept()


def test_gitlab_token(listening):
    """GitLab's X-Gitlab-Token equal to the secret is accepted and moves the checkout; a wrong or missing one
    is 401 and causes no check."""
    h = listening("gitlab")
    old = h.head()
    new = h.remote.pusher.commit()
    h.rejected(h.post(*gitlab_delivery(h, old, new, "not-the-secret")), "bad X-Gitlab-Token")
    h.rejected(h.post(*gitlab_delivery(h, old, new, SECRET[:-1])), "bad X-Gitlab-Token")
    h.rejected(h.post(*gitlab_delivery(h, old, new, None)), "missing X-Gitlab-Token")
    h.quiet(old, 0)

    h.accepted(h.post(*gitlab_delivery(h, old, new, SECRET)), new)
    assert [(c["result"], c["old_sha"], c["new_sha"]) for c in h.webhook_checks()] == [("updated", old, new)]
    h.assert_secret_kept()


@pytest.mark.parametrize("family", ["gitea", "forgejo"])
def test_gitea_and_forgejo_signatures(listening, family):
    """A Gitea (X-Gitea-Signature) or Forgejo (X-Forgejo-Signature) push signed with the secret moves the
    checkout; the same push signed with another secret is 401 and causes no check."""
    h = listening("gitea")
    old = h.head()
    new = h.remote.pusher.commit()
    forged_headers, body = gitea_delivery(h, old, new, "not-the-secret", family)
    h.rejected(h.post(forged_headers, body), "bad X-Gitea-Signature")
    tampered_headers, _ = gitea_delivery(h, old, new, SECRET, family)
    h.rejected(h.post(tampered_headers, body.replace(b'"dev"', b'"eve"')), "bad X-Gitea-Signature")
    h.quiet(old, 0)

    h.accepted(h.post(*gitea_delivery(h, old, new, SECRET, family)), new)
    assert [(c["result"], c["new_sha"]) for c in h.webhook_checks()] == [("updated", new)]
    h.assert_secret_kept()


# ---- the pure parts ----------------------------------------------------------------------------
def test_verify_gitee_field_notes_sample():
    """The field notes' sample verifies while its timestamp is recent, and not once it is old or the token is off."""
    secret, ts, token = GITEE_SAMPLE
    assert gitee_sign(secret, ts) == token  # our helper agrees with the sample
    t = int(ts)
    for now in (t, t + 1000, t - 1000, t + GITEE_WINDOW_MS - 1):
        assert verify_gitee(secret.encode(), token, ts, now), now
    for now in (t + 10 * 60 * 1000, t - 10 * 60 * 1000):
        assert not verify_gitee(secret.encode(), token, ts, now), now
    assert not verify_gitee(secret.encode(), token, str(t + 1), t)  # another timestamp
    assert not verify_gitee(secret.encode(), token, None, t)
    assert verify_gitee(secret.encode(), quote(token, safe=""), ts, t)  # the documented form
    assert not verify_gitee(secret.encode(), token[:-2] + "A=", ts, t)
    assert not verify_gitee(secret.encode(), quote(token[:-2] + "A=", safe=""), ts, t)
    assert not verify_gitee(b"123655", token, ts, t)
    assert not verify_gitee(secret.encode(), None, ts, t)
    assert verify_gitee(secret.encode(), secret, None, t + 10 ** 9)  # password mode: no timestamp needed
    assert not verify_gitee(secret.encode(), secret + " ", None, t)


def test_forge_told_apart_by_headers():
    """Gitea and Forgejo send GitHub's headers too, and are still recognised (and verified) as themselves."""
    assert forge_of({"x-github-event": "push", "x-hub-signature-256": "sha256=0"}) == "github"
    assert forge_of({"x-gitea-event": "push", "x-github-event": "push"}) == "gitea"
    assert forge_of({"x-forgejo-signature": "ab", "x-github-event": "push"}) == "gitea"
    assert forge_of({"x-gitlab-event": "Push Hook"}) == "gitlab"
    assert forge_of({"x-gitee-token": "x", "x-gitee-event": "Push Hook"}) == "gitee"

    body = b'{"ref": "refs/heads/main"}'
    where = SimpleNamespace(url="https://forge.example.com/acme/demo.git", full_name="acme/demo")
    headers, _ = gitea_delivery(where, "0" * 40, "1" * 40, SECRET, "gitea")
    lower = {k.lower(): v for k, v in headers.items()}
    hub_only = {k: v for k, v in lower.items() if k not in ("x-gitea-signature",)}
    hub_only["x-hub-signature-256"] = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    # a right GitHub signature does not stand in for the Gitea one that is missing
    assert authentic("gitea", SECRET.encode(), hub_only, body, 0) == "missing X-Gitea-Signature"
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert verify_gitea(SECRET.encode(), body, sig) and verify_gitea(SECRET.encode(), body, sig.upper())
    assert not verify_gitea(SECRET.encode(), body, "sha256=" + sig)
    assert verify_token(SECRET.encode(), SECRET) and not verify_token(SECRET.encode(), "") \
        and not verify_token(SECRET.encode(), None)
