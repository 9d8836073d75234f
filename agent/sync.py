"""One check of one repo: read local and remote, decide (decide.py), act, report an Outcome."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Optional

from .checkout import Checkout, place_of, same_repository
from .decide import Action, Facts, Place, Relation, plan_sync
from .errors import AgentError, ForgeError
from .hooks import PendingHook, run_hook
from .model import BLOCKED, CLONED, ERROR, RESET, UP_TO_DATE, UPDATED, Outcome, short

log = logging.getLogger("sync_agent.sync")


@dataclass
class Memo:
    """What a repo's runner remembers between checks (in memory; etag and remote sha also on disk)."""

    etag: Optional[str] = None
    etag_branch: Optional[str] = None  # the branch the etag and remote sha belong to (None: the followed one)
    remote_sha: Optional[str] = None
    branch: Optional[str] = None  # the default branch, once asked
    clone_url: Optional[str] = None
    origin_checked: bool = False
    origin_url: Optional[str] = None
    git_id: Optional[tuple] = None  # (device, inode) of the .git we checked: a replaced checkout is new
    fetched: Optional[str] = None  # the remote sha we last fetched: its objects are here
    key: tuple = ()  # the repo settings this memo belongs to


def sync_repo(spec, source, memo: Memo, trigger: str, secrets=(), drop_env=(), via_fetch=False,
              pending: Optional[PendingHook] = None) -> Outcome:
    """Check one repo and bring its checkout in step; never raises for an expected failure.

    via_fetch: skip the API and let `git fetch` tell the remote head (a verified webhook delivery).
    pending: where to note a move whose hook has not run yet, so that it runs even after a crash.
    """
    t0 = time.monotonic()
    recovered = None
    try:
        if pending is not None:
            recovered = _interrupted_hook(spec, pending, secrets, drop_env)
        out = _sync(spec, source, memo, trigger, secrets, drop_env, via_fetch, pending)
    except (AgentError, OSError) as e:
        out = Outcome(ERROR, detail=_one_line(e))
    except Exception as e:  # noqa: BLE001 - a check must not kill its runner; say what broke
        log.debug("unexpected failure in a check of %s", spec.name, exc_info=True)
        out = Outcome(ERROR, detail=f"internal error: {type(e).__name__}: {_one_line(e)}")
    if pending is not None:
        try:
            pending.clear()  # the move did not happen, or its hook ran
        except OSError as e:
            log.warning("%s: cannot remove %s: %s", spec.name, pending.path, e.strerror)
    if recovered is not None and out.hook is None:
        out.hook = recovered
    out.seconds = time.monotonic() - t0
    if out.etag is None:
        out.etag = memo.etag
    return out


def _interrupted_hook(spec, pending, secrets, drop_env):
    """Run the hook of a move that an earlier run made but did not see through; None when there is none.

    A note that leads to nothing is left for sync_repo, which removes it after every check.
    """
    m = pending.read()
    if m is None:
        return None
    local = None
    if spec.on_change and place_of(spec.path) is Place.CHECKOUT:
        local, _ = Checkout(spec.path, secrets).read_head()
    # A clone (no old head) that is there, or the very commit the move was going to: the move happened.
    if local is None or (m.get("old") is not None and local != m.get("new")):
        return None
    shas, extra = f"{short(m.get('old'))}..{short(local)}", {"repo": spec.name, "trigger": m["trigger"]}
    if m.get("retried"):
        # Its second run was cut off too: a hook that stops the agent (or the machine) would
        # otherwise run at every start.
        log.warning("%s: the on_change hook for %s was cut off twice (the agent was stopped while it ran); "
                    "not running it again", spec.name, shas, extra=extra)
        return None
    log.warning("%s: the on_change hook for %s did not finish (the agent was stopped); running it now",
                spec.name, shas, extra=extra)
    branch = m.get("branch") or spec.branch or ""
    pending.mark(branch, m.get("old"), local, m["trigger"], retried=True)
    run = run_hook(spec, branch, m.get("old"), local, m["trigger"], secrets, drop_env)
    pending.clear()
    return run


