"""The git-only source: a repo with `url` and no forge key learns its head from `git ls-remote`, from a
bare repository over file:// and over `git daemon` on 127.0.0.1. No API is asked: no forge runs here, and
the default API (api.github.com) cannot be reached from the tests, so any API use would fail the check."""
import json
import signal
import socket
import subprocess
import time

import pytest

import gitfix
from waiting import wait_until


def git_only_config(tmp_path, url, path, **keys):
    """A config with one git-only repo `demo` and no forge table."""
    import tomlwrite

    repo = {"name": "demo", "url": url, "path": str(path), **keys}
    config = tmp_path / "config.toml"
    config.write_text(tomlwrite.dumps({"agent": {"state_dir": str(tmp_path / "state")}, "repos": [repo]}))
    return config


def bare_repo(tmp_path, branch="main"):
    (tmp_path / "remotes").mkdir(exist_ok=True)
    bare = gitfix.make_remote(tmp_path / "remotes", "demo", branch=branch)
    return bare, gitfix.Pusher(bare, tmp_path / "pusher", branch)


def result_line(done):
    """The line `check` printed for repo demo (the log lines on stderr come in the same output)."""
    lines = [ln for ln in done.output.splitlines() if ln.startswith("demo: ")]
    assert len(lines) == 1, done.output
    return lines[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def git_daemon(tmp_path):
    """`git daemon` serving tmp_path/remotes read-only on 127.0.0.1; yields a function url(name)."""
    base = tmp_path / "remotes"
    base.mkdir(exist_ok=True)
    procs = []

    def start():
        for _ in range(5):  # the port was free a moment ago; another process may take it first
            port = free_port()
            p = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
                                  f"--base-path={base}", "--listen=127.0.0.1", f"--port={port}", str(base)],
                                 env=gitfix.git_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and p.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    procs.append(p)
                    return port
                except OSError:
                    time.sleep(0.02)
            p.kill()
            p.wait()
        raise AssertionError("git daemon did not start")

    def stop():
        for p in procs:
            p.terminate()
            p.wait(5)
        procs.clear()

    state = {"port": start()}

    class Served:
        def url(self, name):
            return f"git://127.0.0.1:{state['port']}/{name}.git"

        def stop(self):
            stop()

        def restart(self):
            stop()
            state["port"] = start()

    yield Served()
    stop()


def test_file_url_clone_update_and_unchanged_check(tmp_path, cli):
    """Over file://: the first check clones, a push is followed, an unchanged check changes nothing; the
    history says so and no API was needed."""
    bare, pusher = bare_repo(tmp_path)
    path = tmp_path / "checkouts" / "demo"
    config = git_only_config(tmp_path, gitfix.file_url(bare), path, branch="main")

    first = cli("check", "-c", config)
    assert first.returncode == 0, first.output
    assert result_line(first) == f"demo: cloned {pusher.head()[:7]}"
    old, new = pusher.head(), pusher.commit()
    second = cli("check", "-c", config)
    assert second.returncode == 0 and result_line(second) == f"demo: updated {old[:7]}..{new[:7]}"
    assert gitfix.head(path) == new
    third = cli("check", "-c", config)
    assert third.returncode == 0 and result_line(third) == f"demo: up-to-date {new[:7]}"

    status = json.loads(cli("status", "--json", "-c", config).output)["repos"][0]
    assert status["source"] == gitfix.file_url(bare) and status["remote_sha"] == new
    results = [h["result"] for h in json.loads(cli("history", "--json", "-c", config).output)]
    assert results == ["up-to-date", "updated", "cloned"]


def test_default_branch_comes_from_ls_remote_symref(tmp_path, cli):
    """Without `branch`, the remote's HEAD names the branch to follow (here `trunk`, not main)."""
    bare, pusher = bare_repo(tmp_path, branch="trunk")
    path = tmp_path / "checkouts" / "demo"
    config = git_only_config(tmp_path, gitfix.file_url(bare), path)
    done = cli("check", "-c", config)
    assert done.returncode == 0, done.output
    assert gitfix.git("symbolic-ref", "--short", "HEAD", cwd=path) == "trunk"
    assert gitfix.head(path) == pusher.head()


def test_missing_branch_is_a_one_line_error_and_nothing_is_made(tmp_path, cli):
    bare, _ = bare_repo(tmp_path)
    path = tmp_path / "checkouts" / "demo"
    config = git_only_config(tmp_path, gitfix.file_url(bare), path, branch="nope")
    done = cli("check", "-c", config)
    assert done.returncode == 1
    assert result_line(done) == f"demo: error: branch 'nope' not found at {gitfix.file_url(bare)}"
    assert not path.exists()


def test_git_daemon_source_followed_by_the_daemon(tmp_path, git_daemon, daemon):
    """Over git:// from `git daemon` on 127.0.0.1, polled every second: cloned at start, a push followed,
    a stopped server is a one-line error that leaves the checkout alone, and the next poll after it is
    back syncs again."""
    bare, pusher = bare_repo(tmp_path)
    path = tmp_path / "checkouts" / "demo"
    url = git_daemon.url("demo")
    config = git_only_config(tmp_path, url, path, branch="main", every="1s")
    d = daemon(config)
    wait_until(lambda: gitfix.head(path) == pusher.head(), 20, interval=0.05, what="the clone over git://")
    new = pusher.commit()
    wait_until(lambda: gitfix.head(path) == new, 10, interval=0.05, what="the push over git://")
    d.wait_log(r"demo \[schedule\] updated ", 5)

    git_daemon.stop()
    mark = d.mark()
    d.wait_log(r"demo \[schedule\] error: `git ls-remote .*errno=Connection refused .*failures in a row: 1", 10,
               since=mark)
    assert gitfix.head(path) == new and gitfix.git("status", "--porcelain", cwd=path) == ""

    git_daemon.restart()  # on another port: the config follows it, as a user would after moving a server
    newer = pusher.commit()
    config.write_text(config.read_text().replace(url, git_daemon.url("demo")))
    # the checkout's origin still names the old port; the same repository by name, so it is accepted
    d.signal(signal.SIGHUP)
    wait_until(lambda: gitfix.head(path) == newer, 20, interval=0.05, what="the sync after the server came back")
    assert d.alive() and "Traceback" not in d.log()
    assert d.stop() == 0
