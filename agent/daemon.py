"""The running agent: runners, scheduler, worker pool, state; nudge() and reload()."""
from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from apscheduler.schedulers.background import BackgroundScheduler

from .checkout import Checkout
from .forgehttp import stop_retrying
from .github import GitHubForge
from .gitsource import GitSource
from .hooks import PendingHook
from .locks import repo_lock
from .metrics import Metrics
from .webhook import WebhookApp
from .errors import AgentError, LockedError
from .model import ERROR, Outcome, short
from .schedule import RepoRunner, backoff_delay, checks_per_hour, make_trigger
from .state import State
from .sync import Memo, sync_repo

log = logging.getLogger("sync_agent")
LOCK_WAIT = 30.0  # a manual `check` and the daemon may meet on one repo: wait this long


def build_sources(config) -> dict:
    """One adapter per forge kind a repo may name (`gitea` only when its api_url is configured)."""
    from .gitea import GiteaForge
    from .gitee import GiteeForge
    from .gitlab import GitLabForge

    sources = {"github": GitHubForge(config.github), "gitee": GiteeForge(config.forges["gitee"]),
               "gitlab": GitLabForge(config.forges["gitlab"]), "git": GitSource()}
    if config.forges["gitea"].api_url:
        sources["gitea"] = GiteaForge(config.forges["gitea"])
    return sources


def make_notifier(config):
    if not config.notify:
        return None
    from .notify import Notifier

    return Notifier(config.notify, config.secrets())


def drop_env(config) -> tuple:
    """Environment variables that hold our secrets: hooks do not inherit them."""
    names = [f.token_env for f in config.forges.values()] + [config.github.token_env, "GITHUB_TOKEN"]
    if config.webhook:
        names.append(config.webhook.secret_env)
    names += [r.secret_env for r in config.repos]
    names += [t.urls_env for t in config.notify]
    return tuple(n for n in names if n)


class Checker:
    """Runs one check of one repo under its lock and records it; shared by `run` and `check`."""

    def __init__(self, config, state, sources, metrics=None, notifier=None):
        self.config = config
        self.state = state
        self.sources = sources
        self.metrics = metrics
        self.notifier = notifier
        self.memos = {}
        self._lock = threading.Lock()

    def memo(self, spec) -> Memo:
        with self._lock:
            m = self.memos.get(spec.name)
            if m is None or m.key != _memo_key(spec):
                row = self.state.repo(spec.name) or {}
                same = row.get("path") == spec.path and (spec.branch is None or row.get("branch") in (None, spec.branch))
                m = Memo(etag=row.get("etag") if same else None, remote_sha=row.get("remote_sha") if same else None,
                         etag_branch=row.get("branch") if same else None)
                m.key = _memo_key(spec)
                self.memos[spec.name] = m
            return m

    def check(self, spec, trigger, via_fetch=False, lock_wait=LOCK_WAIT) -> Outcome:
        cfg = self.config
        memo = self.memo(spec)
        t0 = time.monotonic()
        try:
            lock = repo_lock(cfg.agent.state_dir, spec.name).acquire(wait=lock_wait)
        except LockedError as e:
            return Outcome(ERROR, detail=f"{e}; try again later", seconds=time.monotonic() - t0)
        try:
            out = sync_repo(spec, self.sources[spec.source], memo, trigger, secrets=cfg.secrets(),
                            drop_env=drop_env(cfg), via_fetch=via_fetch,
                            pending=PendingHook(cfg.agent.state_dir, spec.name))
        finally:
            lock.release()
        return out

    def record(self, spec, out, trigger, next_run=None):
        branch = spec.branch or self.memo(spec).branch
        before = self.state.repo(spec.name) if self.notifier is not None else None
        fails = self.state.record(spec, branch, out, trigger, time.time())
        if self.metrics is not None:
            self.metrics.observe_check(spec, out, trigger)
        if self.notifier is not None:
            self.notifier.after_check(spec, branch, out, trigger, fails, before)
        if next_run is not None:
            self.state.set_next_run(spec.name, next_run)
        _log_check(spec, out, trigger, fails)
        return fails


def _memo_key(spec):
    return (spec.source, spec.slug, spec.url, spec.branch, spec.path)


