"""The webhook listener (SPEC section 7) as GitHub and other clients meet it: a real `sync-agent run`
daemon, real HTTP on loopback, a real bare remote, and a checkout polled only every hour, so that
only nudges can move it. The pure parts (signature, routing, replay memory) are tested directly.
"""
import json
import re
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import gitfix
from hooksend import (ZEROS, Client, delivery_headers, free_port, metric_samples, metric_sum, parse_raw,
                      push_body, raw_exchange, raw_exchange_full, sign)
from waiting import wait_until

from agent.model import RepoSpec
from agent.webhook import Delivery, ReplayGuard, WebhookApp, parse_delivery, route_push, verify_github

SECRET = "wh-Secret-7Qx9-never-in-logs"
TOKEN = "ghp_fakeTokenForTests0123456789"
VECTOR_SECRET = "It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
QUIET = 0.8  # how long to watch for a check that must not happen


# ---------------------------------------------------------------------------------------------
# the pure parts
# ---------------------------------------------------------------------------------------------
def test_verify_github_documented_vector():
    assert sign(VECTOR_SECRET, VECTOR_BODY) == VECTOR_SIG  # our helper agrees with GitHub's docs
    assert verify_github(VECTOR_SECRET.encode(), VECTOR_BODY, VECTOR_SIG)
    assert verify_github(VECTOR_SECRET.encode(), VECTOR_BODY, VECTOR_SIG + " ")


@pytest.mark.parametrize("secret, body, header", [
    (VECTOR_SECRET, VECTOR_BODY + b"\n", VECTOR_SIG),  # tampered body
    ("it's a secret to everybody", VECTOR_BODY, VECTOR_SIG),  # other secret
    (VECTOR_SECRET, VECTOR_BODY, None),
    (VECTOR_SECRET, VECTOR_BODY, ""),
    (VECTOR_SECRET, VECTOR_BODY, VECTOR_SIG[len("sha256="):]),  # no prefix
    (VECTOR_SECRET, VECTOR_BODY, "sha1=" + VECTOR_SIG[len("sha256="):]),
    (VECTOR_SECRET, VECTOR_BODY, VECTOR_SIG[:-1]),  # truncated
    (VECTOR_SECRET, VECTOR_BODY, "sha256="),
], ids=["tampered", "other-secret", "none", "empty", "no-prefix", "sha1", "truncated", "prefix-only"])
def test_verify_github_rejects(secret, body, header):
    assert not verify_github(secret.encode(), body, header)


def spec(name="demo", slug="acme/Demo", branch="main", **kw):
    source = "github" if slug else "git"
    return RepoSpec(name=name, path=f"/co/{name}", source=source, slug=slug, branch=branch, **kw)


def test_route_push():
    repos = [spec(), spec("docs", "acme/demo", "gh-pages"), spec("other", "acme/other"),
             spec("dflt", "acme/dflt", None), spec("plain", None, "main", url="https://git.example.com/x/plain.git")]
    branch_of = lambda s: s.branch  # noqa: E731

    def route(full_name="acme/demo", ref="refs/heads/main", urls=(), default_branch=None):
        return route_push(Delivery("push", full_name, ref, urls, default_branch), repos, branch_of)

    assert route("ACME/DEMO") == ["demo"]  # case-insensitive
    assert route("acme/demo", "refs/heads/gh-pages") == ["docs"]
    assert route("acme/demo", "refs/heads/dev") == []
    assert route("acme/demo", "refs/tags/main") == []
    assert route("acme/demo", "main") == []
    assert route("acme/demo-fork") == []
    assert route("") == []
    # a repo following the default branch: the one the delivery names
    assert route("acme/dflt", "refs/heads/trunk", default_branch="trunk") == ["dflt"]
    assert route("acme/dflt", "refs/heads/main", default_branch="trunk") == []
    # a git-only repo is matched by its URL
    assert route("x/plain", urls=("git@git.example.com:x/plain.git",)) == ["plain"]
    assert route("x/plain") == []


def test_parse_delivery():
    d = parse_delivery("push", push_body("acme/demo", deleted=True))
    assert (d.event, d.full_name, d.ref, d.deleted) == ("push", "acme/demo", "refs/heads/main", True)
    for bad in (b"Hello, World!", b"[1, 2]", b"", b"\xff\xfe"):
        with pytest.raises(ValueError):
            parse_delivery("push", bad)


