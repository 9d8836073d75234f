"""Shared parts of the benchmarks: a scratch area, the daemon as a subprocess, precise waits, /proc figures.

Everything stays on loopback and under one temporary directory that is removed at the end, together
with the fake forge and every daemon started here.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import select
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import gitfix  # noqa: E402
import tomlwrite  # noqa: E402
from fakeforge import FakeGitHub  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
TOKEN_ENV = "BENCH_GITHUB_TOKEN"
TOKEN = "bench-token-4f1d2c"  # only ever sent to the loopback fake forge


class BenchTimeout(Exception):
    """The whole benchmark ran past its time bound."""


# ---- the scratch area -------------------------------------------------------------------
class Scratch:
    """A temp dir, a started fake forge and the daemons run in it; all removed by close()."""

    def __init__(self, time_limit: float):
        self.root = Path(tempfile.mkdtemp(prefix="sync-agent-bench-"))
        self.home = self.root / "home"
        self.home.mkdir()
        self.forge = FakeGitHub()
        self.forge.require_token = TOKEN  # every API call must carry the token: 304s are free
        self.forge.start()
        self.daemons: list[Daemon] = []
        self._old_alarm = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(int(time_limit))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self._old_alarm)
        for d in self.daemons:
            d.stop()
        self.forge.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def dir(self, *parts) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def env(self, extra_path: Path | None = None) -> dict:
        """The daemon's environment: ours without GIT_/GITHUB_/SYNC_AGENT_, an empty HOME, the token."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITHUB_", "SYNC_AGENT_"))}
        env.update(HOME=str(self.home), LANG="C", LC_ALL="C", **{TOKEN_ENV: TOKEN})
        if extra_path:
            env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def remote(self, name: str, commits: int = 2):
        """A bare repository served as acme/<name>, and a pusher clone playing upstream."""
        bare = gitfix.make_remote(self.dir("remotes"), name, commits=commits)
        self.forge.add_repo(f"acme/{name}", bare)
        return bare, gitfix.Pusher(bare, self.root / "pushers" / name)

    def config(self, name: str, repos: list, webhook: dict | None = None, workers: int | None = None) -> Path:
        """Write a config file for one daemon run; repos are [[repos]] tables."""
        path = self.dir("configs") / f"{name}.toml"
        data = {"agent": {"state_dir": str(self.root / "state" / name), "log_level": "info", "workers": workers},
                "github": {"api_url": self.forge.base_url, "token_env": TOKEN_ENV},
                "webhook": webhook, "repos": repos}
        path.write_text(tomlwrite.dumps(data))
        return path

    def start_daemon(self, config: Path, env: dict) -> "Daemon":
        d = Daemon(config, env, self.dir("logs") / f"{config.stem}.log")
        self.daemons.append(d)
        return d.start()


def _on_alarm(signum, frame):
    raise BenchTimeout("the benchmark ran past its time limit")


# ---- the daemon ------------------------------------------------------------------------
def agent_command() -> list:
    """argv prefix for the agent: the venv's console script beside this python, else `python -m agent`."""
    beside = Path(sys.executable).parent / "sync-agent"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "agent"]