def _sync(spec, source, memo, trigger, secrets, drop_env, via_fetch, pending=None) -> Outcome:
    co = Checkout(spec.path, secrets)
    place = place_of(spec.path)
    branch = spec.branch or memo.branch
    remote_error = None
    retry_at = None
    head = None
    if branch is None:
        try:
            facts = source.describe(spec)
            memo.branch, memo.clone_url = facts["default_branch"], facts["clone_url"]
            branch = memo.branch
        except ForgeError as e:
            return Outcome(ERROR, detail=str(e))
    if not via_fetch or place is Place.ABSENT:
        try:
            known = memo.etag_branch in (None, branch)  # a stored default branch may since have changed
            head = source.head(spec, branch, memo.etag if known else None, memo.remote_sha if known else None)
            memo.etag, memo.remote_sha, memo.etag_branch = head.etag, head.sha, branch
        except ForgeError as e:
            remote_error = str(e)
            retry_at = getattr(e, "until", None)
    local, on = (None, None)
    if place is Place.CHECKOUT:
        local, head_branch = co.read_head()
        on = head_branch == branch
    facts = Facts(place=place, mode=spec.mode, local=local, remote=head.sha if head else None,
                  remote_error=remote_error, on_branch=bool(on))
    plan = plan_sync(facts)
    if plan.action is not Action.NOTHING and place is Place.CHECKOUT and memo.origin_checked \
            and memo.git_id != _git_id(co):
        memo.origin_checked = False  # the checkout was replaced while we ran: look at it afresh
        memo.fetched = None
    if plan.action is not Action.NOTHING and place is Place.CHECKOUT and not memo.origin_checked:
        facts = replace(facts, place=_verify_origin(co, spec, source, memo, branch))
        plan = plan_sync(facts)
    remote_sha = facts.remote
    if plan.action in (Action.FETCH, Action.FAST_FORWARD, Action.RESET):
        cleared = co.clear_stale_locks()
        if cleared:
            log.warning("%s: removed stale git lock files left by an interrupted git: %s", spec.name,
                        ", ".join(cleared))
    while True:
        a = plan.action
        if pending is not None and spec.on_change and a in (Action.CLONE, Action.FAST_FORWARD, Action.RESET):
            pending.mark(branch, local, remote_sha, trigger)
        if a is Action.CLONE:
            url = _clone_url(spec, source, memo)
            sha = co.clone(url, branch, env=source.git_env(url))
            memo.origin_checked, memo.fetched, memo.origin_url = True, sha, url
            memo.git_id = _git_id(co)
            return _moved(spec, branch, Outcome(CLONED, None, sha, remote_sha or sha), trigger, secrets, drop_env)
        if a is Action.FAIL:
            extra = {"retry_at": retry_at} if retry_at else {}
            return Outcome(ERROR, local, local, remote_sha, detail=plan.reason, extra=extra)
        if a is Action.NOTHING:
            detail = ""
            if plan.reason == "ahead":
                detail = f"ahead {co.count_commits(facts.remote, facts.local)}"
            return Outcome(UP_TO_DATE, local, local, remote_sha, detail=detail)
        if a is Action.BLOCK:
            return Outcome(BLOCKED, local, local, remote_sha, detail=plan.reason)
        if a is Action.FETCH:
            fetched = _fetch(co, spec, source, memo, branch, remote_sha)
            if fetched is None:
                return Outcome(ERROR, local, local, None, detail=f"branch {branch!r} not found on the remote")
            remote_sha = fetched
            if via_fetch:
                memo.remote_sha = fetched
            rel = co.relation(local, fetched)
            dirty = co.is_dirty() if spec.mode == "reset" and rel is not Relation.EQUAL else False
            facts = replace(facts, remote=fetched, relation=rel, dirty=dirty)
            plan = plan_sync(facts)
            continue
        if a is Action.FAST_FORWARD:
            refusal = co.fast_forward(remote_sha)
            if refusal and spec.mode == "reset":
                # Only ignored files can be in the way here (the checkout was clean): reset mode
                # saves them in a named stash and goes on, as it does for any other local work.
                saved = co.save_and_reset(local, remote_sha, co.is_dirty())
                out = Outcome(RESET, local, remote_sha, remote_sha, detail=f"behind, {refusal}",
                              backup=saved or None)
                return _moved(spec, branch, out, trigger, secrets, drop_env)
            if refusal:
                return Outcome(BLOCKED, local, local, remote_sha, detail=refusal)
            return _moved(spec, branch, Outcome(UPDATED, local, remote_sha, remote_sha), trigger, secrets,
                          drop_env)
        if a is Action.RESET:
            saved = co.save_and_reset(local, remote_sha, facts.dirty)
            out = Outcome(RESET, local, remote_sha, remote_sha, detail=plan.reason, backup=saved or None)
            return _moved(spec, branch, out, trigger, secrets, drop_env)
        raise AssertionError(f"unhandled plan {plan}")


def _verify_origin(co, spec, source, memo, branch) -> Place:
    """CHECKOUT when the checkout's origin is this repository, else FOREIGN."""
    origin = co.origin_url()
    expected = spec.url or memo.clone_url or (spec.slug or "")
    if origin and expected and not same_repository(origin, expected):
        return Place.FOREIGN
    memo.origin_checked, memo.origin_url, memo.git_id = True, origin, _git_id(co)
    return Place.CHECKOUT


def _git_id(co):
    try:
        st = os.stat(co.git_dir())
        return st.st_dev, st.st_ino
    except OSError:
        return None


def _fetch(co, spec, source, memo, branch, remote_sha):
    if remote_sha is not None and memo.fetched == remote_sha:
        return remote_sha  # fetched before: the objects are here, no need to ask again
    where = spec.url or "origin"
    url = spec.url or memo.origin_url or ""
    sha = co.fetch(where, branch, env=source.git_env(url))
    memo.fetched = sha
    return sha


def _clone_url(spec, source, memo) -> str:
    if spec.url:
        return spec.url
    if not memo.clone_url:
        facts = source.describe(spec)
        memo.clone_url = facts["clone_url"]
        memo.branch = memo.branch or facts["default_branch"]
    return memo.clone_url


def _moved(spec, branch, out: Outcome, trigger, secrets, drop_env) -> Outcome:
    if spec.on_change:
        out.hook = run_hook(spec, branch, out.old_sha, out.new_sha, trigger, secrets, drop_env)
    return out


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__
