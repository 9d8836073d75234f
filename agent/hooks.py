"""Run a repo's on_change command after the checkout moved (SPEC section 8)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Optional

from .git import redact
from .model import HookRun

TAIL = 2000  # characters of output kept


def run_hook(spec, branch, old_sha, new_sha, trigger, secrets=(), drop_env=()) -> HookRun:
    """Run on_change in the checkout: argv (no shell) for an array, `sh -c` for a string.

    Nothing from a webhook reaches the command but the trigger word; the agent's own secrets are
    taken out of its environment.
    """
    env = {k: v for k, v in os.environ.items() if k not in drop_env and not k.startswith("SYNC_AGENT_")}
    env.update({
        "SYNC_AGENT_REPO": spec.name, "SYNC_AGENT_BRANCH": branch, "SYNC_AGENT_PATH": spec.path,
        "SYNC_AGENT_OLD_SHA": old_sha or "", "SYNC_AGENT_NEW_SHA": new_sha or "", "SYNC_AGENT_TRIGGER": trigger,
    })
    argv = list(spec.on_change) if isinstance(spec.on_change, tuple) else ["sh", "-c", spec.on_change]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=spec.path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        return HookRun(None, time.monotonic() - t0, "", error=f"cannot start {argv[0]!r}: {e.strerror}")
    try:
        out, _ = proc.communicate(timeout=spec.hook_timeout)
        error = None
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipe
            out = b""
        error = f"killed after the hook_timeout of {spec.hook_timeout:g} s"
    text = redact(out.decode("utf-8", "replace"), secrets)[-TAIL:]
    return HookRun(proc.returncode if error is None else None, time.monotonic() - t0, text, error)


def _kill_group(proc):
    """TERM the hook's whole process group, then KILL what is left after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class PendingHook:
    """A file under state_dir saying: this checkout is moving, or has moved, and on_change has not
    finished yet. Written before the move and removed after the check, so a daemon killed in
    between (power cut, SIGKILL, OOM) still runs the hook once it is back.

    `retried` marks a hook that is being run again after such a stop: if that run is cut off too
    (a hook that restarts the machine or the agent itself), it is not run a third time.
    """

    def __init__(self, state_dir: str, name: str):
        # name is validated at config load (no '/', no leading '.'), so this stays inside state_dir
        self.path = os.path.join(state_dir, "hooks", f"{name}.pending")

    def mark(self, branch, old_sha, new_sha, trigger, retried=False):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"branch": branch, "old": old_sha, "new": new_sha, "trigger": trigger, "retried": retried}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def read(self) -> Optional[dict]:
        try:
            with open(self.path) as f:
                m = json.load(f)
            return m if isinstance(m, dict) and isinstance(m.get("trigger"), str) else None
        except (OSError, ValueError):  # none (the usual case), unreadable or half-written: nothing to go on
            return None

    def clear(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
