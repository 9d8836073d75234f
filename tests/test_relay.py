"""Relay subscriptions (SPEC sections 3 and 7, FIELD-NOTES "Relays"): a real `sync-agent run` daemon with no
listener, subscribed to a loopback Server-Sent Events channel (tests/sse_server.py) that relays deliveries
the way smee.io and gosmee do. Repos are polled only every hour, so only relayed deliveries and the
check after a (re)connect can move a checkout. The stream parser is tested directly.
"""
import base64
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import gitfix
from hooksend import delivery_headers, push_body
from sse_server import SSEServer
from waiting import wait_until

from agent import relay
from agent.relay import RelayClient, delivery_of, parse_sse
from agent.webhook import WebhookApp

SECRET = "relay-Secret-4Kp2-never-in-logs"
QUIET = 0.8  # how long to watch for a check that must not happen
MESSAGE = "Grüße aus Köln: naïve café ✓ 修正"


@pytest.fixture
def sse():
    """A started loopback relay channel; stopped after the test."""
    server = SSEServer().start()
    yield server
    server.stop()


@dataclass
class Relayed:
    """A running daemon subscribed to the channel; repo `demo` on the fake GitHub, `plain` git-only."""

    sse: SSEServer
    daemon: object
    config_path: Path
    env: dict
    run_cli: object
    remotes: dict
    paths: dict
    texts: list = field(default_factory=list)

    def head(self, name="demo"):
        return gitfix.head(self.paths[name])

    def history(self, name="demo"):
        done = self.run_cli("history", name, "--json", "--limit", "100", "-c", self.config_path, env=self.env)
        assert done.returncode == 0, done.output
        self.texts.append(done.output)
        return json.loads(done.stdout)

    def log_checks(self, name, trigger="relay", since=0):
        return re.findall(rf"\b{name} \[{trigger}\] (\S+)", self.daemon.log()[since:])

    def settle(self, pause=0.5, timeout=10):
        """Wait until the daemon has written nothing for `pause` seconds (its start-up checks are done)."""
        def quiet():
            n = len(self.daemon.log())
            time.sleep(pause)
            return len(self.daemon.log()) == n

        wait_until(quiet, timeout, 0, "the daemon to go quiet")

    def assert_secret_kept(self):
        for text in [self.daemon.log(), *self.texts]:
            assert SECRET not in text, "the webhook secret appears in the output"
            assert self.sse.path not in text, "the relay channel URL (a capability) appears in the output"


@pytest.fixture
def relayed(tmp_path, remote, forge, write_config, daemon, agent_env, cli, sse):
    """Factory: start() -> Relayed, after the daemon connected to the relay and its first checks are done."""

    def start():
        remotes = {"demo": remote("demo"), "plain": remote("plain")}
        paths = {name: tmp_path / "checkouts" / name for name in remotes}
        for name, r in remotes.items():
            paths[name].parent.mkdir(exist_ok=True)
            gitfix.clone(r.bare, paths[name])
        config = write_config({
            "agent": {"state_dir": str(tmp_path / "state"), "log_level": "debug"},
            "github": {"api_url": forge.base_url},
            "webhook": {"secret_env": "HOOK_SECRET"},
            "relay": {"url": sse.url},
            "repos": [
                {"name": "demo", "github": remotes["demo"].full_name, "branch": "main", "path": str(paths["demo"]),
                 "every": "1h"},
                {"name": "plain", "url": remotes["plain"].url, "branch": "main", "path": str(paths["plain"]),
                 "every": "1h"},
            ]})
        env = dict(agent_env, HOOK_SECRET=SECRET)
        d = daemon(config, env=env)
        d.wait_log(r"relay\[0\]: connected", 15)
        d.wait_log(r"\bdemo \[\w+\] up-to-date", 15)
        d.wait_log(r"\bplain \[\w+\] up-to-date", 15)
        h = Relayed(sse, d, config, env, cli, remotes, paths)
        h.settle()
        assert sse.open_streams() == 1 and sse.connections == 1
        return h

    return start


def github_push(full_name, before, after, message=MESSAGE):
    """A GitHub push payload (dict) whose head commit has `message`."""
    return json.loads(push_body(full_name, before=before, after=after,
                                head_commit={"id": after, "message": message,
                                             "author": {"name": "Zoë Ångström", "email": "zoe@example.invalid"}},
                                commits=[{"id": after, "message": message}]))