def test_replay_guard_is_bounded():
    g = ReplayGuard(size=3)
    assert [g.first_time(x) for x in "abc"] == [True] * 3
    assert not g.first_time("a")  # seen; now the most recent
    assert g.first_time("d")  # evicts the least recent: b
    assert len(g._seen) == 3
    assert g.first_time("b")  # forgotten, so new again
    assert not g.first_time("a") and not g.first_time("d")
    big = ReplayGuard(size=100)
    for i in range(1000):
        big.first_time(str(i))
    assert len(big._seen) == 100 and not big.first_time("999") and big.first_time("0")


def test_app_checks_signature_before_parsing_and_replay():
    nudged = []
    app = WebhookApp(SECRET, lambda: [spec(slug="acme/demo")], lambda s: s.branch,
                     lambda name, *args, **kw: nudged.append(name))
    body = push_body("acme/demo")
    # a bad signature on a body that is not even JSON: 401, not 400
    assert app.handle({"x-hub-signature-256": sign("wrong", b"{"), "x-github-event": "push"}, b"{").status == 401
    # a rejected delivery does not burn its delivery id
    h = {"x-github-event": "push", "x-github-delivery": "d-1"}
    assert app.handle({**h, "x-hub-signature-256": sign("wrong", body)}, body).status == 401
    ok = app.handle({**h, "x-hub-signature-256": sign(SECRET, body)}, body)
    assert (ok.status, ok.doc, ok.kind) == (202, {"nudged": ["demo"]}, "nudged")
    again = app.handle({**h, "x-hub-signature-256": sign(SECRET, body)}, body)
    assert (again.status, again.kind) == (200, "duplicate")
    assert nudged == ["demo"]


def test_a_repo_with_its_own_secret_takes_only_deliveries_signed_with_it():
    """Repo `own` names its own secret, `shared` uses the [webhook] one: each takes only deliveries signed with
    its secret, whichever secret the sender knows; ping and other events verify with either."""
    nudged = []
    repos = [spec("own", "acme/own", secret="own-secret"), spec("shared", "acme/shared")]
    app = WebhookApp(SECRET, lambda: repos, lambda s: s.branch, lambda name, *args, **kw: nudged.append(name))

    def post(full_name, secret, event="push"):
        body = push_body(full_name, after="a" * 40)
        headers = {"x-github-event": event, "x-github-delivery": str(uuid.uuid4())}
        if secret:
            headers["x-hub-signature-256"] = sign(secret, body)
        ans = app.handle(headers, body)
        return ans.status, ans.doc

    assert post("acme/own", "own-secret") == (202, {"nudged": ["own"]})
    assert post("acme/shared", SECRET) == (202, {"nudged": ["shared"]})
    assert post("acme/own", SECRET)[0] == 401  # the shared secret does not reach a repo with its own
    assert post("acme/shared", "own-secret")[0] == 401  # nor one repo's secret another repo
    assert post("acme/own", "wrong")[0] == 401 and post("acme/own", None)[0] == 401
    assert post("acme/other", "own-secret")[0] == 200  # verified, about no configured repo: ignored
    assert post("acme/own", "own-secret", event="ping")[0] == 200
    assert nudged == ["own", "shared"]

    # insecure_no_secret and no [webhook] secret: unsigned deliveries reach only repos without a secret
    app = WebhookApp(None, lambda: repos, lambda s: s.branch, lambda name, *args, **kw: nudged.append(name),
                     insecure=True)
    assert post("acme/shared", None) == (202, {"nudged": ["shared"]})
    assert post("acme/own", None)[0] == 401
    assert post("acme/own", "own-secret") == (202, {"nudged": ["own"]})
    # no [webhook] secret, not insecure (every repo has its own): unsigned is refused
    app = WebhookApp(None, lambda: repos[:1], lambda s: s.branch, lambda name, *args, **kw: nudged.append(name),
                     insecure=False)
    assert post("acme/own", None)[0] == 401


