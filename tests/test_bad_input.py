"""Bad input never crashes the agent: malformed configs, hostile webhook traffic, odd forge answers, and repo
names that try to leave state_dir. The answer is always a clear error (exit 2 / a 4xx / exit 1)."""
import json
import random
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakeforge
import gitfix
import tomlwrite
from agent.config import Config, load_config
from agent.errors import ConfigError
from conftest import agent_config, repo_entry
from hooksend import Client, free_port, parse_raw, push_body, raw_exchange, sign
from observe import line, snapshot
from waiting import wait_until

ENV = {"HOOK_SECRET": "fuzz-secret-5e1f", "TOKEN": "tok-77", "URLS": "json://localhost"}


# ---- load_config under fuzzing ----------------------------------------------------------------------------------
NASTY_STRINGS = [
    "", " ", "5m", "1s", "0s", "-1s", "1h30m", "10x", "1d1d", "99999999999999999999d", "* * * * *", "0 3 * * 0",
    "61 * * * *", "@daily", "* * * * mon-sun/0", "owner/repo", "a/b/c", "../evil", ".hidden", "a/b", "-rf",
    "ff-only", "reset", "debug", "INFO", "UTC", "Europe/Berlin", "Nowhere/Land", "../../etc/passwd", "127.0.0.1:0",
    "8080", "[::1]:99999", "host:port", "http://127.0.0.1:1", "https://smee.io/abc", "file:///nonexistent.git",
    "json://localhost", "nope://x", "~", "~/x", "~nouser/x", "$HOME", "HOOK_SECRET", "TOKEN", "URLS", "UNSET_VAR",
    "main", "refs/heads/main", "a..b", "x.lock", "é", "\t", "\n", "'", '"', "\\", "\x7f", "push", "sha256=00",
]
KEYS = {
    "agent": ["state_dir", "log_level", "workers", "timezone", "max_backoff", "history_days"],
    "github": ["api_url", "token_env", "token_file", "token"],
    "gitee": ["api_url", "token_env"], "gitlab": ["api_url", "token_env"], "gitea": ["api_url", "token_env"],
    "webhook": ["listen", "secret_env", "secret_file", "insecure_no_secret", "max_body", "secret"],
    "relay": ["url"],
    "repos": ["name", "github", "gitee", "gitlab", "gitea", "branch", "path", "url", "every", "schedule", "mode",
              "on_change", "hook_timeout"],
    "notify": ["urls", "urls_env", "on", "repos", "failures_before_alert"],
}

keys_text = st.text(min_size=1, max_size=12)
scalars = st.one_of(st.sampled_from(NASTY_STRINGS), st.text(max_size=24), st.integers(), st.integers(-3, 100),
                    st.floats(allow_nan=True, allow_infinity=True), st.booleans())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys_text, inner, max_size=3)),
                      max_leaves=8)


def table(name):
    keys = st.one_of(st.sampled_from(KEYS[name]), keys_text)
    return st.dictionaries(keys, values, max_size=7)


config_docs = st.fixed_dictionaries({}, optional={
    "agent": st.one_of(table("agent"), values),
    "github": table("github"), "gitee": table("gitee"), "gitlab": table("gitlab"), "gitea": table("gitea"),
    "webhook": st.one_of(table("webhook"), values),
    "relay": st.one_of(table("relay"), values),
    "repos": st.one_of(st.lists(table("repos"), max_size=3), values),
    "notify": st.one_of(st.lists(table("notify"), max_size=2), values),
}).flatmap(lambda d: st.dictionaries(keys_text, values, max_size=2).map(lambda extra: {**extra, **d}))


def load_or_problems(path):
    """load_config's verdict: a Config, or ConfigError whose problems all name the file; nothing else."""
    try:
        result = load_config(str(path), environ=dict(ENV))
    except ConfigError as e:
        assert e.problems, "a ConfigError lists at least one problem"
        for problem in e.problems:
            assert isinstance(problem, str) and problem.startswith(f"{path}: "), problem
        return e.problems
    assert isinstance(result, Config)
    return result


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzzconfig")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=config_docs)
def test_load_config_on_random_tables_returns_config_or_config_error(fuzz_dir, doc):
    """Random keys and values in the agent/github/webhook/relay/repos/notify tables, written as TOML."""
    path = fuzz_dir / "config.toml"
    try:
        text = tomlwrite.dumps(doc)
    except TypeError:
        return  # a value the writer cannot express in TOML
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    load_or_problems(path)


