"""`sync-agent run`: follows pushes on its schedule, obeys signals, reloads, locks its state_dir, reports status."""
import json
import re
import signal
import sys

import pytest

import gitfix
from conftest import agent_config, repo_entry
from waiting import wait_until

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
STATUS_KEYS = {"name", "branch", "source", "path", "local_sha", "remote_sha", "last_check", "last_result",
               "last_error", "failures_in_a_row", "failing_since", "next_run", "backup"}
RECORD = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


@pytest.fixture(autouse=True)
def generous_quota(forge):
    """Polling every second without a token would soon spend the 60 an hour of the fake forge."""
    forge.anon_limit = 100000


@pytest.fixture
def repos_config(tmp_path, forge, remote, write_config):
    """Factory: repos_config(*names, **keys) -> (config path, {name: (Remote, checkout)}), each polled every 1s."""

    def make(*names, **repo_keys):
        repos = {n: (remote(n), tmp_path / "checkouts" / n) for n in names or ("demo",)}
        entries = [repo_entry(r, path, every="1s", **repo_keys) for r, path in repos.values()]
        return write_config(agent_config(forge, tmp_path, entries)), repos

    return make


def read_json(path):
    """The JSON in a file, or {} while it is missing or half written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def synced(r, path):
    """True once the checkout's HEAD is the remote's."""
    return gitfix.head(path) == r.head()


def test_run_clones_follows_pushes_and_stops_on_sigterm(repos_config, daemon, tmp_path):
    """The daemon clones, follows a push within its interval, runs the hook with trigger `schedule`, exits 0."""
    out = tmp_path / "hook.json"
    config, repos = repos_config(on_change=[sys.executable, "-c", RECORD, str(out)])
    r, path = repos["demo"]
    d = daemon(config)
    wait_until(lambda: synced(r, path), 15, what="the first clone")
    old = r.head()
    new = r.pusher.commit({"app/data.txt": "data 2\n"})
    wait_until(lambda: gitfix.head(path) == new, 15, what="the push to be followed")
    assert (path / "app" / "data.txt").read_text() == "data 2\n"
    d.wait_log(r"demo.* updated " + old[:7] + r"\.\." + new[:7])
    env = wait_until(lambda: (e := read_json(out)).get("SYNC_AGENT_NEW_SHA") == new and e, 10,
                     what="the hook run after the update")
    assert env["SYNC_AGENT_TRIGGER"] == "schedule" and env["SYNC_AGENT_OLD_SHA"] == old
    assert d.stop(timeout=15) == 0
    assert "Traceback" not in d.log()


def test_quota_warning_at_start_and_sigint_stops_cleanly(repos_config, daemon):
    """Polling every second without a token is warned about at start (quota 60 an hour); SIGINT then exits 0."""
    config, repos = repos_config()
    d = daemon(config)
    wait_until(lambda: synced(*repos["demo"]), 15, what="the first clone")
    assert re.search(r"WARNING .*quota of 60", d.log()), d.log()
    d.signal(signal.SIGINT)
    assert d.proc.wait(15) == 0
    assert "Traceback" not in d.log()


def test_sighup_with_a_new_config_adds_a_repo(repos_config, daemon, remote, forge, tmp_path, write_config):
    """After SIGHUP the daemon follows the repos of the rewritten config: a repo added to it gets cloned."""
    config, repos = repos_config()
    d = daemon(config)
    wait_until(lambda: synced(*repos["demo"]), 15, what="the first clone")
    extra = remote("extra")
    extra_path = tmp_path / "checkouts" / "extra"
    write_config(agent_config(forge, tmp_path, [repo_entry(r, p, every="1s") for r, p in
                                                [repos["demo"], (extra, extra_path)]]))
    d.signal(signal.SIGHUP)
    wait_until(lambda: synced(extra, extra_path), 15, what="the added repo to be cloned")
    new = repos["demo"][0].pusher.commit()
    wait_until(lambda: gitfix.head(repos["demo"][1]) == new, 15, what="the first repo still followed")
    assert d.alive()
    assert d.stop() == 0


def test_sighup_with_a_broken_config_keeps_the_old_one(repos_config, daemon):
    """A bad config on SIGHUP is logged with its key path, and the daemon keeps syncing with the old one."""
    config, repos = repos_config()
    r, path = repos["demo"]
    d = daemon(config)
    wait_until(lambda: synced(r, path), 15, what="the first clone")
    good = config.read_text()
    config.write_text(good.replace('every = "1s"', 'every = "often"'))
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_log(r"repos\[0\]\.every", since=mark)
    new = r.pusher.commit()
    wait_until(lambda: gitfix.head(path) == new, 15, what="the push still followed on the old config")
    assert d.alive()
    assert d.stop() == 0


def test_second_run_on_the_same_state_dir_refuses(repos_config, daemon, cli):
    """A second `run` on a state_dir in use exits non-zero at once with a message; the first keeps running."""
    config, repos = repos_config()
    d = daemon(config)
    wait_until(lambda: synced(*repos["demo"]), 15, what="the first clone")
    second = cli("run", "-c", config, timeout=30)
    assert second.returncode not in (0, None), second.output
    assert "busy" in second.output and "state" in second.output, second.output
    assert "Traceback" not in second.output
    new = repos["demo"][0].pusher.commit()
    wait_until(lambda: gitfix.head(repos["demo"][1]) == new, 15, what="the first daemon still syncing")
    assert d.stop() == 0


def test_unchanged_polls_are_conditional_and_run_no_git(repos_config, daemon, forge, agent_env, tmp_path):
    """Once in step, each poll of an unchanged remote is one If-None-Match request answered 304, and no git fetch."""
    config, repos = repos_config()
    trace = tmp_path / "git-trace.log"
    d = daemon(config, env={**agent_env, "GIT_TRACE": str(trace)})
    wait_until(lambda: synced(*repos["demo"]), 15, what="the first clone")
    wait_until(lambda: len(forge.head_requests()) >= 2, 15, what="a poll after the clone")
    traced = trace.read_text()
    wait_until(lambda: len(forge.head_requests()) >= 4, 15, what="two more polls")
    polls = forge.head_requests()[1:]
    assert [q["status"] for q in polls] == [304] * len(polls)
    assert all(q["headers"].get("if-none-match") == f'"{repos["demo"][0].head()}"' for q in polls)
    assert trace.read_text() == traced, "git ran during unchanged polls"
    assert d.stop() == 0


def test_status_while_the_daemon_runs(repos_config, daemon, cli):
    """`status` and `status --json` work while the daemon runs; the JSON has every SPEC section 7 field."""
    config, repos = repos_config()
    r, path = repos["demo"]
    d = daemon(config)
    wait_until(lambda: synced(r, path), 15, what="the first clone")

    def stored():
        done = cli("status", "--json", "-c", config)
        assert done.returncode == 0, done.output
        return json.loads(done.stdout)["repos"]

    (row,) = wait_until(lambda: (rows := stored()) and rows[0]["next_run"] and rows, 10, what="a recorded check")
    assert STATUS_KEYS <= set(row), STATUS_KEYS - set(row)
    assert (row["name"], row["branch"], row["path"]) == ("demo", "main", str(path))
    assert "acme/demo" in row["source"]
    assert row["local_sha"] == row["remote_sha"] == r.head()
    assert row["last_result"].startswith(("cloned", "up-to-date"))
    assert row["failures_in_a_row"] == 0 and row["last_error"] is None and row["failing_since"] is None
    assert ISO_UTC.match(row["last_check"]) and ISO_UTC.match(row["next_run"])

    text = cli("status", "-c", config)
    assert text.returncode == 0 and re.search(r"^demo\s+main\s+" + r.head()[:7], text.output, re.M), text.output
    history = cli("history", "-c", config)
    assert history.returncode == 0 and "cloned" in history.output
    assert d.alive() and d.stop() == 0