class Daemon:
    """`sync-agent run -c CONFIG` as a subprocess, with its CPU and memory figures from /proc."""

    def __init__(self, config: Path, env: dict, log_path: Path):
        self.config, self.env, self.log_path = config, env, log_path
        self.proc = None
        self._log = None

    def start(self):
        env = dict(self.env)
        if agent_command()[0] == sys.executable:
            env["PYTHONPATH"] = str(ROOT)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*agent_command(), "run", "-c", str(self.config)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0):
        """SIGTERM (the daemon finishes running checks and exits 0); SIGKILL if it takes too long."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def cpu(self) -> tuple[float, float]:
        """(own utime+stime, reaped children's cutime+cstime) in seconds: /proc/PID/stat fields 14-17."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return (utime + stime) / CLK_TCK, (cutime + cstime) / CLK_TCK

    def thread_ns(self) -> int:
        """Nanoseconds on CPU of the daemon's live threads (schedstat): finer than clock ticks."""
        total = 0
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return total

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def problems(self) -> list:
        """WARNING and ERROR lines of the daemon's log."""
        return [ln for ln in self.log_text().splitlines() if " WARNING " in ln or " ERROR " in ln]

    def state_db(self) -> Path:
        import tomllib

        with open(self.config, "rb") as f:
            return Path(tomllib.load(f)["agent"]["state_dir"]) / "state.db"

    def checks(self, repo: str | None = None) -> int:
        """Checks recorded so far in the state store (repeated unchanged checks share a row with a count)."""
        rows = self._query("SELECT SUM(count) FROM history" + (" WHERE repo = ?" if repo else ""),
                           (repo,) if repo else ())
        return int(rows[0][0] or 0) if rows else 0

    def history(self, repo: str | None = None) -> list:
        rows = self._query("SELECT repo, trigger, result, seconds, count FROM history"
                           + (" WHERE repo = ?" if repo else "") + " ORDER BY id", (repo,) if repo else ())
        return [dict(zip(("repo", "trigger", "result", "seconds", "count"), r)) for r in rows]

    def _query(self, sql, args=()):
        db = sqlite3.connect(f"file:{self.state_db()}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()


# ---- waiting for a checkout -------------------------------------------------------------
def read_head(checkout) -> str | None:
    """HEAD's sha from the checkout's .git files (no git process), or None."""
    gd = Path(checkout) / ".git"
    try:
        head = (gd / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref: "):
        return head or None
    ref = head[5:]
    try:
        sha = (gd / ref).read_text().strip()
        if len(sha) == 40:
            return sha
    except OSError:
        pass
    try:
        for line in (gd / "packed-refs").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    except OSError:
        pass
    return None


def wait_for_head(checkout, sha: str | None, timeout: float, what: str = "") -> float:
    """Poll (20 ms) until the checkout's HEAD is sha (any commit when sha is None); monotonic time."""
    deadline = time.monotonic() + timeout
    while True:
        h = read_head(checkout)
        if h and (sha is None or h == sha):
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or checkout} to reach "
                                 f"{(sha or 'a commit')[:12]} (HEAD is {h})")
        time.sleep(0.02)


_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000


class HeadWatch:
    """Notices the moment a checkout's HEAD changes: inotify on .git and .git/refs/heads, so the time
    is exact to scheduler latency without a busy poll (which would steal CPU from the daemon).
    Falls back to a 2 ms poll where inotify is unavailable."""

    def __init__(self, checkout):
        self.checkout = Path(checkout)
        self.fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
                gd = self.checkout / ".git"
                for d in (gd, gd / "refs" / "heads"):
                    if libc.inotify_add_watch(fd, os.fsencode(d), mask) < 0:
                        os.close(fd)
                        fd = -1
                        break
            self.fd = fd
        except (OSError, AttributeError):
            self.fd = -1

    def wait_for(self, sha: str, timeout: float) -> float:
        """Monotonic time at which HEAD was seen to be sha."""
        deadline = time.monotonic() + timeout
        while True:
            if read_head(self.checkout) == sha:
                return time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {self.checkout.name} to reach "
                                     f"{sha[:12]} (HEAD is {read_head(self.checkout)})")
            if self.fd < 0:
                time.sleep(min(left, 0.002))
                continue
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.05))
            if ready:
                try:
                    while os.read(self.fd, 65536):
                        pass
                except BlockingIOError:
                    pass

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---- counting git processes ------------------------------------------------------------
def git_shim(directory: Path) -> tuple[Path, Path]:
    """A `git` on PATH that notes each call in a file, then execs the real git: an exact count of the
    git processes the daemon starts (no sampling gaps). Returns (shim dir, call log)."""
    real = shutil.which("git")
    directory.mkdir(parents=True, exist_ok=True)
    calls = directory / "calls.log"
    calls.touch()
    shim = directory / "git"
    shim.write_text(f"#!/bin/sh\necho \"$$ $1\" >> {shlex.quote(str(calls))}\nexec {shlex.quote(real)} \"$@\"\n")
    shim.chmod(0o755)
    return directory, calls


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


class ChildSampler:
    """Samples /proc every `interval` s for children of `pid` named git; counts distinct ones seen."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid, self.interval = pid, interval
        self.seen: set = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return len(self.seen)

    def _run(self):
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        text = f.read()
                except OSError:
                    continue
                comm = text[text.find("(") + 1:text.rfind(")")]
                rest = text[text.rfind(")") + 2:].split()
                if comm == "git" and int(rest[1]) == self.pid:
                    self.seen.add((entry, rest[19]))  # pid and start time: a reused pid counts again
            self.samples += 1
            self._stop.wait(self.interval)


# ---- HTTP on loopback ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")


# ---- figures -----------------------------------------------------------------------------
def percentile(values, p: float) -> float:
    """Linear interpolation between closest ranks (p in 0..100)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(values) -> dict:
    xs = list(values)
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "p90": percentile(xs, 90), "p95": percentile(xs, 95),
            "max": max(xs), "min": min(xs), "mean": statistics.fmean(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def print_table(title: str, rows: list):
    """rows: (figure, value, target or '', verdict or '')."""
    print(f"\n{title}")
    head = ("figure", "value", "target", "")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(3)]
    print(f"  {head[0]:<{widths[0]}}  {head[1]:>{widths[1]}}  {head[2]:<{widths[2]}}")
    for fig, val, target, verdict in rows:
        print(f"  {fig:<{widths[0]}}  {val:>{widths[1]}}  {target:<{widths[2]}}  {verdict}".rstrip())
    sys.stdout.flush()


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def code_fingerprint() -> str:
    """Which agent code was measured: HEAD, whether agent/ has uncommitted changes, a hash of agent/*.py."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "agent").glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agent"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "?", ""
    return f"HEAD {head}{' + uncommitted agent/ changes' if dirty else ''}, agent/*.py sha256 {h.hexdigest()[:12]}"


def load_note() -> str:
    """The 1/5/15-minute load averages: other work on the machine skews every figure here."""
    try:
        with open("/proc/loadavg") as f:
            return "load average " + " ".join(f.read().split()[:3])
    except OSError:
        return "load average unknown"


def preamble(name: str):
    print(f"{name}: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs, python "
          f"{sys.version.split()[0]}, {subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.strip()}")
    print(f"agent code: {code_fingerprint()}; {load_note()} at start")
    sys.stdout.flush()