VALID = """[agent]
state_dir = "state"
max_backoff = "8s"

[github]
api_url = "http://127.0.0.1:9/api/v3"

[webhook]
listen = "127.0.0.1:8080"
secret_env = "HOOK_SECRET"

[[repos]]
github = "acme/demo"
branch = "main"
path = "checkouts/demo"
every = "30s"
on_change = ["make", "deploy"]

[[notify]]
urls_env = "URLS"
on = ["error"]
""".encode()


@st.composite
def mangled(draw):
    """The valid config with random bytes inserted, deleted or replaced, or cut short."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
        chunk = draw(st.one_of(st.binary(min_size=1, max_size=6),
                               st.sampled_from([b"[", b"]", b"[[", b"=", b'"', b"'''", b"\n", b"\x00", b"\xff",
                                                b"{", b"}", b",", b"#", b"\\u", b"=[", b"\r"])))
        if op == "insert":
            data[at:at] = chunk
        elif op == "delete":
            del data[at:at + len(chunk)]
        elif op == "replace":
            data[at:at + len(chunk)] = chunk
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(mangled(), st.binary(max_size=300), st.text(max_size=200).map(str.encode)))
def test_load_config_on_malformed_toml_returns_config_or_config_error(fuzz_dir, data):
    """Malformed TOML, binary garbage and random text: a ConfigError naming the file, never another exception."""
    path = fuzz_dir / "mangled.toml"
    path.write_bytes(data)
    load_or_problems(path)


# ---- nasty config files through the command line ---------------------------------------------------------------
def nested_inline(depth):
    return "[agent]\nx = " + "[" * depth + "]" * depth + "\n"


NASTY_FILES = {
    "binary": lambda: random.Random(7).randbytes(8192),
    "huge-value": lambda: b'[agent]\nnot_a_key = "' + b"x" * (4 * 1024 * 1024) + b'"\n',
    "huge-garbage": lambda: b"[[repos]]\n" + b"= ]]" * (2 * 1024 * 1024),
    "deep-table-headers": lambda: ("[" + ".".join(f"t{i}" for i in range(3000)) + "]\nx = 1\n").encode(),
    "deep-inline-arrays": lambda: nested_inline(5000).encode(),
    "deep-inline-tables": lambda: ("[agent]\nx = " + "{a = " * 3000 + "1" + " }" * 3000 + "\n").encode(),
    "nul-in-home-path": lambda: b'[agent]\nstate_dir = "~\\u0000x"\n\n[[repos]]\nurl = "file:///x.git"\n'
                                b'branch = "main"\npath = "co"\n',
    "nul-in-state-dir": lambda: b'[agent]\nstate_dir = "st\\u0000x"\n\n[[repos]]\nurl = "file:///x.git"\n'
                                b'branch = "main"\npath = "co"\n',
    "unhashable-notify-repos": lambda: b'[[repos]]\nurl = "file:///x.git"\nbranch = "main"\npath = "co"\n\n'
                                       b'[[notify]]\nurls = ["json://localhost"]\nrepos = [[1]]\n',
}


@pytest.mark.parametrize("kind", list(NASTY_FILES))
def test_nasty_config_file_exits_2_with_one_line_per_problem(tmp_path, cli, kind):
    """`sync-agent validate` on garbage, a huge file, deep nesting: exit 2, each line names the file, no Traceback."""
    path = tmp_path / "nasty.toml"
    path.write_bytes(NASTY_FILES[kind]())
    done = cli("validate", "-c", path, timeout=60)
    assert "Traceback" not in done.output, done.output[-2000:]
    assert done.returncode == 2, done.output[-2000:]
    lines = done.output.splitlines()
    assert lines and all(ln.startswith(f"sync-agent: {path}: ") for ln in lines), done.output[:2000]
    assert len(done.output) < 64 * 1024, "problems are named, not the file echoed back"


# ---- repo names that try to leave state_dir ------------------------------------------------------------------
def tree(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


BAD_NAMES = ["../evil", "a/b", ".hidden", "..", "/abs", "x/../../evil", "-rf", "a\\b", "evil\n", "ok\n../x"]


def test_path_traversal_repo_names_are_rejected_at_load(tmp_path, forge, remote, write_config, cli):
    """Repo names that could escape state_dir (lock files are named after them) are refused with exit 2, one
    problem each, and neither `check` nor `run` creates anything, inside or outside state_dir."""
    r = remote("demo")
    work = tmp_path / "work"
    (work / "deep").mkdir(parents=True)
    config = work / "deep" / "config.toml"
    entries = [repo_entry(r, work / f"co{i}", name=n) for i, n in enumerate(BAD_NAMES)]
    config.write_text(tomlwrite.dumps(agent_config(forge, work / "deep", entries)))
    before = tree(tmp_path)
    for args in (("validate",), ("check",), ("run",), ("status",)):
        done = cli(*args, "-c", config, timeout=30)
        assert done.returncode == 2, (args, done.output)
        assert "Traceback" not in done.output
        problems = done.output.splitlines()
        assert all(p.startswith(f"sync-agent: {config}: ") for p in problems), done.output
        for i in range(len(BAD_NAMES)):
            assert any(f"repos[{i}].name" in p for p in problems), (BAD_NAMES[i], done.output)
    assert tree(tmp_path) == before, "nothing created, inside or outside state_dir"
    assert not (tmp_path / "evil").exists() and not (work / "evil").exists()
    assert forge.count() == 0


# ---- hostile webhook traffic --------------------------------------------------------------------------------------
ROUTES = {"/healthz": "GET", "/status": "GET", "/metrics": "GET", "/": "GET", "/webhook": "POST"}


def fuzz_requests(rng, secret, full_name):
    """(label, raw head bytes, body bytes, signed_ok) for a seeded mix of bad and odd requests."""
    out = []

    def req(label, line, headers, body=b"", signed=False):
        """headers: (name, value) pairs, or raw header lines (bytes)."""
        lines = [h if isinstance(h, bytes) else h[0] + b": " + h[1] for h in headers]
        head = line + b"\r\n" + b"".join(ln + b"\r\n" for ln in lines) + b"\r\n"
        out.append((label, head, body, signed))

    def rand_bytes(n):
        return bytes(rng.randrange(256) for _ in range(n))

    def rand_json():
        doc = {"ref": rng.choice(["refs/heads/main", "refs/heads/other", "refs/tags/v1", "", 5, None]),
               "repository": rng.choice([{"full_name": "acme/other"}, {"full_name": full_name.upper() + "x"},
                                         [], "acme/demo", None, {"full_name": 7}]),
               "after": rng.choice(["0" * 40, "f" * 40, "zz", 1.5]), rng.choice(["a", "é", "\u2028"]): [1, {}]}
        return json.dumps(doc).encode()

    for _ in range(200):
        kind = rng.randrange(14)
        body = b""
        if kind == 0:  # malformed request lines
            line = rng.choice([b"GET", b"POST /webhook", b"POST /webhook HTTP/9.9", b"POST  /webhook HTTP/1.1",
                               b"\x00\x01\x02 / HTTP/1.1", b"P\xffST /webhook HTTP/1.1", b"GET / HTTP/1.1 extra",
                               b"1234 /webhook HTTP/1.1", b"/webhook POST HTTP/1.1", rand_bytes(rng.randrange(1, 40))
                               .replace(b"\r\n", b"..")])
            req("request line", line, [(b"Host", b"x")])
        elif kind == 1:  # bad Content-Length
            cl = rng.choice([b"abc", b"-5", b"99999999999999999999999", b"1e3", b"0x10", b"", b"12, 13", b"-0"])
            req("content-length", b"POST /webhook HTTP/1.1", [(b"Host", b"x"), (b"Content-Length", cl)])
        elif kind == 2:  # two different lengths
            req("two lengths", b"POST /webhook HTTP/1.1", [(b"Content-Length", b"2"), (b"Content-Length", b"3")],
                b"{}")
        elif kind == 3:  # huge headers
            n = rng.choice([20_000, 70_000, 200_000])
            req("huge header", b"POST /webhook HTTP/1.1", [(b"X-Big", b"a" * n), (b"Content-Length", b"0")])
        elif kind == 4:  # many headers
            req("many headers", b"POST /webhook HTTP/1.1",
                [(b"X-H%d" % j, b"v" * 50) for j in range(rng.choice([100, 400]))])
        elif kind == 5:  # invalid UTF-8 body, unsigned
            body = rand_bytes(rng.randrange(1, 3000))
            req("binary body", b"POST /webhook HTTP/1.1", [(b"X-GitHub-Event", b"push"),
                                                           (b"Content-Length", str(len(body)).encode())], body)
        elif kind == 6:  # invalid UTF-8 in headers, wrong signature
            body = rand_json()
            req("binary headers", b"POST /webhook HTTP/1.1",
                [(b"X-GitHub-Event", b"pu\xffsh"), (b"X-Hub-Signature-256", b"sha256=" + rand_bytes(32)),
                 (b"X-GitHub-Delivery", rand_bytes(20).replace(b"\r", b"").replace(b"\n", b"")),
                 (b"Content-Length", str(len(body)).encode())], body)
        elif kind == 7:  # signature games
            body = push_body(full_name)
            good = sign(secret, body)
            sig = rng.choice([good.upper(), good[:-1], good + "0", "sha1=" + good[7:], "sha256=", good[7:],
                              " " + good[:-2], sign(secret + "x", body), sign(secret, body + b" ")])
            req("bad signature", b"POST /webhook HTTP/1.1",
                [(b"X-GitHub-Event", b"push"), (b"X-Hub-Signature-256", sig.encode()),
                 (b"X-GitHub-Delivery", str(uuid.uuid4()).encode()), (b"Content-Length", str(len(body)).encode())],
                body)
        elif kind == 8:  # other forges' headers, wrong secrets
            body = rand_json()
            forge_headers = rng.choice([[(b"X-Gitlab-Event", b"Push Hook"), (b"X-Gitlab-Token", b"nope")],
                                        [(b"X-Gitee-Event", b"Push Hook"), (b"X-Gitee-Token", b"x"),
                                         (b"X-Gitee-Timestamp", b"1")],
                                        [(b"X-Gitea-Event", b"push"), (b"X-Gitea-Signature", b"00" * 32)],
                                        [(b"X-Forgejo-Signature", b"")], [(b"X-Gitee-Token", b"\xff\xfe")]])
            req("other forge", b"POST /webhook HTTP/1.1", forge_headers + [(b"Content-Length",
                                                                             str(len(body)).encode())], body)
        elif kind == 9:  # correctly signed, but nothing to do: ping, other repo/branch/event, not JSON
            body = rng.choice([rand_json(), rand_bytes(rng.randrange(0, 200)), b"[]", b"null", b"\"x\"", b"{",
                               push_body("acme/other"), push_body(full_name, branch="other"),
                               push_body(full_name, ref="refs/tags/main")])
            event = rng.choice([b"push", b"ping", b"issues", b"", b"Push Hook"])
            req("signed noop", b"POST /webhook HTTP/1.1",
                [(b"X-GitHub-Event", event), (b"X-Hub-Signature-256", sign(secret, body).encode()),
                 (b"X-GitHub-Delivery", str(uuid.uuid4()).encode()), (b"Content-Length", str(len(body)).encode())],
                body, signed=True)
        elif kind == 10:  # methods and paths
            method = rng.choice([b"GET", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"post", b"BREW"])
            path = rng.choice([b"/webhook", b"/webhook/", b"/../../etc/passwd", b"/%00", b"/webhook?x=1",
                               b"http://evil/webhook", b"*", b"/" + b"a" * 5000, b"/\xff"])
            req("method/path", method + b" " + path + b" HTTP/1.1", [(b"Host", b"x")])
        elif kind == 11:  # body over the limit
            req("too big", b"POST /webhook HTTP/1.1", [(b"Content-Length", str(2 * 1024 * 1024).encode())],
                b"x" * rng.choice([0, 1000, 70_000]))
        elif kind == 12:  # chunked
            req("chunked", b"POST /webhook HTTP/1.1", [(b"Transfer-Encoding", b"chunked")], b"5\r\nhello\r\n0\r\n\r\n")
        else:  # header lines without a colon, folded, odd spacing
            req("header syntax", b"POST /webhook HTTP/1.1",
                [rng.choice([b"NoColon", b" X-Folded: v", b"X-A : v", b": v", b"\tX-Tab: v", b"X-\x00: v"]),
                 (b"Content-Length", b"0")])
    return out


def test_hostile_webhook_traffic_gets_4xx_and_never_a_check(tmp_path, forge, remote, write_config, daemon,
                                                            agent_env):
    """~200 malformed, oversized, unsigned or wrongly signed requests over raw sockets: each gets a 4xx (a
    correctly signed one with nothing to do a 2xx), never a 500; no check runs; the daemon stays healthy."""
    forge.anon_limit = 100000
    r = remote("demo")
    path = tmp_path / "checkouts" / "demo"
    port = free_port()
    cfg = agent_config(forge, tmp_path, [repo_entry(r, path, every="1h")])  # no scheduled check meanwhile
    cfg["webhook"] = {"listen": f"127.0.0.1:{port}", "secret_env": "HOOK_SECRET"}
    d = daemon(write_config(cfg), env={**agent_env, "HOOK_SECRET": ENV["HOOK_SECRET"]})
    wait_until(lambda: gitfix.head(path) == r.head(), 20, what="the first clone")
    client = Client(port)
    wait_until(lambda: client.get("/healthz").status == 200, 10, what="/healthz")
    old = gitfix.head(path)
    new = r.pusher.commit()  # any check from now on would move the checkout
    mark = time.monotonic()
    log_mark = d.mark()

    # a request with bare LF line ends never completes its head: the listener answers 408 after its deadline
    slow = {}

    def lf_only():
        slow["raw"] = raw_exchange(port, b"POST /webhook HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}", timeout=30)

    lf = threading.Thread(target=lf_only)
    lf.start()

    rng = random.Random(20241203)
    bad = []
    for label, head, body, signed in fuzz_requests(rng, ENV["HOOK_SECRET"], r.full_name):
        raw = raw_exchange(port, head, body, timeout=20)
        status, _headers, _body = parse_raw(raw)
        method_path = head.split(b"\r\n", 1)[0]
        benign_get = any(method_path.startswith(f"GET {p} ".encode()) for p in ROUTES) \
            and method_path.endswith(b"HTTP/1.1")
        ok = status is not None and (400 <= status < 500 or ((signed or benign_get) and 200 <= status < 300))
        if not ok:
            bad.append((label, status, head[:120], raw[:200]))
    assert not bad, bad[:5]
    lf.join(40)
    status, _h, _b = parse_raw(slow.get("raw", b""))
    assert status is not None and 400 <= status < 500, slow

    assert d.alive()
    assert client.get("/healthz").status == 200
    time.sleep(1.0)  # a check, had one been asked for, would have run by now
    assert gitfix.head(path) == old, "no request made the agent check"
    assert forge.count(mark) == 0
    log = d.log()[log_mark:]
    assert "[webhook]" not in log and "Traceback" not in log and "handler failed" not in log \
        and "HTTP connection failed" not in log, log[-3000:]
    # the listener still works: a real signed push is acted on
    ok = client.deliver(push_body(r.full_name, before=old, after=new), secret=ENV["HOOK_SECRET"])
    assert ok.status == 202, ok.text
    wait_until(lambda: gitfix.head(path) == new, 15, what="the signed push acted on")
    assert d.stop() == 0


# ---- odd answers from the forge ----------------------------------------------------------------------------------
def check_fails_cleanly(case, what):
    """`check` exits 1 with one error line, no Traceback, and the checkout does not move."""
    before = snapshot(case.path)
    done = case.check(timeout=90)
    assert done.returncode == 1, done.output
    msg = line(done)
    assert msg.startswith("demo: error: ") and what in msg.lower(), msg
    assert "Traceback" not in done.output and len(done.output.splitlines()) <= 3, done.output
    assert snapshot(case.path) == before
    return msg


def test_truncated_forge_answer_is_a_clean_error(sync_case, forge):
    """garbage_next: a 200 with a cut-off body is an error naming the problem; nothing moves."""
    case = sync_case()
    case.remote.pusher.commit()
    forge.garbage_next(1)
    check_fails_cleanly(case, "sha")


def test_non_sha_200_answer_is_a_clean_error(sync_case, forge):
    """A 200 whose body is text (an HTML error page from a proxy, say) rather than a sha: error, nothing moves."""
    case = sync_case()
    case.remote.pusher.commit()
    forge._head_reply = lambda *a: fakeforge._Reply(200, b"<html><body>Service \xe2\x80\x94 maintenance</body></html>",
                                                   "text/html; charset=utf-8")
    msg = check_fails_cleanly(case, "not a commit sha")
    assert "<html>" in msg, msg
    forge.__dict__.pop("_head_reply")
    ok = case.check()
    assert ok.returncode == 0 and line(ok).startswith("demo: updated "), ok.output


def test_forge_slower_than_the_http_timeout_is_a_clean_error(sync_case, forge):
    """A forge that takes longer than the 15 s HTTP timeout: the check gives up with a clear error (it does not
    hang), nothing moves. Slow by nature (one timeout, one retry): the only test here that waits that long."""
    case = sync_case()
    case.remote.pusher.commit()
    forge.delay = 17
    t0 = time.monotonic()
    check_fails_cleanly(case, "did not answer within 15 s")
    took = time.monotonic() - t0
    assert took < 60, f"a hung forge held the check for {took:.0f} s"
    forge.delay = 0
