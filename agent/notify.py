"""Notifications through apprise: which events a check makes, the message, and sending in the background."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

from .git import run_git
from .model import BLOCKED, CLONED, ERROR, RESET, UPDATED, short
from .state import blocked_key

log = logging.getLogger("sync_agent.notify")
SEND_TIMEOUT = 30.0  # seconds one target may take
MAX_PENDING = 100  # messages waiting to be sent; more are dropped (and counted)


def unusable_urls(urls) -> list:
    """Indexes of URLs apprise does not know how to send to."""
    import apprise

    bad = []
    for i, u in enumerate(urls):
        if not apprise.Apprise().add(u):
            bad.append(i)
    return bad


@dataclass
class _Memory:
    """Per target and repo: was an error announced, and which blocked situation was last told.

    Rebuilt from the state store before each check, so one-shot `check` runs (from cron, say)
    announce an error once and its recovery once, like the daemon.
    """

    alerted: bool = False
    blocked_key: Optional[str] = None


def events_for(out, failures: int, threshold: int, memory: _Memory) -> list:
    """The events one check makes for one target, updating `memory` (alert once, recover once)."""
    events = []
    if out.result in (CLONED, UPDATED, RESET):
        events.append(out.result)
    if out.hook is not None and not out.hook.ok:
        events.append("hook_failed")
    if out.result == ERROR:
        if failures >= threshold and not memory.alerted:
            memory.alerted = True
            events.append("error")
    elif memory.alerted:
        memory.alerted = False
        events.append("recovered")
    if out.result == BLOCKED:
        key = blocked_key(out)
        if key != memory.blocked_key:
            memory.blocked_key = key
            events.append("blocked")
    elif out.result != ERROR:
        memory.blocked_key = None
    return events


# apprise's notify types: colours and icons in the chat services that show them
KIND = {"error": "failure", "blocked": "warning", "hook_failed": "warning", "recovered": "success",
        "updated": "success", "cloned": "success", "reset": "warning"}

ADVICE = {
    "blocked": "Nothing was changed. Commit, stash or discard the local work in the checkout, or set "
               "mode = \"reset\" to let the agent save it and follow the remote.",
    "diverged": "Nothing was changed. The branch was force-pushed or has local commits: reconcile by hand, "
                "or set mode = \"reset\" (local commits are kept under refs/sync-agent/backup/).",
    "error": "Nothing was changed. The agent keeps retrying with backoff; check the reason above "
             "(network, token, repository or branch name).",
    "hook_failed": "The checkout was updated, but the on_change command failed; see its output in "
                   "`sync-agent status`.",
}


def message(event, spec, branch, out, trigger, failures) -> tuple:
    """(title, body) for an event."""
    title = f"sync-agent: {spec.name} {event.replace('_', ' ')}"
    lines = [f"Repository: {spec.name} ({spec.slug or spec.url}), branch {branch or '(default)'}",
             f"Path: {spec.path}", f"Trigger: {trigger}"]
    if out.old_sha or out.new_sha:
        lines.append(f"Commits: {short(out.old_sha)}..{short(out.new_sha)}")
    if out.new_sha and event in ("updated", "cloned", "reset", "hook_failed"):
        subject = _subject(spec.path, out.new_sha)
        if subject:
            lines.append(f"Head: {subject}")
    if out.backup:
        lines.append(f"Local work saved: {out.backup}")
    if event in ("blocked", "error"):
        lines.append(f"Reason: {out.detail or out.result}")
        if event == "error":
            lines.append(f"Failures in a row: {failures}")
        lines.append(ADVICE["diverged" if "diverged" in (out.detail or "") else event])
    if event == "hook_failed" and out.hook is not None:
        lines.append(out.hook.describe())
        tail = out.hook.output_tail.strip().splitlines()[-5:]
        if tail:
            lines.append("Output: " + " | ".join(tail))
        lines.append(ADVICE["hook_failed"])
    if event == "recovered":
        lines.append(f"Back to normal: {out.summary()}")
    return title, "\n".join(lines)


def _subject(path, sha) -> str:
    try:
        p = run_git(["log", "-1", "--format=%s (%an)", sha], cwd=path, timeout=10, check=False)
        return p.stdout.strip()[:200]
    except Exception:  # noqa: BLE001 - a message without the subject is still a message
        return ""


class Notifier:
    """Sends in background threads, one per target (a hung service delays only its own messages);
    never delays or breaks a sync. Counts results for /metrics."""

    def __init__(self, targets, secrets=()):
        self.targets = list(targets)
        self.secrets = secrets
        self._lock = threading.Lock()
        self._pools = {t.index: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"notify{t.index}")
                       for t in self.targets}
        self._pending = 0
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def after_check(self, spec, branch, out, trigger, failures, before=None):
        """before: the repo's stored state as it was before this check (None: never checked)."""
        before = before or {}
        for t in self.targets:
            if t.repos is not None and spec.name not in t.repos:
                continue
            mem = _Memory(alerted=(before.get("failures_in_a_row") or 0) >= t.failures_before_alert,
                          blocked_key=before.get("blocked_key"))
            events = [e for e in events_for(out, failures, t.failures_before_alert, mem) if e in t.on]
            for e in events:
                self._enqueue(t, *message(e, spec, branch, out, trigger, failures), KIND.get(e, "info"))

    def _enqueue(self, target, title, body, kind="info"):
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.dropped += 1
                log.warning("%s: too many notifications waiting; one dropped", target.label)
                return
            self._pending += 1
        self._pools[target.index].submit(self._send_bounded, target, title, body, kind)

    def _send_bounded(self, target, title, body, kind):
        try:
            ok, why = send_now(target, title, body, kind=kind)
            with self._lock:
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1
            if not ok:
                log.warning("%s: notification not sent: %s", target.label, why)
        finally:
            with self._lock:
                self._pending -= 1

    def flush(self, timeout=SEND_TIMEOUT):
        """Wait (bounded) for queued notifications; for short-lived commands."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if self._pending == 0:
                    return
            time.sleep(0.05)

    def close(self):
        self.flush(5)
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


def send_now(target, title, body, timeout=SEND_TIMEOUT, kind="info") -> tuple:
    """Send to one target within `timeout`; (ok, reason). A hung service costs one stuck thread, not a sync."""
    result = {}

    def work():
        try:
            import apprise

            ap = apprise.Apprise()
            for u in target.urls:
                ap.add(u)
            result["ok"] = bool(ap.notify(title=title, body=body, notify_type=kind))
            if not result["ok"]:
                result["why"] = "the service refused it or could not be reached"
        except Exception as e:  # noqa: BLE001 - a notifier must never break the agent
            result["ok"], result["why"] = False, type(e).__name__

    th = threading.Thread(target=work, name="notify-send", daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        return False, f"no answer within {timeout:g} s"
    return result.get("ok", False), result.get("why", "")