def compact(payload):
    """The bytes GitHub sends and signs: compact JSON, non-ASCII as raw UTF-8."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------------------------------------
# the daemon
# ---------------------------------------------------------------------------------------------
def test_smee_relayed_signed_push_moves_the_checkout(relayed):
    """A signed GitHub push relayed in smee's format (body parsed, re-serialised; non-ASCII message) moves the checkout."""
    h = relayed()
    old = h.head()
    new = h.remotes["demo"].pusher.commit(message=MESSAGE)
    payload = github_push(h.remotes["demo"].full_name, old, new)
    body = compact(payload)
    assert any(b >= 0x80 for b in body)  # the signed bytes hold raw UTF-8
    mark = h.daemon.mark()

    assert h.sse.send_smee(delivery_headers("push", SECRET, body), payload) == 1
    wait_until(lambda: h.head() == new, 10, what="the checkout at the pushed commit")
    h.daemon.wait_log(r"\bdemo \[relay\] updated", since=mark)
    last = h.history()[0]
    assert (last["trigger"], last["result"], last["old_sha"], last["new_sha"]) == ("relay", "updated", old, new)
    assert gitfix.git("log", "-1", "--format=%s", cwd=h.paths["demo"]) == MESSAGE
    assert "rejected" not in h.daemon.log()
    assert h.head("plain") == h.remotes["plain"].head()  # the other repo was not involved
    assert h.log_checks("plain", since=mark) == []
    h.assert_secret_kept()


def test_gosmee_raw_body_verifies_where_smee_reserialising_cannot(relayed):
    """A pretty-printed body (indent=2, trailing newline) relayed by smee cannot be re-serialised to the signed
    bytes and is rejected; relayed by gosmee, which keeps the raw bytes (bodyB), it moves the checkout."""
    h = relayed()
    old = h.head()
    new = h.remotes["demo"].pusher.commit()
    payload = github_push(h.remotes["demo"].full_name, old, new)
    body = (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode()
    headers = delivery_headers("push", SECRET, body)
    mark = h.daemon.mark()

    h.sse.send_smee(headers, payload)
    h.daemon.wait_log(r"relay\[0\]: relayed delivery rejected: bad X-Hub-Signature-256", since=mark)
    assert h.head() == old

    h.sse.comment()  # gosmee's keep-alive between events
    h.sse.send_gosmee(dict(headers, **{"X-GitHub-Delivery": headers["X-GitHub-Delivery"] + "-gosmee"}), body)
    wait_until(lambda: h.head() == new, 10, what="the checkout at the pushed commit")
    h.daemon.wait_log(r"\bdemo \[relay\] updated", since=mark)
    assert h.log_checks("demo", since=mark) == ["updated"]
    assert len(re.findall("rejected", h.daemon.log()[mark:])) == 1
    h.assert_secret_kept()


def test_forged_relayed_delivery_is_rejected(relayed):
    """A relayed push signed with another secret (smee or gosmee) is rejected: the log says so, no check runs
    and the checkout stays where it was although the remote moved."""
    h = relayed()
    old = h.head()
    new = h.remotes["demo"].pusher.commit()
    payload = github_push(h.remotes["demo"].full_name, old, new)
    body = compact(payload)
    mark = h.daemon.mark()

    h.sse.send_smee(delivery_headers("push", "not-the-secret", body), payload)
    h.sse.send_gosmee(delivery_headers("push", "not-the-secret", body), body)
    h.sse.send_gosmee(delivery_headers("push", signature=False, body=body), body)
    wait_until(lambda: len(re.findall(r"relayed delivery rejected", h.daemon.log()[mark:])) == 3, 10,
               what="three rejections in the log")
    assert "missing X-Hub-Signature-256" in h.daemon.log()[mark:]
    time.sleep(QUIET)
    assert h.head() == old != new
    assert h.log_checks("demo", since=mark) == []
    assert [x for x in h.history() if x["new_sha"] == new] == []
    h.assert_secret_kept()


def test_reconnect_checks_every_repo_once(relayed, forge):
    """After the relay drops the connection the agent reconnects and checks every repo once (GitHub's through
    the API), catching up with pushes whose deliveries were lost; history records them as `relay` checks."""
    h = relayed()
    old = {n: h.head(n) for n in h.remotes}
    new = {n: r.pusher.commit() for n, r in h.remotes.items()}  # no delivery: it was lost
    mark, t0 = h.daemon.mark(), time.monotonic()

    assert h.sse.drop_all() == 1
    wait_until(lambda: h.sse.connections >= 2 and h.sse.open_streams() == 1, 10, what="a reconnect")
    for n in h.remotes:
        wait_until(lambda: h.head(n) == new[n], 10, what=f"{n} at the pushed commit")
    h.settle()
    assert re.search(r"WARNING relay\[0\]: connection lost \(.+\); reconnecting", h.daemon.log()[mark:])
    for n in h.remotes:
        assert h.log_checks(n, since=mark) == ["updated"], n  # once each, no more
        hist = h.history(n)
        assert (hist[0]["trigger"], hist[0]["result"], hist[0]["old_sha"], hist[0]["new_sha"]) == \
               ("relay", "updated", old[n], new[n])
    assert forge.head_requests(t0), "the reconnect check of the GitHub repo did not ask the API"
    assert h.sse.connections == 2
    h.assert_secret_kept()


# ---------------------------------------------------------------------------------------------
# the relay client in-process: a silent connection (READ_TIMEOUT is 90 s: shortened here)
# ---------------------------------------------------------------------------------------------
def test_keepalives_hold_the_connection_and_silence_ends_it(monkeypatch, sse, caplog):
    """With the read timeout cut to 1 s, keep-alive comments hold one connection; when the relay goes silent the
    client drops it, reconnects, and asks again for a check of every repo."""
    monkeypatch.setattr(relay, "READ_TIMEOUT", 1.0)
    sse.keepalive = 0.25
    connects = []
    app = WebhookApp(SECRET, lambda: [], lambda spec: spec.branch, lambda name, trigger: None)
    caplog.set_level("INFO", logger="sync_agent.relay")
    client = RelayClient(sse.url, app, lambda: connects.append(time.monotonic())).start()
    try:
        wait_until(lambda: connects, 5, what="the first connect")
        time.sleep(1.6)
        assert (len(connects), sse.connections) == (1, 1)  # kept alive well past the read timeout

        sse.silent = True
        silent_at = time.monotonic()
        wait_until(lambda: len(connects) >= 2, 8, what="a reconnect after the silence")
        assert 0.9 <= connects[1] - silent_at <= 4.5, connects[1] - silent_at
        assert sse.connections >= 2
        assert re.search(r"relay\[0\]: connection lost \(no data for 1 s\); reconnecting", caplog.text), caplog.text
        assert sse.path not in caplog.text
    finally:
        client.stop()


def test_cut_stream_is_logged_in_plain_words(sse, caplog):
    """A relay that cuts the stream is logged as `connection broken`, not as a Python class name."""
    connects = []
    app = WebhookApp(SECRET, lambda: [], lambda spec: spec.branch, lambda name, trigger: None)
    caplog.set_level("INFO", logger="sync_agent.relay")
    client = RelayClient(sse.url, app, lambda: connects.append(time.monotonic())).start()
    try:
        wait_until(lambda: connects, 5, what="the first connect")
        sse.drop_all()
        wait_until(lambda: "connection lost" in caplog.text, 5, what="the lost connection logged")
        assert "connection lost (connection broken)" in caplog.text, caplog.text
    finally:
        client.stop()


# ---------------------------------------------------------------------------------------------
# the pure parts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream, events", [
    (b"event: ready\ndata: {}\n\n", [("ready", "{}")]),
    (b"data: one\ndata: two\ndata: three\n\n", [("message", "one\ntwo\nthree")]),
    (b": keepalive\n\ndata: x\n\n: keepalive\n\n", [("message", "x")]),
    (b"event: ping\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n", [("ping", "1"), ("message", "2")]),
    (b"event: ping\ndata: 1\n\ndata: 2\n\n", [("ping", "1"), ("message", "2")]),  # the name is per event
    (b"data:x\n\ndata:  y\n\n", [("message", "x"), ("message", " y")]),  # one optional space is dropped
    (b"id: 7\nretry: 100\nevent: msg\ndata: {}\n\n", [("msg", "{}")]),  # other fields ignored
    (b"event: ping\n\n", []),  # no data: nothing dispatched
    (b"data: \n\n", [("message", "")]),
    (b"data: half an event", []),  # not finished by a blank line
    ("data: Grüße ✓\n\n".encode(), [("message", "Grüße ✓")]),
], ids=["named", "multi-line", "comments", "crlf", "name-resets", "spaces", "other-fields", "no-data",
        "empty-data", "unfinished", "utf-8"])
