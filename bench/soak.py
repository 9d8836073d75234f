#!/usr/bin/env python3
"""Soak: many repos, a random mix of upstream changes, local mischief, forge faults and webhook
floods, with the promises checked all along. Loopback only; cleans up after itself.

    python bench/soak.py                      # 10 minutes, 100 repos
    python bench/soak.py --seconds 60 --repos 20   # the short version the test suite runs

Invariants (exit 1 when any breaks):
- no local edit, untracked file or local commit is lost: each is recorded and found afterwards in
  the work tree, a stash, or a refs/sync-agent/backup/ ref;
- a repo that is neither blocked nor failing reaches a push within two intervals (+1 s), when no
  forge fault was active meanwhile;
- RSS, threads and open file descriptors of the daemon stay flat;
- the token appears in no output (log, status, state dir).
"""
import argparse
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import gitfix  # noqa: E402
from fakeforge import FakeGitHub  # noqa: E402

TOKEN = "ghp_soakTOKEN_9f8e7d6c5b4a"
SECRET = "soak-webhook-secret"


def agent_cmd():
    exe = Path(sys.executable).with_name("sync-agent")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "agent"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, body, headers, timeout=10):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("POST", "/webhook", body=body, headers=headers)
        r = c.getresponse()
        r.read()
        c.close()
        return r.status
    except OSError:
        return None


