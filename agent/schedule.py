"""When checks run: APScheduler triggers, backoff, and a per-repo runner that coalesces requests."""
from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta, timezone

from apscheduler.triggers.interval import IntervalTrigger

from .cron import parse_cron

JITTER = 0.10  # an interval of 5m runs every 4m30s to 5m30s
BACKOFF_FIRST = 2.0  # seconds before the first retry of a failing repo


def make_trigger(spec, tz, now=None):
    """The APScheduler trigger for a repo: its cron schedule, or its interval jittered by ±10%."""
    if spec.schedule:
        return parse_cron(spec.schedule, tz)
    now = now or datetime.now(timezone.utc)
    low = spec.every * (1 - JITTER)
    # APScheduler adds uniform(0, jitter) to each period: [0.9, 1.1] x every, a mean of `every`.
    return IntervalTrigger(seconds=low, jitter=spec.every * 2 * JITTER, start_date=now + timedelta(seconds=low),
                           timezone=tz)


def next_runs(trigger, count=1, now=None):
    now = now or datetime.now(timezone.utc)
    out, prev = [], None
    for _ in range(count):
        t = trigger.get_next_fire_time(prev, now if prev is None else prev)
        if t is None:
            break
        out.append(t)
        prev = t
        now = t + timedelta(microseconds=1)
    return out


def backoff_delay(failures: int, max_backoff: float, rng=random.random) -> float:
    """Seconds before the next try after `failures` errors in a row: doubling, jittered, capped."""
    if failures <= 0:
        return 0.0
    base = BACKOFF_FIRST * 2 ** min(failures - 1, 30)
    return min(max_backoff, base) * (0.8 + 0.2 * rng())  # jitter: failing repos spread out


def checks_per_hour(spec, tz) -> float:
    """How often a repo's schedule fires, averaged over the next day."""
    if spec.every:
        return 3600.0 / spec.every
    now = datetime.now(timezone.utc)
    end = now + timedelta(days=1)
    trig = parse_cron(spec.schedule, tz)
    n, prev = 0, None
    t = trig.get_next_fire_time(None, now)
    while t is not None and t < end and n < 100000:
        n += 1
        prev = t
        t = trig.get_next_fire_time(prev, prev + timedelta(microseconds=1))
    return n / 24.0


class RepoRunner:
    """Runs the checks of one repo, one at a time.

    A request while a check waits joins it; a request while one runs makes exactly one more run
    after it (APScheduler would drop it, FIELD-NOTES). `run_check(trigger, via_fetch)` does the work.
    """

    def __init__(self, name, submit, run_check):
        self.name = name
        self._submit = submit
        self._run_check = run_check
        self._lock = threading.Lock()
        self._queued = None  # (trigger, via_fetch) of the waiting run
        self._running = False
        self._again = None

    def request(self, trigger: str, via_fetch: bool = False, expect: str = None) -> str:
        """Ask for a check; returns 'queued' or 'coalesced'.

        expect: the head a verified delivery announced; the check may be skipped when the checkout
        is already there.
        """
        job = (trigger, via_fetch, expect)
        with self._lock:
            if self._queued is not None:
                self._queued = _merge(self._queued, job)
                return "coalesced"
            if self._running:
                if trigger == "schedule":
                    # The schedule fires again anyway; running once more straight away would
                    # also skip the backoff a failing check is about to set.
                    return "coalesced"
                self._again = _merge(self._again, job)
                return "coalesced"
            self._queued = job
        self._submit(self._work)
        return "queued"

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._running or self._queued is not None

    def _work(self):
        with self._lock:
            job, self._queued = self._queued, None
            self._running = True
        try:
            if job is not None:
                self._run_check(*job)
        finally:
            with self._lock:
                self._running = False
                again, self._again = self._again, None
                if again is not None:
                    self._queued = again
            if again is not None:
                self._submit(self._work)


def _merge(old, new):
    """Two requests, one run: the first trigger names it; it asks the API unless both came verified,
    and may be skipped only if both announced a head (the newer one counts)."""
    if old is None:
        return new
    verified = old[1] and new[1]
    return (old[0], verified, new[2] if verified and old[2] and new[2] else None)
