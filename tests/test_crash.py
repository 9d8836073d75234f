"""Crashes: the daemon SIGKILLed in the middle of a clone, a fetch, a hook and a reset; git lock files left
behind by a killed git; a damaged state database. After each, nothing is lost and the next check syncs."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import gitfix
from conftest import agent_config, repo_entry
from waiting import wait_until

BIG_FILES = 3000  # a clone, fetch or reset of these takes a few hundred ms: long enough to be caught in it
BACKUPS = "refs/sync-agent/backup/"


@pytest.fixture(autouse=True)
def generous_quota(forge):
    """Polling every second without a token would soon spend the 60 an hour of the fake forge."""
    forge.anon_limit = 100000


# ---- helpers ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_template(tmp_path_factory):
    """A bare repository with three stages, kept under refs/stage/: small (one commit), big1 (BIG_FILES
    random files on top) and big2 (every one of them rewritten). Built once; tests copy it."""
    root = tmp_path_factory.mktemp("bigtemplate")
    bare = gitfix.make_remote(root, "big", commits=1)
    pusher = gitfix.Pusher(bare, root / "push")
    small = pusher.head()
    names = [f"data/{i // 100:02d}/f{i:04d}.bin" for i in range(BIG_FILES)]
    big1 = pusher.commit({n: os.urandom(2048) for n in names}, message="big one")
    big2 = pusher.commit({n: os.urandom(2048) for n in names}, message="big two")
    for stage, sha in (("small", small), ("big1", big1), ("big2", big2)):
        gitfix.git("--git-dir", bare, "update-ref", f"refs/stage/{stage}", sha)
    gitfix.git("--git-dir", bare, "gc", "-q")
    return bare, {"small": small, "big1": big1, "big2": big2}


@pytest.fixture
def big(tmp_path, forge, big_template):
    """Factory: big(stage) -> (bare, stages) served as acme/big with main at that stage."""

    def make(stage):
        template, stages = big_template
        bare = tmp_path / "remotes" / "big.git"
        bare.parent.mkdir(exist_ok=True)
        shutil.copytree(template, bare)
        set_main(bare, stages[stage])
        forge.add_repo("acme/big", bare)
        return bare, stages

    return make


def set_main(bare, sha):
    gitfix.git("--git-dir", bare, "update-ref", "refs/heads/main", sha)


def advance(bare):
    """A new (empty) commit on main in the bare repository, as an upstream push would make; its sha."""
    tree = gitfix.git("--git-dir", bare, "rev-parse", "main^{tree}")
    sha = gitfix.git("--git-dir", bare, "commit-tree", tree, "-p", "main", "-m", "one more")
    set_main(bare, sha)
    return sha


def big_config(tmp_path, forge, write_config, path, **keys):
    entry = {"name": "demo", "github": "acme/big", "branch": "main", "path": str(path), "every": "1s", **keys}
    return write_config(agent_config(forge, tmp_path, [entry]))


def git_processes(verb, where):
    """pids of `git VERB ...` processes working in `where` (or below), from /proc."""
    where = os.path.realpath(where)
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if len(argv) > 1 and os.path.basename(argv[0]) == b"git" and argv[1] == verb.encode() \
                and (cwd == where or cwd.startswith(where + os.sep)):
            found.append((int(pid), [a.decode(errors="replace") for a in argv]))
    return found


def kill_during(d, verb, where, timeout=30, match=None):
    """SIGKILL the daemon's process group the moment a `git VERB` runs in `where`; the argv it caught."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _pid, argv in git_processes(verb, where):
            if match is None or match in argv:
                os.killpg(d.proc.pid, signal.SIGKILL)
                d.proc.wait()
                return argv
        if not d.alive():
            break
        time.sleep(0.002)
    raise AssertionError(f"no `git {verb}` seen in {where}; alive={d.alive()}\n{d.log()[-3000:]}")


def cloned(remote, tmp_path):
    """Repo `demo` on the forge and a clone of it at checkouts/demo: (remote, path)."""
    r = remote("demo")
    path = tmp_path / "checkouts" / "demo"
    path.parent.mkdir()
    gitfix.clone(r.bare, path)
    return r, path