class Repo:
    def __init__(self, i, root, forge, rng):
        self.name = f"r{i:03d}"
        self.full = f"soak/{self.name}"
        self.bare = gitfix.make_remote(root / "remotes", self.name, commits=2)
        forge.add_repo(self.full, self.bare)
        self.pusher = gitfix.Pusher(self.bare, root / "pushers" / self.name)
        self.path = root / "work" / self.name
        self.every = rng.choice([1, 2, 3, 4, 5])
        self.mode = "reset" if rng.random() < 0.3 else "ff-only"
        self.lock = threading.Lock()  # one action at a time per repo
        self.last_push = None  # (sha, time)
        self.deleted = False


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="sync-agent-soak-"))
        self.forge = FakeGitHub().start()
        self.port = free_port()
        self.repos = [Repo(i, self.tmp, self.forge, self.rng) for i in range(args.repos)]
        self.kept = []  # (repo, kind, marker or sha)
        self.violations = []
        self.faults_until = 0.0
        self.counts = {}
        self.samples = []
        self.stop = threading.Event()

    # ---- setup ----------------------------------------------------------------------------
    def config(self):
        lines = ['[agent]', 'state_dir = "state"', 'log_level = "info"', 'workers = 4', 'max_backoff = "10s"',
                 '[github]', f'api_url = "{self.forge.base_url}"', 'token_env = "GITHUB_TOKEN"',
                 '[webhook]', f'listen = "127.0.0.1:{self.port}"', 'secret_env = "SOAK_SECRET"', '']
        for r in self.repos:
            lines += ['[[repos]]', f'name = "{r.name}"', f'github = "{r.full}"', 'branch = "main"',
                      f'path = "{r.path}"', f'every = "{r.every}s"', f'mode = "{r.mode}"', '']
        p = self.tmp / "config.toml"
        p.write_text("\n".join(lines))
        return p

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "GITHUB_", "SYNC_AGENT_"))}
        env.update(GITHUB_TOKEN=TOKEN, SOAK_SECRET=SECRET, HOME=str(self.tmp / "home"), GIT_CONFIG_NOSYSTEM="1")
        (self.tmp / "home").mkdir()
        self.log_path = self.tmp / "agent.log"
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(agent_cmd() + ["run", "-c", str(self.config())], env=env, cwd=self.tmp,
                                     stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.env = env
        deadline = time.monotonic() + 30 + len(self.repos) * 0.3
        while time.monotonic() < deadline:
            if all(gitfix.head(r.path) == r.pusher.head() for r in self.repos):
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"agent exited at start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        raise SystemExit("not every repo was cloned in time")

    # ---- mischief -------------------------------------------------------------------------
    def locked(self, repo):
        """Hold the agent's repo lock: a person edits between checks, not in the middle of one."""
        fd = os.open(self.tmp / "state" / "locks" / f"{repo.name}.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def act(self):
        kinds = ["push"] * 40 + ["force"] * 3 + ["delete"] * 2 + ["dirty"] * 10 + ["untracked"] * 5 + \
                ["local"] * 5 + ["5xx"] * 2 + ["ratelimit"] * 1 + ["latency"] * 2 + ["flood"] * 3 + ["forged"] * 3 + \
                ["resolve"] * 8
        kind = self.rng.choice(kinds)
        repo = self.rng.choice(self.repos)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        getattr(self, "do_" + kind)(repo)

    def pushed(self, repo, sha):
        repo.last_push = (sha, time.monotonic())

    def do_push(self, repo):
        with repo.lock:
            repo.deleted = False
            self.pushed(repo, repo.pusher.commit())

    def do_force(self, repo):
        with repo.lock:
            if not repo.deleted:
                self.pushed(repo, repo.pusher.force_push_rewrite())

    def do_delete(self, repo):
        with repo.lock:
            if not repo.deleted:
                repo.pusher.delete_branch()
                repo.deleted = True
                repo.last_push = None

    def _mischief(self, repo, fn):
        if not repo.path.is_dir():
            return
        with repo.lock:
            fd = self.locked(repo)
            try:
                fn()
            except AssertionError:
                pass  # e.g. the checkout is mid-clone: nothing recorded
            finally:
                os.close(fd)

    def do_dirty(self, repo):
        marker = f"DIRTY-{uuid.uuid4().hex}"
        rel = "README.md" if self.rng.random() < 0.2 else "app/data.txt"  # README conflicts with pushes

        def edit():
            p = repo.path / rel
            if p.exists():
                with open(p, "a") as f:
                    f.write(marker + "\n")
                self.kept.append((repo, "edit", marker))
        self._mischief(repo, edit)

    def do_untracked(self, repo):
        marker = f"UNTRACKED-{uuid.uuid4().hex}"
        rel = f"new/{uuid.uuid4().hex[:8]}.txt"

        def make():
            gitfix.untracked(repo.path, rel, marker + "\n")
            self.kept.append((repo, "untracked", marker))
        self._mischief(repo, make)
        with repo.lock:  # upstream adds the same path: a collision
            repo.deleted = False
            self.pushed(repo, repo.pusher.commit({rel: "upstream content\n"}))

    def do_local(self, repo):
        def commit():
            sha = gitfix.local_commit(repo.path, f"local/{uuid.uuid4().hex[:8]}.txt")
            self.kept.append((repo, "commit", sha))
        self._mischief(repo, commit)

    def do_resolve(self, repo):
        """What a person does about a blocked checkout: stash the edits, keep local commits on a branch,
        and go back to the remote head. Everything they had stays findable."""
        state = self.states().get(repo.name, "")
        if not state.startswith("blocked") or repo.deleted:
            return

        def fix():
            gitfix.git("stash", "push", "-q", "--include-untracked", "-m", "soak: resolve", cwd=repo.path,
                       check=False)
            gitfix.git("branch", f"saved-{uuid.uuid4().hex[:8]}", cwd=repo.path)
            gitfix.git("fetch", "-q", "origin", "main", cwd=repo.path)
            gitfix.git("reset", "-q", "--hard", "FETCH_HEAD", cwd=repo.path)
        self._mischief(repo, fix)

    def fault(self, seconds):
        self.faults_until = max(self.faults_until, time.monotonic() + seconds)

    def do_5xx(self, repo):
        self.forge.fail_for(2, 503)
        self.fault(2)

    def do_ratelimit(self, repo):
        self.forge.rate_limit(3, self.rng.choice([403, 429]))
        self.fault(3)

    def do_latency(self, repo):
        self.forge.delay = 0.3
        self.fault(3)
        threading.Timer(3, lambda: setattr(self.forge, "delay", 0)).start()

    def delivery(self, repo, secret=SECRET):
        sha = repo.pusher.head() or "0" * 40
        body = json.dumps({"ref": "refs/heads/main", "after": sha, "before": sha,
                           "repository": {"full_name": repo.full}}).encode()
        sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return body, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                      "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sig}

    def do_flood(self, repo):
        def send():
            for _ in range(12):
                st = post(self.port, *self.delivery(repo))
                if st not in (200, 202):
                    self.violations.append(f"flood delivery answered {st}")
        ths = [threading.Thread(target=send) for _ in range(4)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()

    def do_forged(self, repo):
        for _ in range(10):
            st = post(self.port, *self.delivery(repo, secret="not-the-secret"))
            if st != 401:
                self.violations.append(f"forged delivery answered {st}, want 401")

    # ---- watching -------------------------------------------------------------------------
    def states(self):
        db = sqlite3.connect(f"file:{self.tmp / 'state' / 'state.db'}?mode=ro", uri=True, timeout=5)
        try:
            return {r[0]: r[1] or "" for r in db.execute("SELECT name, last_result FROM repo")}
        finally:
            db.close()

    def watch_heads(self):
        """A push must arrive within 2 intervals (+1 s), unless blocked, failing, or a fault was active."""
        self.latencies = []
        while not self.stop.is_set():
            now = time.monotonic()
            states = None
            for r in self.repos:
                with r.lock:
                    lp = r.last_push
                    if lp is None:
                        continue
                    sha, t = lp
                    if gitfix.head(r.path) == sha:
                        self.latencies.append(now - t)
                        r.last_push = None
                        continue
                    if now - t < 2 * r.every + 1:
                        continue
                    r.last_push = None
                if self.faults_until > t - 1:
                    continue
                states = states or self.states()
                st = states.get(r.name, "")
                if st.startswith(("blocked", "error", "reset")) or "(ahead" in st:
                    continue
                self.violations.append(f"{r.name}: push {sha[:7]} not synced within {2 * r.every + 1} s "
                                       f"(last result: {st or '?'})")
            self.stop.wait(0.1)

    def sample(self):
        pid = self.proc.pid
        while not self.stop.is_set():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                rss = int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1]) / 1024
                threads = int(next(ln for ln in status.splitlines() if ln.startswith("Threads")).split()[1])
                fds = len(os.listdir(f"/proc/{pid}/fd"))
                self.samples.append((time.monotonic(), rss, threads, fds))
            except (OSError, StopIteration):
                pass
            self.stop.wait(2)

    # ---- the end --------------------------------------------------------------------------
    def find_kept(self):
        lost = []
        for repo, kind, what in self.kept:
            if kind == "commit":
                refs = gitfix.git("for-each-ref", "--contains", what, cwd=repo.path, check=False)
                head_has = subprocess.run(["git", "merge-base", "--is-ancestor", what, "HEAD"], cwd=repo.path,
                                          capture_output=True).returncode == 0
                if not refs and not head_has:
                    lost.append(f"{repo.name}: local commit {what[:7]}")
                continue
            if _in_worktree(repo.path, what) or _in_saved(repo.path, what):
                continue
            lost.append(f"{repo.name}: {kind} {what}")
        return lost

    def run(self):
        t_start = time.monotonic()
        self.start()
        watchers = [threading.Thread(target=self.watch_heads, daemon=True),
                    threading.Thread(target=self.sample, daemon=True)]
        for w in watchers:
            w.start()
        end = time.monotonic() + self.args.seconds
        n = 0
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                self.violations.append(f"agent exited with {self.proc.returncode}")
                break
            self.act()
            n += 1
            time.sleep(self.rng.uniform(0, 2 / self.args.rate))
        self.forge.clear_faults()
        self.faults_until = time.monotonic()
        time.sleep(2 * 5 + 2)  # two of the longest intervals: the last pushes arrive
        self.stop.set()
        for w in watchers:
            w.join(5)
        lost = self.find_kept()
        self.violations += [f"LOST {x}" for x in lost]
        states = self.states()
        behind = []
        for r in self.repos:
            st = states.get(r.name, "")
            if not st.startswith(("blocked", "error")) and not r.deleted and gitfix.head(r.path) != r.pusher.head() \
                    and "(ahead" not in st:
                behind.append(f"{r.name} ({st})")
        if behind:
            self.violations.append(f"not at the remote head at the end: {', '.join(behind[:5])}")
        status = subprocess.run(agent_cmd() + ["status", "-c", str(self.tmp / "config.toml")], env=self.env,
                                cwd=self.tmp, capture_output=True, text=True, timeout=60)
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            rc = None
            os.killpg(self.proc.pid, signal.SIGKILL)
        if rc != 0:
            self.violations.append(f"agent exit status {rc} on SIGTERM")
        log = self.log_path.read_text(errors="replace")
        for where, text in (("log", log), ("status", status.stdout + status.stderr)):
            if TOKEN in text or SECRET in text:
                self.violations.append(f"a secret appears in the {where}")
        for p in (self.tmp / "state").rglob("*"):
            if p.is_file() and (TOKEN.encode() in p.read_bytes() or SECRET.encode() in p.read_bytes()):
                self.violations.append(f"a secret is stored in {p.name}")
        self.flat()
        results = {}
        for st in states.values():
            key = st.split(" ")[0].rstrip(":")
            results[key] = results.get(key, 0) + 1
        self.report(n, time.monotonic() - t_start, results, len(log.splitlines()))
        return 1 if self.violations else 0

    def flat(self):
        s = [x for x in self.samples if x[0] - self.samples[0][0] > 10] if self.samples else []
        if len(s) < 6:
            return
        q = len(s) // 4
        first, last = s[:q], s[-q:]
        for i, what, slack in ((1, "RSS MB", 15.0), (2, "threads", 3), (3, "open fds", 8)):
            a = statistics.median(x[i] for x in first)
            b = statistics.median(x[i] for x in last)
            if b - a > slack:
                self.violations.append(f"{what} grew from {a:.0f} to {b:.0f}")
        self.flat_figures = (statistics.median(x[1] for x in first), statistics.median(x[1] for x in last),
                             max(x[2] for x in s), max(x[3] for x in s))

    def report(self, actions, seconds, results, log_lines):
        lat = sorted(self.latencies)
        print(f"soak: {len(self.repos)} repos, {seconds:.0f} s, {actions} actions, seed {self.args.seed}")
        print("  actions: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())))
        print(f"  local work recorded and found again: {len(self.kept) - sum('LOST' in v for v in self.violations)}"
              f" of {len(self.kept)}")
        if lat:
            print(f"  push->synced: median {statistics.median(lat):.2f} s, p90 {lat[int(len(lat) * 0.9)]:.2f} s, "
                  f"max {lat[-1]:.2f} s over {len(lat)} pushes")
        if getattr(self, "flat_figures", None):
            a, b, th, fd = self.flat_figures
            print(f"  RSS {a:.0f} MB early, {b:.0f} MB late; threads max {th}; fds max {fd}")
        print(f"  final results: {results}; forge requests {self.forge.count()}; log lines {log_lines}")
        for v in self.violations[:20]:
            print(f"  VIOLATION {v}")
        print("FAIL" if self.violations else "ok: every invariant held")

    def cleanup(self):
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        except (AttributeError, ProcessLookupError):
            pass
        self.forge.stop()
        if not self.args.keep:
            subprocess.run(["rm", "-rf", str(self.tmp)])
        else:
            print(f"  kept {self.tmp}")


def _in_worktree(path, marker):
    r = subprocess.run(["grep", "-rqF", "--exclude-dir=.git", marker, str(path)], capture_output=True)
    return r.returncode == 0


def _in_saved(path, marker):
    """In a stash (its work tree or untracked-files commit), a commit under refs/sync-agent/, or a branch."""
    revs = gitfix.git("for-each-ref", "--format=%(objectname)", "refs/sync-agent/", "refs/heads/", cwd=path,
                      check=False).split()
    revs += gitfix.git("log", "-g", "--format=%H", "refs/stash", cwd=path, check=False).split()
    more = []
    for r in revs:
        more += [x for x in gitfix.git("rev-parse", "-q", "--verify", f"{r}^3", cwd=path, check=False).split() if x]
    revs += more
    if not revs:
        return False
    r = subprocess.run(["git", "grep", "-qF", marker, *revs], cwd=path, capture_output=True, env=gitfix.git_env())
    return r.returncode == 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--repos", type=int, default=100)
    ap.add_argument("--rate", type=float, default=4.0, help="actions per second, on average")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args(argv)
    s = Soak(args)
    try:
        return s.run()
    finally:
        s.cleanup()


if __name__ == "__main__":
    sys.exit(main())