# ---------------------------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------------------------
@dataclass
class Hooked:
    """A running daemon with a listener, the remote it follows, and its checkout."""

    remote: object
    path: Path
    config_path: Path
    daemon: object
    client: Client
    forge: object
    run_cli: object
    env: dict
    secret: str
    extra_texts: list = field(default_factory=list)

    @property
    def full_name(self):
        return self.remote.full_name

    def head(self):
        return gitfix.head(self.path)

    def deliver(self, body, event="push", **kw):
        kw.setdefault("secret", self.secret)
        return self.client.deliver(body, event, **kw)

    def push_delivery(self, after, before=ZEROS, full_name=None, **kw):
        """The body of a push to the followed branch; full_name defaults to a different-case spelling."""
        return push_body(full_name or self.full_name.upper(), before=before, after=after, **kw)

    def cli(self, *args):
        done = self.run_cli(*args, "-c", self.config_path, env=self.env)
        self.extra_texts.append(done.output)
        return done

    def history(self):
        done = self.cli("history", "--json", "--limit", "100")
        assert done.returncode == 0, done.output
        return json.loads(done.stdout)

    def checks(self, trigger="webhook"):
        """How many checks with this trigger the state store recorded (history entries carry counts)."""
        return sum(h["count"] for h in self.history() if h["trigger"] == trigger)

    def metrics(self):
        r = self.client.get("/metrics")
        assert r.status == 200, r.text
        return metric_samples(r.text)

    def status(self):
        r = self.client.get("/status")
        assert r.status == 200, r.text
        return {x["name"]: x for x in r.json()["repos"]}

    def log_checks(self, trigger="webhook"):
        return len(re.findall(rf"\b{self.remote.name} \[{trigger}\] ", self.daemon.log()))

    def assert_secret_kept(self):
        """The webhook secret (and the API token) in no log line and no answer seen so far."""
        texts = {"daemon log": self.daemon.log(), "responses": self.client.all_text(),
                 "cli output": "\n".join(self.extra_texts)}
        for what, text in texts.items():
            for s in (self.secret, TOKEN):
                if s:
                    assert s not in text, f"a secret appears in the {what}"


@pytest.fixture
def hooked(tmp_path, forge, remote, write_config, daemon, agent_env, cli):
    """Factory: start(secret=SECRET, webhook={}, repo={}) -> Hooked, after the daemon's first check."""

    def start(secret=SECRET, webhook=None, repo=None, extra_env=None):
        r = remote("Demo")
        path = tmp_path / "checkouts" / "demo"
        path.parent.mkdir(exist_ok=True)
        gitfix.clone(r.bare, path)
        port = free_port()
        wh = {"listen": f"127.0.0.1:{port}", **({"secret_env": "HOOK_SECRET"} if secret else {}), **(webhook or {})}
        config = write_config({
            "agent": {"state_dir": str(tmp_path / "state"), "log_level": "debug"},
            "github": {"api_url": forge.base_url, "token_env": "FORGE_TOKEN"},
            "webhook": wh,
            "repos": [{"name": r.name, "github": r.full_name, "branch": "main", "path": str(path), "every": "1h",
                       **(repo or {})}]})
        env = dict(agent_env, FORGE_TOKEN=TOKEN, **(extra_env or {}))
        if secret:
            env["HOOK_SECRET"] = secret
        d = daemon(config, env=env)
        h = Hooked(r, path, config, d, Client(port), forge, cli, env, secret)

        def healthy():
            if not d.alive():
                raise AssertionError(f"the daemon exited {d.proc.returncode}:\n{d.log()[-3000:]}")
            try:
                return h.client.get("/healthz").status == 200
            except OSError:
                return False

        wait_until(healthy, 15, 0.05, "GET /healthz 200")
        wait_until(lambda: h.status()[r.name]["last_result"], 15, 0.05, "the first (scheduled) check")
        return h

    return start


def quiet_period(h, since, head):
    """Wait a little; nothing may have asked the forge, the checkout stays, no webhook check ran."""
    time.sleep(QUIET)
    assert h.forge.count(since) == 0, [q["path"] for q in h.forge._since(since)]
    assert h.head() == head
    assert h.log_checks("webhook") == 0 and h.checks("webhook") == 0


