"""Every git process goes through `run_git`: LANG=C, no prompts, a timeout, token-free errors."""
from __future__ import annotations

import os
import subprocess
from typing import Optional

from .errors import GitError

LOCAL_TIMEOUT = 60.0  # seconds for commands that touch only the checkout
NETWORK_TIMEOUT = 600.0  # fetch and clone of a large repository on a slow line

# Identity for the commits the agent itself makes (stashes): the user may have none configured.
AGENT_IDENTITY = {
    "GIT_AUTHOR_NAME": "sync-agent",
    "GIT_AUTHOR_EMAIL": "sync-agent@localhost",
    "GIT_COMMITTER_NAME": "sync-agent",
    "GIT_COMMITTER_EMAIL": "sync-agent@localhost",
}


def _base_env() -> dict:
    """The environment for git: the caller's, with a fixed locale and prompts switched off."""
    env = dict(os.environ)
    # git's messages differ under another locale, and we read some of them.
    env.update({"LANG": "C", "LC_ALL": "C", "LANGUAGE": "C", "GIT_TERMINAL_PROMPT": "0"})
    # An SSH remote must fail rather than wait for a password or a host-key answer.
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    for k in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(k, None)
    return env


def run_git(args, cwd=None, timeout=LOCAL_TIMEOUT, env=None, check=True, secrets=(), input=None):
    """Run `git ARGS` (INPUT, if given, on its stdin); return the CompletedProcess (text).
    Raise GitError on failure or timeout."""
    full_env = _base_env()
    if env:
        full_env.update(env)
    cmd = ["git", *args]
    try:
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        p = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, errors="replace",
                           timeout=timeout, **stdin)
    except subprocess.TimeoutExpired:
        raise GitError(f"`{_show(args, secrets)}` timed out after {timeout:g} s") from None
    except OSError as e:
        raise GitError(f"cannot run git: {e.strerror}") from None
    if check and p.returncode != 0:
        raise GitError(f"`{_show(args, secrets)}` failed (exit {p.returncode}): {stderr_tail(p.stderr, secrets)}",
                       p.returncode, redact(p.stderr, secrets))
    return p


def _show(args, secrets) -> str:
    return redact("git " + " ".join(str(a) for a in args), secrets)


def stderr_tail(text: str, secrets=(), limit=300) -> str:
    lines = [ln.strip() for ln in redact(text, secrets).strip().splitlines()
             if ln.strip() and not ln.startswith("hint:")]
    # git's own verdict ("fatal: Unable to create '.../index.lock': File exists.") comes before
    # its advice ("Please make sure ..."): keep what leads up to the last verdict, not what follows.
    # The cause may sit on the line before ("ssh: Could not resolve hostname ...") or, after a
    # verdict ending in ':', on the line after ("...: errno=Connection refused").
    last = max((i for i, ln in enumerate(lines) if ln.startswith(("fatal:", "error:"))), default=None)
    if last is not None:
        end = last + 2 if lines[last].endswith(":") else last + 1
        lines = lines[:end]
    out = " | ".join(lines[-4:])
    return out[-limit:] if out else "(no message)"


def redact(text: str, secrets) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def auth_env(token: Optional[str], url_prefix: str, username: str = "x-access-token") -> dict:
    """Environment that hands git an Authorization header (Basic username:token) for URLs under `url_prefix` only.

    Through the environment (git 2.31+), never argv (visible in ps) nor .git/config.
    """
    if not token or not url_prefix:
        return {}
    import base64

    n = int(os.environ.get("GIT_CONFIG_COUNT", "0") or 0)
    basic = base64.b64encode(f"{username}:{token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": str(n + 1),
        f"GIT_CONFIG_KEY_{n}": f"http.{url_prefix}.extraHeader",
        f"GIT_CONFIG_VALUE_{n}": f"Authorization: Basic {basic}",
    }
