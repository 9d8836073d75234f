"""on_change hooks (SPEC section 8): what they run with, and what happens when they fail or hang."""
import json
import os
import shlex
import sys

from observe import line
from waiting import wait_until

TOKEN = "ghp_HookMustNotSeeThis_5e4d3c2b1a"
RECORD_ENV = ("import json, os, sys; json.dump({'cwd': os.getcwd(), 'argv': sys.argv[1:], 'env': dict(os.environ)}, "
              "open(sys.argv[1], 'w'))")


def alive(pid):
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_array_hook_runs_in_the_checkout_with_the_sync_facts(sync_case, agent_env, tmp_path):
    """An array on_change runs as argv (no shell) in the checkout, with SYNC_AGENT_* set and no GITHUB_TOKEN."""
    out = tmp_path / "hook.json"
    literal = "$HOME; echo not-a-shell"
    case = sync_case(on_change=[sys.executable, "-c", RECORD_ENV, str(out), literal])
    old = case.head()
    new = case.remote.pusher.commit()
    done = case.check(env={**agent_env, "GITHUB_TOKEN": TOKEN})
    assert done.returncode == 0 and line(done).startswith("demo: updated "), done.output

    seen = json.loads(out.read_text())
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(case.path)
    assert seen["argv"] == [str(out), literal]
    env = seen["env"]
    assert {k: v for k, v in env.items() if k.startswith("SYNC_AGENT_")} == {
        "SYNC_AGENT_REPO": "demo", "SYNC_AGENT_BRANCH": "main", "SYNC_AGENT_PATH": str(case.path),
        "SYNC_AGENT_OLD_SHA": old, "SYNC_AGENT_NEW_SHA": new, "SYNC_AGENT_TRIGGER": "manual"}
    assert "GITHUB_TOKEN" not in env
    assert not any(TOKEN in v for v in env.values())

    out.unlink()
    again = case.check()
    assert again.returncode == 0 and line(again).startswith("demo: up-to-date")
    assert not out.exists(), "the hook runs only when the checkout moved"


def test_string_hook_runs_through_sh_after_a_clone(sync_case, tmp_path):
    """A string on_change runs with `sh -c` (pipes, variables) after a clone, with an empty old sha."""
    out = tmp_path / "hook.out"
    case = sync_case(checkout=False, on_change=f'printf "%s [%s] %s\\n" "$SYNC_AGENT_TRIGGER" '
                                               f'"$SYNC_AGENT_OLD_SHA" "$SYNC_AGENT_NEW_SHA" | tr a-z A-Z '
                                               f'> {shlex.quote(str(out))}')
    done = case.check()
    assert done.returncode == 0 and line(done).startswith("demo: cloned "), done.output
    assert out.read_text() == f"MANUAL [] {case.remote.head().upper()}\n"


def test_failing_hook_is_reported_and_does_not_stop_later_syncs(sync_case):
    """A hook exiting 3 shows in the check line and in `status`; the next push is still synced."""
    case = sync_case(on_change="echo hook says boom; exit 3")
    case.remote.pusher.commit()
    done = case.check()
    assert done.returncode == 0, done.output  # the checkout did move
    assert "on_change hook failed: exit status 3" in line(done)
    status = case.status()
    assert "exit status 3" in status.output, status.output

    new = case.remote.pusher.commit()
    again = case.check()
    assert line(again).startswith("demo: updated ") and case.head() == new


def test_hook_that_outlives_hook_timeout_is_killed(sync_case, tmp_path):
    """A hook running past hook_timeout is killed with its children, and `status` says so."""
    pidfile = tmp_path / "hook.pid"
    case = sync_case(on_change=f"sleep 120 & echo $! > {shlex.quote(str(pidfile))}; wait", hook_timeout=1)
    new = case.remote.pusher.commit()
    done = case.check(timeout=60)
    assert line(done).startswith("demo: updated ") and case.head() == new
    assert "killed after the hook_timeout of 1 s" in line(done)
    sleeper = int(pidfile.read_text())
    wait_until(lambda: not alive(sleeper), 10, what=f"the hook's child {sleeper} to be gone")
    assert "killed" in case.status().output