def test_signed_push_nudges_a_background_check_by_fetch(hooked):
    """A signed push for the repo (full_name in other case) -> 202 naming it; the checkout moves to the pushed
    commit by `git fetch` alone (no API request); the answer does not wait for the check."""
    h = hooked(repo={"on_change": ["sleep", "1.5"]})  # a slow check: the 202 must not wait for it
    old = h.head()
    assert old == h.remote.head()
    new = h.remote.pusher.commit()
    mark = time.monotonic()

    r = h.deliver(h.push_delivery(new, before=old))
    assert r.status == 202, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"nudged": [h.remote.name]}
    assert r.seconds < 1.0

    wait_until(lambda: h.head() == new, 10, what="the checkout at the pushed commit")
    wait_until(lambda: h.checks("webhook") == 1, 10, what="the webhook check recorded")
    last = h.history()[0]
    assert (last["trigger"], last["result"], last["old_sha"], last["new_sha"]) == ("webhook", "updated", old, new)
    assert last["seconds"] >= 1.4 > r.seconds  # the check took longer than the answer
    assert h.forge.head_requests(mark) == [] and h.forge.count(mark) == 0  # git fetch, not the API
    st = h.status()[h.remote.name]
    assert (st["local_sha"], st["remote_sha"]) == (new, new)
    assert h.log_checks("webhook") == 1
    h.assert_secret_kept()


def test_vector_on_listener_is_400_and_bad_signatures_401(hooked):
    """Signature good but not JSON: 400. Wrong, missing, or over another body: 401. None of them asks the forge
    or touches the checkout, though the remote has moved."""
    h = hooked(secret=VECTOR_SECRET)
    head = h.head()
    new = h.remote.pusher.commit()  # a check now would move the checkout
    body = h.push_delivery(new, before=head)
    mark = time.monotonic()

    r = h.deliver(VECTOR_BODY, signature=VECTOR_SIG)
    assert r.status == 400, r.text
    assert "json" in r.json()["error"].lower()
    wrong = h.deliver(body, signature=sign("not the secret", body))
    missing = h.deliver(body, signature=False)
    tampered = h.deliver(body.replace(b'"forced":false', b'"forced":true'), signature=sign(VECTOR_SECRET, body))
    uppercase_prefix = h.deliver(body, signature="SHA256=" + sign(VECTOR_SECRET, body)[7:] + "0")
    for reply in (wrong, missing, tampered, uppercase_prefix):
        assert reply.status == 401, reply.text
        assert "X-Hub-Signature-256" in reply.json()["error"]
    assert "missing" in missing.json()["error"]

    quiet_period(h, mark, head)
    assert len(re.findall(r"webhook from \S+ rejected: 401 ", h.daemon.log())) == 4
    assert len(re.findall(r"webhook from \S+ rejected: 400 ", h.daemon.log())) == 1
    h.assert_secret_kept()


def test_ping_other_events_other_branches_and_repos_are_ignored(hooked):
    h = hooked()
    head = h.head()
    new = h.remote.pusher.commit()
    mark = time.monotonic()
    sent = [
        ("ping", json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1,
                             "repository": {"full_name": h.full_name}}).encode()),
        ("issues", push_body(h.full_name, after=new)),
        ("push", push_body(h.full_name, branch="dev", after=new)),
        ("push", push_body("acme/other", after=new)),
        ("push", push_body(h.full_name, ref="refs/tags/main", after=new)),
    ]
    for event, body in sent:
        r = h.deliver(body, event=event)
        assert r.status == 200, (event, r.text)
        assert "ignored" in r.json(), r.text
    quiet_period(h, mark, head)
    assert "rejected" not in h.daemon.log()
    h.assert_secret_kept()


def test_repeated_delivery_id_is_not_acted_on(hooked):
    h = hooked()
    old = h.head()
    first = h.remote.pusher.commit()
    delivery = str(uuid.uuid4())
    body = h.push_delivery(first, before=old)
    assert h.deliver(body, delivery=delivery).status == 202
    wait_until(lambda: h.head() == first and h.checks("webhook") == 1, 10, what="the first delivery's check")

    second = h.remote.pusher.commit()
    mark = time.monotonic()
    r = h.deliver(body, delivery=delivery)  # GitHub's redelivery: same id, same body
    assert r.status == 200, r.text
    assert "ignored" in r.json() and delivery in r.text
    time.sleep(QUIET)
    assert h.head() == first != second
    assert h.checks("webhook") == 1 and h.log_checks("webhook") == 1
    assert h.forge.count(mark) == 0
    h.assert_secret_kept()