def kill_with_hook(d, hook_pid):
    """SIGKILL the daemon, and the hook it runs: that has a session of its own and would outlive it."""
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    try:
        os.killpg(hook_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def fsck_clean(path):
    p = subprocess.run(["git", "fsck", "--no-dangling", "--no-progress"], cwd=path, capture_output=True,
                       text=True, env=gitfix.git_env())
    assert p.returncode == 0 and p.stdout.strip() == "", f"git fsck in {path}:\n{p.stdout}\n{p.stderr}"


def leftovers(path):
    return sorted(p.name for p in Path(path).parent.glob(f".{Path(path).name}.sync-agent-clone-*"))


def assert_recovers(daemon, cli, config, path, target):
    """After a crash: the state DB opens, a restarted daemon brings the checkout to `target` and leaves
    no clone leftovers, fsck is clean. Returns the restarted daemon (running)."""
    st = cli("status", "--json", "-c", config)
    assert st.returncode == 0, st.output
    assert [r["name"] for r in json.loads(st.output)["repos"]] == ["demo"]
    d2 = daemon(config)
    wait_until(lambda: gitfix.head(path) == target, 40, interval=0.1, what="the checkout at the remote head")
    d2.wait_log(r"demo \[schedule\] (cloned|updated|reset) ", 15)
    assert leftovers(path) == [], "the next clone removes what an interrupted one left"
    fsck_clean(path)
    assert gitfix.git("status", "--porcelain", cwd=path) == ""
    assert d2.alive() and "Traceback" not in d2.log()
    return d2


# ---- SIGKILL in the middle of a sync ------------------------------------------------------------------------
def test_kill_during_clone(tmp_path, forge, big, write_config, daemon, cli):
    """Killed while cloning: nothing half-made at the path; the restart clones it whole and tidies up."""
    bare, stages = big("big1")
    path = tmp_path / "checkouts" / "demo"
    config = big_config(tmp_path, forge, write_config, path)
    d = daemon(config)
    argv = kill_during(d, "clone", tmp_path / "checkouts")
    assert "--" in argv
    # absent (the half-made clone sits in a temp dir beside it), or, had git just finished, the whole clone
    if path.exists():
        assert gitfix.head(path) == stages["big1"]
        fsck_clean(path)
    else:
        assert leftovers(path), "the interrupted clone was caught in the middle"
    d2 = assert_recovers(daemon, cli, config, path, stages["big1"])
    assert len(list((path / "data").rglob("*.bin"))) == BIG_FILES
    new = advance(bare)
    wait_until(lambda: gitfix.head(path) == new, 15, interval=0.1, what="the next check")
    assert d2.stop() == 0


def test_kill_during_fetch(tmp_path, forge, big, write_config, daemon, cli):
    """Killed while fetching a large push: the checkout stays at the old commit, clean; the restart updates."""
    bare, stages = big("small")
    path = tmp_path / "checkouts" / "demo"
    path.parent.mkdir()
    gitfix.clone(bare, path)
    set_main(bare, stages["big1"])
    config = big_config(tmp_path, forge, write_config, path)
    d = daemon(config)
    kill_during(d, "fetch", path)
    assert gitfix.head(path) == stages["small"]
    assert gitfix.git("status", "--porcelain", cwd=path) == ""
    fsck_clean(path)
    d2 = assert_recovers(daemon, cli, config, path, stages["big1"])
    new = advance(bare)
    wait_until(lambda: gitfix.head(path) == new, 15, interval=0.1, what="the next check")
    assert d2.stop() == 0


def test_kill_during_slow_hook_then_the_hook_runs_again_after_restart(tmp_path, forge, remote, write_config,
                                                                       daemon, cli):
    """Killed while on_change sleeps: the checkout is at the new commit (the hook runs after the move) and
    clean. A deploy hook must not be lost: the restarted daemon runs it once more for the same move (same
    OLD, NEW and trigger) although the checkout has nothing left to do, then follows the next push."""
    r, path = cloned(remote, tmp_path)
    runs, marker = tmp_path / "runs.txt", tmp_path / "hook.pid"
    hook = (f'echo "$SYNC_AGENT_OLD_SHA $SYNC_AGENT_NEW_SHA $SYNC_AGENT_TRIGGER" >> "{runs}"; '
            f'if [ ! -e "{marker}" ]; then echo $$ > "{marker}"; sleep 30; fi')
    config = write_config(agent_config(forge, tmp_path, [repo_entry(r, path, every="1s", on_change=hook)]))
    old = gitfix.head(path)
    new = r.pusher.commit()
    d = daemon(config)
    hook_pid = int(wait_until(lambda: marker.exists() and marker.read_text().strip(), 20, interval=0.02,
                              what="the hook to start"))
    kill_with_hook(d, hook_pid)
    assert gitfix.head(path) == new  # the hook runs after the move
    fsck_clean(path)
    assert gitfix.git("status", "--porcelain", cwd=path) == ""
    assert runs.read_text().splitlines() == [f"{old} {new} schedule"]
    st = cli("status", "--json", "-c", config)
    assert st.returncode == 0, st.output

    d2 = daemon(config)
    wait_until(lambda: len(runs.read_text().splitlines()) >= 2, 20, interval=0.1, what="the hook run again")
    d2.wait_log(r"demo: the on_change hook for .* did not finish .*running it now", 10)
    newer = r.pusher.commit()
    wait_until(lambda: len(runs.read_text().splitlines()) >= 3, 20, interval=0.1, what="the next push's hook")
    time.sleep(2.5)  # a couple more checks: the recovered hook is not run again
    assert runs.read_text().splitlines() == [f"{old} {new} schedule", f"{old} {new} schedule",
                                             f"{new} {newer} schedule"]
    assert not list((tmp_path / "state").glob("hooks/*.pending")), "the marker is gone once the hook ran"
    fsck_clean(path)
    assert d2.alive() and "Traceback" not in d2.log()
    assert d2.stop() == 0


def test_hook_cut_off_twice_is_not_run_a_third_time(tmp_path, forge, remote, write_config, daemon):
    """A hook that takes the agent down with it (one that restarts the agent or the machine) must not
    run at every start: after its second run is cut off too, the next start says so and leaves it."""
    r, path = cloned(remote, tmp_path)
    runs = tmp_path / "runs.txt"
    hook = f'echo "$SYNC_AGENT_OLD_SHA $SYNC_AGENT_NEW_SHA $$" >> "{runs}"; sleep 30'
    config = write_config(agent_config(forge, tmp_path, [repo_entry(r, path, every="1s", on_change=hook)]))
    old, new = gitfix.head(path), r.pusher.commit()

    def runs_so_far():
        """(OLD NEW, pid) of each hook run."""
        return [ln.rsplit(" ", 1) for ln in runs.read_text().splitlines()] if runs.exists() else []

    for n in (1, 2):  # the first run, then the rerun after the restart: both killed mid-hook
        d = daemon(config)
        wait_until(lambda: len(runs_so_far()) >= n, 20, interval=0.02, what=f"hook run {n}")
        kill_with_hook(d, int(runs_so_far()[-1][1]))
    assert [shas for shas, _pid in runs_so_far()] == [f"{old} {new}"] * 2

    d3 = daemon(config)
    d3.wait_log(r"demo: the on_change hook for .* was cut off twice .*not running it again", 15)
    time.sleep(2.5)  # a couple of checks more
    assert len(runs_so_far()) == 2, "the hook is not run a third time"
    assert gitfix.head(path) == new
    assert not list((tmp_path / "state").glob("hooks/*.pending"))
    assert d3.alive() and "Traceback" not in d3.log()
    assert d3.stop() == 0


def test_kill_during_reset(tmp_path, forge, big, write_config, daemon, cli):
    """Killed in the middle of `git reset --hard` (reset mode, diverged and dirty): the checkout is at the
    old or the new commit, the local commit and the local edit stay reachable; the restart finishes the job."""
    bare, stages = big("big1")
    path = tmp_path / "checkouts" / "demo"
    path.parent.mkdir()
    gitfix.clone(bare, path)
    mine = gitfix.local_commit(path, "mine.txt")
    edited = gitfix.dirty_edit(path, "README.md")
    set_main(bare, stages["big2"])  # every file changes: the reset has work to do
    config = big_config(tmp_path, forge, write_config, path, mode="reset")
    d = daemon(config)
    kill_during(d, "reset", path, match=stages["big2"])
    assert gitfix.head(path) in (mine, stages["big2"])
    fsck_clean(path)
    backups = gitfix.git("for-each-ref", "--format=%(objectname)", BACKUPS, cwd=path).split()
    assert mine in backups, "the local commit was saved before the reset began"

    d2 = assert_recovers(daemon, cli, config, path, stages["big2"])
    refs = gitfix.git("for-each-ref", "--format=%(refname) %(objectname)", BACKUPS, cwd=path).splitlines()
    assert any(ln.endswith(mine) for ln in refs), refs
    saved = [gitfix.git("show", f"{ln.split()[0]}:README.md", cwd=path, check=False) for ln in refs
             if "-worktree" in ln]
    assert any(s.encode() + b"\n" == edited or s.encode() == edited for s in saved), "the local edit is kept"
    new = advance(bare)
    wait_until(lambda: gitfix.head(path) == new, 15, interval=0.1, what="the next check")
    assert d2.stop() == 0


# ---- git lock files ------------------------------------------------------------------------------------------
def test_stale_index_lock_is_removed_and_the_update_goes_through(sync_case):
    """A .git/index.lock that no process holds (git was killed) is removed, the log names it, the update runs."""
    case = sync_case()
    lock = case.path / ".git" / "index.lock"
    lock.write_bytes(b"")
    new = case.remote.pusher.commit()
    done = case.check()
    assert done.returncode == 0, done.output
    assert "demo: updated " in done.output and case.head() == new
    assert ".git/index.lock" in done.output and "stale" in done.output, done.output
    assert not lock.exists()
    fsck_clean(case.path)


def hold_lock_and_check(case):
    """Run a check while this process holds .git/index.lock open; (CompletedProcess, lock existed after)."""
    lock = case.path / ".git" / "index.lock"
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        done = case.check()
        kept = lock.exists()
    finally:
        os.close(fd)
    lock.unlink(missing_ok=True)
    return done, kept


def test_index_lock_held_by_a_live_process_is_left_alone(sync_case):
    """A .git/index.lock some process still has open is not removed: the check reports an error instead,
    the checkout does not move; once the holder is done, the next check updates."""
    case = sync_case()
    old = case.head()
    new = case.remote.pusher.commit()
    done, kept = hold_lock_and_check(case)
    assert kept, "a lock a live process holds is never removed"
    assert done.returncode == 1, done.output
    lines = [ln for ln in done.output.splitlines() if ln.startswith("demo: ")]
    assert len(lines) == 1 and lines[0].startswith("demo: error: "), done.output
    assert "Traceback" not in done.output and "removed stale" not in done.output
    assert case.head() == old and case.git("status", "--porcelain") == ""
    again = case.check()
    assert again.returncode == 0 and case.head() == new, again.output


def test_error_for_a_held_index_lock_names_the_lock_file(sync_case):
    """The one-line error for a lock held by another process says which file is in the way."""
    case = sync_case()
    case.remote.pusher.commit()
    done, _kept = hold_lock_and_check(case)
    line = next(ln for ln in done.output.splitlines() if ln.startswith("demo: "))
    assert "index.lock" in line, line


# ---- the state database ----------------------------------------------------------------------------------------
def test_damaged_state_db_is_named_and_moving_it_aside_recovers(tmp_path, forge, remote, write_config, daemon, cli):
    """state.db overwritten with random bytes: `status` and `run` exit non-zero with one line
    naming the file and saying to move it aside; after `mv`, `run` works again."""
    r = remote("demo")
    path = tmp_path / "checkouts" / "demo"
    config = write_config(agent_config(forge, tmp_path, [repo_entry(r, path, every="1s")]))
    d = daemon(config)
    wait_until(lambda: gitfix.head(path) == r.head(), 20, what="the first clone")
    assert d.stop() == 0
    db = tmp_path / "state" / "state.db"
    assert not db.with_name("state.db-wal").exists(), "a clean stop checkpoints the WAL into state.db"
    db.write_bytes(os.urandom(64 * 1024))
    for args in (("status",), ("status", "--json"), ("run",)):
        done = cli(*args, "-c", config, timeout=30)
        assert done.returncode not in (0, None), (args, done.output)
        out = done.output.strip().splitlines()
        assert len(out) == 1, (args, done.output)
        assert str(db) in out[0] and "move it aside" in out[0], out[0]
        assert "Traceback" not in done.output
    (tmp_path / "state" / "state.db").rename(tmp_path / "state" / "state.db.broken")
    d2 = daemon(config)
    new = r.pusher.commit()
    wait_until(lambda: gitfix.head(path) == new, 20, interval=0.1, what="the daemon syncing again")
    st = cli("status", "--json", "-c", config)
    assert st.returncode == 0 and json.loads(st.output)["repos"][0]["local_sha"] == new, st.output
    assert d2.alive() and "Traceback" not in d2.log()
    assert d2.stop() == 0
