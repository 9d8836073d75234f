"""Shared fixtures: a fake GitHub, real git remotes, configs, and the agent run as a user runs it."""
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:  # the helper modules import the same under any pytest import mode
    sys.path.insert(0, str(TESTS))

import gitfix  # noqa: E402
import tomlwrite  # noqa: E402
from fakeforge import FakeGitHub  # noqa: E402
from waiting import wait_until  # noqa: E402

_DROPPED_ENV = ("GIT_", "GITHUB_", "SYNC_AGENT_")


def agent_command(env):
    """argv prefix that runs the agent: the venv's console script, else one on PATH, else `python -m agent`."""
    beside = Path(sys.executable).parent / "sync-agent"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    script = shutil.which("sync-agent")
    if script:
        return [script]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "agent"]


@pytest.fixture
def forge():
    """A started FakeGitHub; stopped after the test."""
    fake = FakeGitHub().start()
    yield fake
    fake.stop()


@dataclass
class Remote:
    """A bare repository served by the forge as acme/<name>, and a pusher playing upstream."""

    name: str
    full_name: str
    bare: Path
    url: str
    pusher: gitfix.Pusher

    def head(self):
        return self.pusher.head()


@pytest.fixture
def remote(tmp_path, forge):
    """Factory: make_remote(name="demo", commits=2, branch="main") -> Remote registered on the forge."""

    def make_remote(name="demo", commits=2, branch="main"):
        (tmp_path / "remotes").mkdir(exist_ok=True)
        bare = gitfix.make_remote(tmp_path / "remotes", name, commits=commits, branch=branch)
        full_name = f"acme/{name}"
        forge.add_repo(full_name, bare, default_branch=branch)
        pusher = gitfix.Pusher(bare, tmp_path / "pushers" / name, branch)
        return Remote(name, full_name, bare, gitfix.file_url(bare), pusher)

    return make_remote


@pytest.fixture
def agent_env(tmp_path):
    """Environment for the agent: no GIT_/GITHUB_/SYNC_AGENT_ vars, an empty HOME, hence no git identity."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_DROPPED_ENV) and k not in ("XDG_CONFIG_HOME", "EMAIL")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def write_config(tmp_path):
    """Factory: write_config(text_or_dict, name="config.toml") -> path of the written file."""

    def write(config, name="config.toml"):
        path = tmp_path / name
        path.write_text(config if isinstance(config, str) else tomlwrite.dumps(config))
        return path

    return write


@pytest.fixture
def cli(tmp_path, agent_env):
    """Run the agent to completion: cli(*args, env=None, cwd=None, timeout=60) -> CompletedProcess with .output."""

    def run(*args, env=None, cwd=None, timeout=60):
        env = dict(agent_env if env is None else env)
        cmd = agent_command(env) + [str(a) for a in args]
        done = subprocess.run(cmd, env=env, cwd=cwd or tmp_path, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        done.output = done.stdout
        return done

    return run


class Daemon:
    """`sync-agent run` in the background, its stdout and stderr in one log file."""

    def __init__(self, cmd, env, cwd, log_path):
        self.log_path = Path(log_path)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self):
        """Everything the daemon has written so far."""
        return self.log_path.read_text(errors="replace")

    def mark(self):
        """The log's current length, to wait only for lines written after this point."""
        return len(self.log())

    def wait_log(self, regex, timeout=10.0, since=0):
        """Wait for the log (from offset `since`) to match regex; return the match."""
        pattern = re.compile(regex)
        try:
            return wait_until(lambda: pattern.search(self.log(), since), timeout, what=f"log matching {regex!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}; alive={self.alive()}\n--- daemon log ---\n{self.log()[-4000:]}") from None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=15):
        """SIGTERM and wait; return the exit status (AssertionError, after a kill, if it does not exit)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"daemon ignored SIGTERM for {timeout}s\n--- daemon log ---\n{self.log()[-4000:]}")

    def kill(self):
        """SIGKILL the daemon's process group (it and any hook it started)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def daemon(tmp_path, agent_env):
    """Factory: start_daemon(config_path, env=None, args=("run",)) -> Daemon; killed at teardown."""
    started = []

    def start_daemon(config_path, env=None, args=("run",)):
        env = dict(agent_env if env is None else env)
        cmd = agent_command(env) + [str(a) for a in args] + ["-c", str(config_path)]
        log_path = tmp_path / f"daemon-{len(started) + 1}.log"
        started.append(Daemon(cmd, env, Path(config_path).parent, log_path))
        return started[-1]

    yield start_daemon
    for d in started:
        d.kill()


@dataclass
class SyncCase:
    """One repo on the fake forge, its configured checkout path, and a config file naming them."""

    remote: Remote
    path: Path
    config_path: Path
    state_dir: Path
    run_cli: object

    def check(self, *names, env=None, timeout=60):
        """`sync-agent check -c CONFIG [NAME...]` to completion."""
        return self.run_cli("check", "-c", self.config_path, *names, env=env, timeout=timeout)

    def status(self, *args, env=None):
        return self.run_cli("status", "-c", self.config_path, *args, env=env)

    def head(self):
        """HEAD of the checkout (None when there is none)."""
        return gitfix.head(self.path)

    def git(self, *args, check=True):
        return gitfix.git(*args, cwd=self.path, check=check)


def repo_entry(r, path, **extra):
    """A `[[repos]]` table following r's main branch into path."""
    return {"name": r.name, "github": r.full_name, "branch": "main", "path": str(path), **extra}


def agent_config(forge, tmp_path, repos, **agent):
    """A config dict: state under tmp_path/state, the fake forge as the API, these `[[repos]]`."""
    return {"agent": {"state_dir": str(tmp_path / "state"), **agent}, "github": {"api_url": forge.base_url},
            "repos": repos}


@pytest.fixture
def sync_case(tmp_path, forge, remote, write_config, cli):
    """Factory: sync_case(checkout=True, name="demo", **repo_keys) -> SyncCase; checkout=True clones it first."""

    def make(checkout=True, name="demo", **repo_keys):
        r = remote(name)
        path = tmp_path / "checkouts" / name
        if checkout:
            path.parent.mkdir(exist_ok=True)
            gitfix.clone(r.bare, path)
        config = write_config(agent_config(forge, tmp_path, [repo_entry(r, path, **repo_keys)]))
        return SyncCase(r, path, config, tmp_path / "state", cli)

    return make