def test_http_limits_are_answered_whole(hooked):
    """413 for a body over max_body, to a sender that keeps sending; 405, 404, 411."""
    h = hooked(webhook={"max_body": 65536})
    head = h.head()
    h.remote.pusher.commit()
    mark = time.monotonic()
    port = h.client.port

    big = b'{"pad": "' + b"x" * (200 * 1024) + b'"}'
    req = (f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
           f"X-GitHub-Event: push\r\nX-Hub-Signature-256: {sign(SECRET, big)}\r\n"
           f"Content-Length: {len(big)}\r\n\r\n").encode()
    got, sent_whole = raw_exchange_full(port, req, big, chunk=8192, pause=0.002)
    status, headers, body = parse_raw(got)
    assert status == 413, body
    assert sent_whole  # read and discarded, not reset under the sender (RFC 9112 section 9.6)
    assert len(body) == int(headers["content-length"]) and "65536" in json.loads(body)["error"]

    # all at once, as a client that writes the whole request in one go
    status, _, _ = parse_raw(raw_exchange(port, req + big))
    assert status == 413

    r = h.client.get("/webhook")
    assert r.status == 405 and r.headers.get("allow") == "POST", r.text
    assert h.client.request("PUT", "/webhook", b"{}").status == 405
    assert h.client.request("POST", "/healthz", b"{}").status == 405
    assert h.client.get("/nope").status == 404
    body = h.push_delivery(h.remote.head())
    assert h.client.request("POST", "/webhook/../webhookx", body, delivery_headers("push", SECRET, body)).status == 404

    chunked = (f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
               f"X-GitHub-Event: push\r\nX-Hub-Signature-256: {sign(SECRET, body)}\r\n\r\n").encode()
    chunks = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    status, headers, answer = parse_raw(raw_exchange(port, chunked, chunks))
    assert status == 411, answer
    assert len(answer) == int(headers["content-length"])

    # a larger chunked body, still being sent when the answer comes: read and discarded too
    piece = b"4000\r\n" + b"y" * 0x4000 + b"\r\n"
    got, sent_whole = raw_exchange_full(port, chunked, piece * 12 + b"0\r\n\r\n", chunk=8192, pause=0.002)
    assert parse_raw(got)[0] == 411
    assert sent_whole

    quiet_period(h, mark, head)
    h.assert_secret_kept()


def test_branch_deletion_is_an_error_and_touches_nothing(hooked):
    h = hooked()
    head = h.head()
    h.remote.pusher.delete_branch()
    assert h.remote.head() is None
    r = h.deliver(h.push_delivery(ZEROS, before=head, deleted=True))
    assert r.status == 202, r.text

    def missing_reported():
        done = h.cli("status")
        return re.search(r"branch 'main' not found", done.output) and done

    done = wait_until(missing_reported, 10, 0.2, "status naming the missing branch")
    assert done.returncode == 0 and "error" in done.output
    st = h.status()[h.remote.name]
    assert st["last_result"].startswith("error") and "not found" in st["last_error"]
    assert st["failures_in_a_row"] >= 1
    assert h.head() == head
    assert gitfix.git("status", "--porcelain", cwd=h.path) == ""
    hook_checks = [x for x in h.history() if x["trigger"] == "webhook"]
    assert [(x["result"], x["count"]) for x in hook_checks] == [("error", 1)], hook_checks
    assert "branch 'main' not found" in hook_checks[0]["detail"]
    assert hook_checks[0]["old_sha"] == hook_checks[0]["new_sha"] == head
    h.assert_secret_kept()