def test_parse_sse(stream, events):
    """Events come out whole whatever the chunking, even one byte at a time (UTF-8 split across chunks)."""
    assert list(parse_sse([stream])) == events
    assert list(parse_sse(stream[i:i + 1] for i in range(len(stream)))) == events
    assert list(parse_sse([stream[:5], stream[5:9], stream[9:]])) == events


def test_delivery_of_smee_and_gosmee():
    """smee's data gives lower-cased headers and the compact re-serialised body; gosmee's gives the raw bytes."""
    payload = {"ref": "refs/heads/main", "head_commit": {"message": MESSAGE}}
    smee = json.dumps({"x-github-event": "push", "X-Hub-Signature-256": "sha256=00", "content-length": 99,
                       "body": payload, "query": {}, "timestamp": 1700000000000}, ensure_ascii=False)
    headers, body, others = delivery_of(smee)
    assert headers == {"x-github-event": "push", "x-hub-signature-256": "sha256=00", "content-length": "99"}
    assert body == compact(payload)
    assert all(isinstance(o, bytes) for o in others)

    raw = b'{\n  "ref": "refs/heads/main"\n}\n'
    gosmee = json.dumps({"x-github-event": "push", "bodyB": base64.b64encode(raw).decode(), "timestamp": "1"})
    assert delivery_of(gosmee) == ({"x-github-event": "push"}, raw, [])

    for data in ("not json", "[1]", "{}", '{"x-github-event": "push"}', '{"bodyB": "***not base64***"}'):
        assert delivery_of(data) is None, data


def test_sigterm_is_prompt_on_a_quiet_channel(relayed):
    """A relay channel that sends nothing (no pings, no keep-alives) does not hold up SIGTERM: the daemon
    exits 0 within a few seconds, not after the 90 s read timeout."""
    r = relayed()
    time.sleep(0.5)  # the stream is idle now: the relay thread sits in a read
    t0 = time.monotonic()
    assert r.daemon.stop(timeout=20) == 0
    assert time.monotonic() - t0 < 5, time.monotonic() - t0