def _log_check(spec, out, trigger, fails):
    extra = {"repo": spec.name, "trigger": trigger, "result": out.result, "old": out.old_sha, "new": out.new_sha,
             "seconds": round(out.seconds, 3)}
    shas = f"{short(out.old_sha)}..{short(out.new_sha)}"
    msg = f"{spec.name} [{trigger}] {out.summary()} ({shas}, {out.seconds * 1000:.0f} ms)"
    if out.result == ERROR:
        msg += f"; failures in a row: {fails}"
        level = logging.WARNING
    elif out.moved or out.result == "blocked":
        level = logging.INFO
    else:
        level = logging.DEBUG if trigger == "schedule" else logging.INFO
    log.log(level, msg, extra=extra)
    if out.hook is not None and not out.hook.ok:
        tail = " | ".join(out.hook.output_tail.strip().splitlines()[-3:])
        log.warning("%s: %s%s", spec.name, out.hook.describe(), f"; output: {tail}" if tail else "",
                    extra={"repo": spec.name, "trigger": trigger, "result": "hook_failed"})


class Agent:
    """The daemon's moving parts. start(), nudge(name), reload(config), stop()."""

    def __init__(self, config):
        self.config = config
        self.state = State(config.agent.state_dir)
        self.notifier = make_notifier(config)
        self.metrics = Metrics(lambda: self.checker.sources, lambda: self.checker.notifier)
        self.checker = Checker(config, self.state, build_sources(config), self.metrics, self.notifier)
        self.pool = ThreadPoolExecutor(max_workers=config.agent.workers, thread_name_prefix="check")
        self.scheduler = BackgroundScheduler(
            timezone=config.agent.timezone or _local_tz(),
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self.runners = {}
        self.webhook_app = self._make_app()
        self.started = False
        self._stopping = False

    # ---- life cycle -----------------------------------------------------------------------
    def start(self):
        warn_quota(self.config)
        self.scheduler.start()
        for spec in self.config.repos:
            self._add(spec)
        self.started = True
        for spec in self.config.repos:
            self.runners[spec.name].request("schedule")  # a first check at start

    def stop(self):
        """Stop scheduling, finish the checks that run, drop the ones that wait."""
        self._stopping = True
        stop_retrying()
        try:
            self.scheduler.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - not running
            pass
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.checker.notifier is not None:
            self.checker.notifier.close()
        self.state.close()

    def healthy(self) -> bool:
        return self.started and not self._stopping and self.scheduler.running

    # ---- requests -------------------------------------------------------------------------
    def nudge(self, name: str, trigger: str = "webhook", via_fetch: bool = True, expect: str = None) -> bool:
        """Check `name` now; if a check of it runs, exactly one more after it. False: no such repo.

        expect: the new head a verified delivery announced (a check is skipped when already there).
        """
        runner = self.runners.get(name)
        if runner is None:
            return False
        runner.request(trigger, via_fetch, expect)
        return True

    def _make_app(self):
        """The delivery handler shared by the listener and the relays (one replay memory)."""
        wh = self.config.webhook
        return WebhookApp(wh.secret if wh else None, lambda: self.config.repos, self.branch_of,
                          lambda name, trigger, after=None: self.nudge(name, trigger, True, after),
                          insecure=bool(wh and wh.insecure_no_secret))

    def branch_of(self, spec):
        """The branch a repo follows: configured, or the default branch once learnt."""
        return spec.branch or self.checker.memo(spec).branch

    def reload(self, config):
        """Apply a new, already validated config: repos added, removed or changed."""
        old = self.config
        if config.agent.state_dir != old.agent.state_dir or config.agent.workers != old.agent.workers:
            log.warning("reload: state_dir and workers changes take effect at the next restart")
        self.config = config
        self.checker.config = config
        if config.webhook != old.webhook:
            self.webhook_app = self._make_app()
        if config.forges != old.forges or config.github != old.github:
            self.checker.sources = build_sources(config)
        if config.notify != old.notify:
            if self.checker.notifier is not None:
                self.checker.notifier.close()
            self.checker.notifier = make_notifier(config)
        new = {s.name: s for s in config.repos}
        for name in list(self.runners):
            if name not in new:
                self._remove(name)
        for spec in config.repos:
            before = old.repo(spec.name)
            if before is None:
                self._add(spec)
                self.runners[spec.name].request("schedule")
            elif before != spec:
                self._remove(spec.name)
                self._add(spec)
                self.runners[spec.name].request("schedule")
        log.info("reloaded %s: %d repos", config.path, len(config.repos))

    # ---- inside ---------------------------------------------------------------------------
    def _add(self, spec):
        self.state.ensure_repo(spec)
        runner = RepoRunner(spec.name, self._submit,
                            lambda trigger, via, expect, n=spec.name: self._check(n, trigger, via, expect))
        self.runners[spec.name] = runner
        self.scheduler.add_job(runner.request, make_trigger(spec, self.scheduler.timezone), args=("schedule",),
                               id=spec.name, name=spec.name, replace_existing=True)

    def _remove(self, name):
        self.runners.pop(name, None)
        try:
            self.scheduler.remove_job(name)
        except Exception:  # noqa: BLE001 - JobLookupError: already gone
            pass

    def _submit(self, fn):
        if not self._stopping:
            try:
                self.pool.submit(fn)
            except RuntimeError:  # shutting down
                pass

    def _check(self, name, trigger, via_fetch, expect=None):
        spec = self.config.repo(name)
        if spec is None or self._stopping:
            return
        if expect and Checkout(spec.path).read_head()[0] == expect and self.checker.memo(spec).origin_checked:
            # A signed delivery names the head we already have (a redelivery, a flood): the check
            # would find the checkout up to date; no fetch, no history row.
            log.debug("%s: %s nudge for %s skipped: the checkout is already there", name, trigger, short(expect))
            return
        out = self.checker.check(spec, trigger, via_fetch)
        try:
            failures = (self.state.repo(name) or {}).get("failures_in_a_row", 0) + 1 if out.result == ERROR else 0
            next_run = self._reschedule(spec, out, failures)
            self.checker.record(spec, out, trigger, next_run)
        except AgentError as e:  # the state store failed: say so, keep syncing
            log.error("%s [%s] %s; not recorded: %s", name, trigger, out.summary(), e)

    def _reschedule(self, spec, out, failures):
        """Back off a failing repo (or wait out a rate limit); return the next run (epoch) or None."""
        job = self.scheduler.get_job(spec.name)
        if job is None:
            return None
        now = datetime.now(timezone.utc)
        planned = job.next_run_time
        want = None
        if out.result == ERROR:
            until = out.extra.get("retry_at")
            if until:
                want = datetime.fromtimestamp(until, timezone.utc) + timedelta(seconds=random.uniform(0, 2))
            else:
                want = now + timedelta(seconds=backoff_delay(failures, self.config.agent.max_backoff))
        if want is not None and (planned is None or want > planned):
            try:
                job = job.modify(next_run_time=want)
            except Exception:  # noqa: BLE001 - removed by a reload meanwhile
                return None
            planned = want
        return planned.timestamp() if planned else None


def warn_quota(config):
    """Warn when the schedules would ask GitHub more often than its hourly quota allows."""
    gh = [s for s in config.repos if s.source == "github"]
    if not gh:
        return
    tz = config.agent.timezone or _local_tz()
    per_hour = sum(checks_per_hour(s, tz) for s in gh)
    token = bool(config.github.token)
    quota = 5000 if token else 60
    log.info("GitHub API %s; %d repos, about %.0f checks an hour (quota %d an hour)", config.github.token_note,
             len(gh), per_hour, quota)
    if per_hour > quota:
        if token:
            log.warning("the schedules ask GitHub about %.0f times an hour, over the quota of %d: unchanged "
                        "polls (304) are free with a token, but every change and every restart counts; "
                        "poll less often or use webhooks", per_hour, quota)
        else:
            log.warning("the schedules ask GitHub about %.0f times an hour, over the quota of %d for requests "
                        "without a token: set a token (token_env) for 5000 an hour, or poll less often",
                        per_hour, quota)


def _local_tz():
    import tzlocal

    try:
        return tzlocal.get_localzone()
    except Exception:  # noqa: BLE001 - odd /etc/localtime
        return timezone.utc