class Slowloris(threading.Thread):
    """Sends a request head one byte every `every` seconds, never finishing; notes when it is cut off."""

    def __init__(self, port, every=0.5):
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.data = b""
        self.started = self.closed = None

    def run(self):
        head = b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            self.started = time.monotonic()
            for i in range(len(head)):
                try:
                    s.sendall(head[i:i + 1])
                except OSError:
                    break
                ready, _, _ = select.select([s], [], [], self.every)
                if ready:
                    break
                if time.monotonic() - self.started > 25:
                    return
            try:
                while chunk := s.recv(4096):
                    self.data += chunk
            except OSError:
                pass
            self.closed = time.monotonic()


def test_slow_clients_do_not_block_others_and_are_cut_off(hooked):
    """Slow (about 11 s: the header deadline is 10 s). Clients dribbling a header byte every 0.5 s do not delay
    /healthz or a delivery; each is answered 408 and disconnected at the header deadline."""
    h = hooked()
    slow = [Slowloris(h.client.port) for _ in range(6)]
    for s in slow:
        s.start()
    wait_until(lambda: all(s.started for s in slow), 5, what="slow clients connected")
    t_end = time.monotonic() + 3
    worst = 0.0
    while time.monotonic() < t_end:
        r = h.client.get("/healthz")
        assert r.status == 200
        worst = max(worst, r.seconds)
        time.sleep(0.1)
    assert worst < 0.5, worst
    ping = h.deliver(b'{"zen": "Half measures are as bad as nothing at all."}', event="ping")
    assert ping.status == 200 and ping.seconds < 0.5
    for s in slow:
        s.join(20)
        assert s.closed is not None, "a slow client was never disconnected"
        assert 9.0 <= s.closed - s.started <= 13.0, s.closed - s.started
        status, _, _ = parse_raw(s.data)
        assert status in (408, None), s.data  # 408 when it could be delivered
    assert any(parse_raw(s.data)[0] == 408 for s in slow)
    assert h.client.get("/healthz").status == 200
    h.assert_secret_kept()


def test_flood_of_deliveries_collapses_into_few_checks(hooked):
    """1,000 signed deliveries over 10 s (100 a second, from 4 senders): all 202, the checkout reaches the
    head, no forge request and few checks (no more than 5), /healthz answers within 100 ms throughout."""
    h = hooked()
    old = h.head()
    new = h.remote.pusher.commit()
    body = h.push_delivery(new, before=old)
    sig = sign(SECRET, body)
    statuses, health, errors = [], [], []
    lock = threading.Lock()
    done = threading.Event()
    mark = time.monotonic()
    senders, per_sender, seconds = 4, 250, 10.0

    def sender(i):
        client = Client(h.client.port)
        start = time.monotonic() + i * seconds / (senders * per_sender)  # interleaved, evenly spread
        for k in range(per_sender):
            time.sleep(max(0.0, start + k * seconds / per_sender - time.monotonic()))
            try:
                r = client.deliver(body, signature=sig)
                with lock:
                    statuses.append(r.status)
            except OSError as e:
                with lock:
                    errors.append(repr(e))

    def prober():
        client = Client(h.client.port)
        while not done.is_set():
            try:
                r = client.get("/healthz")
                health.append((r.status, r.seconds))
            except OSError as e:
                health.append((repr(e), 0))
            time.sleep(0.05)

    probe = threading.Thread(target=prober, daemon=True)
    probe.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    took = time.monotonic() - t0
    done.set()
    probe.join(5)

    assert not errors, errors[:3]
    assert len(statuses) == 1000 and statuses.count(202) == 1000, sorted(set(statuses))
    assert took < 15, took
    slow = [(s, round(t, 3)) for s, t in health if s != 200 or t >= 0.1]
    assert len(health) >= 100 and not slow, (len(health), slow)
    wait_until(lambda: h.head() == new, 10, what="the checkout at the pushed commit")
    n_history = wait_until(lambda: stable(lambda: h.checks("webhook")), 10, what="the checks to settle")
    assert n_history == h.log_checks("webhook")
    assert h.forge.count(mark) == 0  # all by git fetch
    h.assert_secret_kept()
    assert n_history >= 1
    assert n_history <= 5, f"{n_history} checks for {len(statuses)} deliveries in {took:.1f} s"


def stable(count, pause=QUIET):
    """count() when it has not changed over `pause` seconds (a coalesced follow-up check may still run)."""
    first = count()
    time.sleep(pause)
    return first if count() == first else None


def test_no_secret_refuses_to_start(tmp_path, write_config, cli, agent_env, forge):
    base = {"agent": {"state_dir": str(tmp_path / "state")}, "github": {"api_url": forge.base_url},
            "repos": [{"name": "demo", "github": "acme/demo", "path": str(tmp_path / "co"), "every": "1h"}]}
    for webhook in ({"listen": f"127.0.0.1:{free_port()}"},
                    {"listen": f"127.0.0.1:{free_port()}", "secret_env": "HOOK_SECRET_UNSET"}):
        config = write_config({**base, "webhook": webhook})
        done = cli("run", "-c", config, timeout=20)
        assert done.returncode == 2, done.output
        assert "webhook.secret_env" in done.output
        assert not (tmp_path / "co").exists()
    assert forge.count() == 0


def test_insecure_no_secret_accepts_unsigned_pushes(hooked):
    h = hooked(secret=None, webhook={"insecure_no_secret": True})
    assert "insecure_no_secret" in h.daemon.log()  # it says so at start
    old = h.head()
    new = h.remote.pusher.commit()
    r = h.deliver(h.push_delivery(new, before=old), secret=None)
    assert r.status == 202, r.text
    wait_until(lambda: h.head() == new, 10, what="the checkout at the pushed commit")
    # a signature, right or wrong, is beside the point without a secret; the body still must be JSON
    assert h.deliver(b"not json", secret=None).status == 400


OWN_SECRET = "repo-Own-Secret-3Kd8-never-shown"


def test_repo_with_its_own_secret(hooked, tmp_path):
    """A repo that names its own secret (`secret_env` in its table): a push signed with the [webhook] secret is
    401 and asks nothing; one signed with the repo's secret moves the checkout. The hook does not inherit
    that variable, and the secret shows in no log line or answer."""
    envfile = tmp_path / "hook-env.txt"
    h = hooked(repo={"secret_env": "DEMO_HOOK_SECRET", "on_change": f"env > '{envfile}'"},
               extra_env={"DEMO_HOOK_SECRET": OWN_SECRET})
    old = h.head()
    new = h.remote.pusher.commit()
    body = h.push_delivery(new, before=old)
    mark = time.monotonic()
    r = h.deliver(body)  # signed with the [webhook] secret
    assert r.status == 401, r.text
    quiet_period(h, mark, old)
    r = h.deliver(body, secret=OWN_SECRET)
    assert (r.status, r.json()) == (202, {"nudged": ["Demo"]}), r.text
    wait_until(lambda: h.head() == new, 10, what="the checkout at the pushed commit")
    wait_until(envfile.exists, 10, what="the hook")
    assert "DEMO_HOOK_SECRET" not in envfile.read_text() and OWN_SECRET not in envfile.read_text()
    done = h.cli("validate")
    assert done.returncode == 0 and "its own webhook secret" in done.output, done.output
    for text in (h.daemon.log(), h.client.all_text(), "\n".join(h.extra_texts)):
        assert OWN_SECRET not in text
    h.assert_secret_kept()


STATUS_KEYS = {"name", "branch", "source", "path", "local_sha", "remote_sha", "last_check", "last_result",
               "last_error", "failures_in_a_row", "failing_since", "next_run", "backup"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


def test_status_endpoint(hooked):
    h = hooked()
    old = h.head()
    new = h.remote.pusher.commit()
    assert h.deliver(h.push_delivery(new, before=old)).status == 202
    wait_until(lambda: h.checks("webhook") == 1, 10, what="the webhook check")

    r = h.client.get("/status")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    repos = r.json()["repos"]
    assert len(repos) == 1
    st = repos[0]
    assert STATUS_KEYS <= set(st), STATUS_KEYS - set(st)
    assert (st["name"], st["branch"], st["path"]) == ("Demo", "main", str(h.path))
    assert h.full_name in st["source"]
    assert (st["local_sha"], st["remote_sha"]) == (new, new)
    assert st["last_result"].startswith("updated") and st["last_error"] is None
    assert st["failures_in_a_row"] == 0 and st["failing_since"] is None and st["backup"] is None
    assert ISO_UTC.match(st["last_check"]) and ISO_UTC.match(st["next_run"]), st
    cli_status = h.cli("status", "--json")
    assert cli_status.returncode == 0
    assert json.loads(cli_status.stdout)["repos"] == repos
    h.assert_secret_kept()


def test_metrics_endpoint(hooked):
    """Prometheus text with checks, durations, forge answers, rate limit and what became of each delivery."""
    h = hooked()
    old = h.head()
    new = h.remote.pusher.commit()
    body = h.push_delivery(new, before=old)
    delivery = str(uuid.uuid4())
    assert h.deliver(body, delivery=delivery).status == 202  # nudged
    wait_until(lambda: h.checks("webhook") == 1, 10, what="the webhook check")
    assert h.deliver(body, delivery=delivery).status == 200  # duplicate
    for sig in ("sha256=" + "0" * 64, False):  # rejected x3
        assert h.deliver(body, signature=sig).status == 401
    assert h.deliver(b"[", ).status == 400
    for event, b in (("ping", b"{}"), ("issues", body), ("push", push_body("acme/other"))):  # ignored x3
        assert h.deliver(b, event=event).status == 200

    r = h.client.get("/metrics")
    assert r.status == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    text = r.text
    for family in ("sync_agent_checks_total", "sync_agent_check_duration_seconds",
                   "sync_agent_forge_responses_total", "sync_agent_nudges_total",
                   "sync_agent_rate_limit_remaining"):
        assert re.search(rf"^# TYPE {family.removesuffix('_total')}(_total)? ", text, re.M) and \
               re.search(rf"^{family}[{{_ ]", text, re.M), family
    m = metric_samples(text)
    assert metric_sum(m, "sync_agent_checks_total", trigger="webhook", result="updated") == 1
    assert metric_sum(m, "sync_agent_checks_total", trigger="schedule") == 1
    assert metric_sum(m, "sync_agent_check_duration_seconds_count") == 2
    assert metric_sum(m, "sync_agent_forge_responses_total", forge="github", status="200") == 1
    assert metric_sum(m, "sync_agent_rate_limit_remaining", forge="github") == 4999
    assert {o: metric_sum(m, "sync_agent_nudges_total", outcome=o)
            for o in ("nudged", "ignored", "duplicate", "rejected")} == \
           {"nudged": 1, "ignored": 3, "duplicate": 1, "rejected": 3}
    h.assert_secret_kept()


def test_secret_never_in_log_or_answers(hooked):
    """log_level debug; every kind of request. Requests that carry the secret themselves (a confused sender)
    must not bring it into the log; the answers to all other requests must not contain it."""
    h = hooked()
    head = h.head()
    body = h.push_delivery(head)
    assert h.deliver(body).status == 202
    assert h.deliver(body, signature="sha256=" + "0" * 64).status == 401
    assert h.deliver(b"{}", signature=False).status == 401
    assert h.deliver(b"not json").status == 400
    assert h.deliver(b"{}", event="ping").status == 200
    assert h.deliver(body, event="issues").status == 200
    for path in ("/healthz", "/status", "/metrics", "/", "/nope"):
        h.client.get(path)
    h.client.request("POST", "/webhook", b"x" * 2048, {"Content-Length": "2048"})
    wait_until(lambda: h.checks("webhook") >= 1, 10, what="the webhook check")
    h.cli("status")
    h.cli("status", "--json")
    h.cli("history")
    h.assert_secret_kept()

    confused = Client(h.client.port)  # its answers may echo what it sent; only the log is checked
    confused.deliver(body, signature=SECRET)
    confused.deliver(body, signature="sha256=" + SECRET)
    confused.deliver(SECRET.encode(), secret=SECRET)  # the secret as a signed, non-JSON body
    confused.deliver(push_body(h.full_name, ref=f"refs/heads/{SECRET}"), secret=SECRET)
    confused.deliver(body, event=SECRET, secret=SECRET)
    confused.deliver(body, delivery=SECRET, secret=SECRET)
    confused.get(f"/{SECRET}")
    confused.get(f"/webhook?secret={SECRET}")
    time.sleep(0.3)
    assert "DEBUG" in h.daemon.log()
    h.assert_secret_kept()
