"""What every forge's REST adapter shares: retry policy, rate-limit reading, and a small `requests` base.

The pure parts (rate_figures, rate_pause and the text helpers) serve github.py too; RestForge is the
base of the plain-REST forges (Gitee, GitLab, Gitea), which differ only in routes, auth and field names.
"""
from __future__ import annotations

import email.utils
import json
import logging
import re
import threading
import time
from typing import Mapping, NamedTuple, Optional

import requests
from tenacity import retry, retry_if_exception, stop_after_attempt, stop_before_delay, wait_exponential_jitter

from .errors import (AuthError, BadAnswerError, ForgeError, ForgeUnavailableError, NotFoundError,
                     RateLimitedError)
from .model import RemoteHead

HTTP_TIMEOUT = 15  # seconds for one API request; a hung call must never stall the schedule
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
SECONDARY_WAIT = 60.0  # when a forge says "rate limit" but names no time
USER_AGENT = "sync-agent"
# A reset below this is a number of seconds (IETF RateLimit draft), above it an epoch (GitHub, GitLab).
_EPOCH_FLOOR = 1_000_000_000

log = logging.getLogger("sync_agent.forge")

# Set when the agent shuts down: a retry that waits gives up at once, so SIGTERM is not held up
# by a forge outage.
_shutting_down = threading.Event()


def stop_retrying():
    """Make every waiting and future retry give up (the agent is stopping)."""
    _shutting_down.set()


def _sleep(seconds):
    if _shutting_down.wait(seconds):
        raise ForgeUnavailableError("the agent is stopping: not retrying")


# Transient failures are retried inside one check, briefly; longer outages are the scheduler's
# backoff's business (a check must not sit on a worker for minutes).
def _worth_retrying(e: BaseException) -> bool:
    # A forge that let a request time out is not asked again within the same check: the check
    # would hold a worker for several timeouts. The next scheduled check asks again.
    return isinstance(e, ForgeUnavailableError) and not e.timed_out


retry_transient = retry(retry=retry_if_exception(_worth_retrying),
                        wait=wait_exponential_jitter(multiplier=0.5, max=8, jitter=0.5),
                        stop=stop_after_attempt(4) | stop_before_delay(20), reraise=True, sleep=_sleep)


# ---- pure: rate-limit headers -------------------------------------------------------------------------------
class RateFigures(NamedTuple):
    limit: Optional[int]
    remaining: Optional[int]
    reset: Optional[int]  # as sent: epoch seconds, or seconds from now when small


def rate_figures(headers: Mapping) -> RateFigures:
    """The quota a response announces, from X-RateLimit-* (GitHub, Gitee) or RateLimit-* (GitLab)."""
    h = _lower(headers)

    def pick(name):
        v = to_int(h.get(f"x-ratelimit-{name}"))
        return v if v is not None else to_int(h.get(f"ratelimit-{name}"))

    return RateFigures(pick("limit"), pick("remaining"), pick("reset"))


def rate_pause(status: int, headers: Mapping, body: Optional[str], now: float) -> Optional[float]:
    """Until when (epoch) to send this forge nothing more, judging by one answer; None: no pause.

    A refusal (403/429) waits for Retry-After, else the quota reset when none is left, else a
    minute when it says it is a rate limit. A success that spent the last request waits for the reset.
    """
    h = _lower(headers)
    figures = rate_figures(h)
    reset_at = None
    if figures.reset:
        reset_at = float(figures.reset) if figures.reset >= _EPOCH_FLOOR else now + figures.reset
    until = None
    if status in (403, 429):
        retry_after = _retry_after(h.get("retry-after"), now)
        if retry_after is not None:
            until = retry_after
        elif figures.remaining == 0 and reset_at:
            until = reset_at
        elif status == 429 or "rate limit" in (body or "").lower():
            until = now + SECONDARY_WAIT
    elif status < 300 and figures.remaining == 0 and reset_at:
        until = reset_at  # the next request would be refused
    if until is None:
        return None
    return max(until, now + 1.0)


def _retry_after(value, now) -> Optional[float]:
    """Retry-After as an epoch: delta seconds or an HTTP date."""
    if value is None:
        return None
    seconds = to_int(value)
    if seconds is not None:
        return now + seconds
    try:
        return email.utils.parsedate_to_datetime(str(value)).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _lower(headers: Mapping) -> dict:
    return {str(k).lower(): v for k, v in (headers or {}).items()}


# ---- pure: text for messages ----------------------------------------------------------------------------------
def api_message(body: Optional[str]) -> str:
    """The `message` of a JSON error body (GitHub, Gitee, GitLab and Gitea all use that key), cut short."""
    try:
        return " ".join(str(json.loads(body).get("message", "")).split())[:120]
    except (ValueError, AttributeError, TypeError):
        return ""


def snippet(text) -> str:
    """A short quoted excerpt of an answer we could not read."""
    text = " ".join(str(text).split())
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def net_reason(e: Exception) -> str:
    """The OS reason of a network failure ("Connection refused"), never the URL (it may carry a token)."""
    text = str(e)
    # urllib3 wraps the OS error in a repr, so the reason ends at a quote of either kind.
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if m:
        return m.group(1)
    return type(e).__name__


def to_int(v) -> Optional[int]:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def hms(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


# ---- what every forge adapter keeps: counters and the rate-limit pause ------------------------------------------
class QuotaKeeper:
    """A forge's answer counters (for /metrics) and its rate-limit pause, shared by all its checks.

    The adapter sets `title` (its name in messages), `api` (its base URL) and `clock`.
    """

    title = ""

    def _init_quota(self):
        self._lock = threading.Lock()
        self.paused_until = 0.0
        self.rate_limit: Optional[int] = None
        self.rate_remaining: Optional[int] = None
        self.rate_reset: Optional[int] = None
        self.responses: dict = {}  # status code (or "error") -> count

    def _wait_if_paused(self):
        """Raise RateLimitedError, without asking, while the forge told us to wait."""
        if self.clock() < self.paused_until:
            raise RateLimitedError(f"{self.title} rate limit: waiting until {hms(self.paused_until)}",
                                   self.paused_until)

    def _count(self, key):
        with self._lock:
            self.responses[key] = self.responses.get(key, 0) + 1

    def _note_rate(self, status, hdrs, body):
        """Keep the quota figures; on a rate-limit answer, pause this forge until the named time."""
        now = self.clock()
        figures = rate_figures(hdrs)
        with self._lock:
            if figures.remaining is not None:
                self.rate_limit, self.rate_remaining, self.rate_reset = figures
        until = rate_pause(status, hdrs, body if isinstance(body, str) else "", now)
        if until is None:
            return
        with self._lock:
            self.paused_until = max(self.paused_until, until)
        log.warning("%s rate limit reached: no requests to %s until %s", self.title, self.api, hms(until))
        if status in (403, 429):
            raise RateLimitedError(f"{self.title} rate limit: waiting until {hms(until)}", until)


# ---- the base of the plain-REST forges -------------------------------------------------------------------------
class RestForge(QuotaKeeper):
    """A forge's REST API on `requests`: conditional head requests, retries, rate-limit pauses, metrics.

    Subclasses name the routes (branch_url, repo_url), the credentials (auth_headers, auth_params)
    and where the answer keeps the sha and the repository facts (sha_of, facts_of).
    """

    kind = ""
    title = ""  # the forge's name in messages

    def __init__(self, settings, timeout=HTTP_TIMEOUT, clock=time.time):
        if not settings.api_url:
            raise ValueError(f"{self.kind}: api_url is required")
        self.settings = settings
        self.api = settings.api_url.rstrip("/")
        self.token = settings.token
        self.timeout = timeout
        self.clock = clock
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self._init_quota()

    # ---- what a subclass supplies -------------------------------------------------------------------------
    def branch_url(self, slug: str, branch: str) -> str:
        raise NotImplementedError

    def repo_url(self, slug: str) -> str:
        raise NotImplementedError

    def auth_headers(self) -> dict:
        return {}

    def auth_params(self) -> dict:
        return {}

    def sha_of(self, data) -> str:
        """The commit sha in a branch answer."""
        raise NotImplementedError

    def facts_of(self, data) -> dict:
        """default_branch and clone_url from a repository answer."""
        raise NotImplementedError

    # ---- the interface the sync uses ----------------------------------------------------------------------
    def head(self, spec, branch: str, etag: Optional[str] = None, known_sha: Optional[str] = None) -> RemoteHead:
        """The head of `branch`; with `etag` and `known_sha`, an unchanged branch costs a 304."""
        headers = {"Accept": "application/json"}
        if etag and known_sha:
            headers["If-None-Match"] = etag
        status, hdrs, body = self._get(self.branch_url(spec.slug, branch), headers)
        if status == 304:
            if not known_sha:
                raise BadAnswerError(f"{self.title} API answered 304 Not Modified to a request that was not "
                                     f"conditional")
            return RemoteHead(known_sha, etag, changed=False)
        if status == 404:
            raise self._missing(spec.slug, branch)
        self._raise_for(status, body, spec.slug)
        try:
            sha = self.sha_of(json.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BadAnswerError(f"{self.title} answered the head of {spec.slug}:{branch} with something that "
                                 f"is not readable JSON ({snippet(body)})") from None
        if not isinstance(sha, str) or not SHA_RE.match(sha):
            raise BadAnswerError(f"{self.title} answered the head of {spec.slug}:{branch} with something that "
                                 f"is not a commit sha ({snippet(sha)})")
        return RemoteHead(sha, hdrs.get("etag"), changed=sha != known_sha)

    def describe(self, spec) -> dict:
        """default_branch and clone_url of the repository (one request)."""
        status, _, body = self._get(self.repo_url(spec.slug), {"Accept": "application/json"})
        if status == 404:
            raise self._repo_missing(spec.slug)
        self._raise_for(status, body, spec.slug)
        try:
            facts = self.facts_of(json.loads(body))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BadAnswerError(f"{self.title}'s description of {spec.slug} is not readable JSON "
                                 f"({snippet(body)})") from None
        if not facts.get("default_branch"):
            raise NotFoundError(f"repository {spec.slug} on {self.title} has no default branch (empty?); "
                                f"set `branch`")
        if not facts.get("clone_url"):
            raise BadAnswerError(f"{self.title}'s description of {spec.slug} names no clone URL; set `url`")
        return {"default_branch": str(facts["default_branch"]), "clone_url": str(facts["clone_url"])}

    def git_env(self, url: str) -> dict:
        return {}

    # ---- failures ----------------------------------------------------------------------------------------
    def _missing(self, slug, branch) -> ForgeError:
        """A 404 for a branch: ask for the repository to say which of the two is missing."""
        try:
            status, _, _ = self._get(self.repo_url(slug), {"Accept": "application/json"})
        except ForgeError:
            status = None
        if status is not None and 200 <= status < 300:
            return NotFoundError(f"branch {branch!r} not found in {slug} on {self.title}")
        if status == 404:
            return self._repo_missing(slug)
        return NotFoundError(f"branch {branch!r} or repository {slug} not found on {self.title}")

    def _repo_missing(self, slug) -> ForgeError:
        return NotFoundError(f"repository {slug} not found on {self.title} (or the token cannot see it)")

    def _raise_for(self, status, body, slug):
        if 200 <= status < 300:
            return
        msg = self._safe(api_message(body))
        if status == 401:
            raise AuthError(f"{self.title} refused the token (401 {msg or 'Unauthorized'})")
        if status == 403:
            raise AuthError(f"{self.title} refused access to {slug} (403{' ' + msg if msg else ''})")
        if status == 404:
            raise self._repo_missing(slug)
        raise ForgeError(f"{self.title} API answered HTTP {status} {msg}".rstrip())

    def _safe(self, text: str) -> str:
        """The text with our token blotted out, should a forge ever echo it back."""
        return text.replace(self.token, "***") if self.token else text

    # ---- HTTP -------------------------------------------------------------------------------------------
    @retry_transient
    def _get(self, path_url: str, headers: dict):
        """(status, headers, text) of one GET; raises for network failures, 5xx, redirects and rate limits."""
        self._wait_if_paused()
        try:
            r = self.session.get(path_url, headers={**headers, **self.auth_headers()}, params=self.auth_params(),
                                 timeout=self.timeout, allow_redirects=False)
            body = r.text
        except requests.Timeout:
            self._count("error")
            raise ForgeUnavailableError(f"{self.title} API at {self.api} did not answer within "
                                        f"{self.timeout} s", timed_out=True) from None
        except (requests.RequestException, OSError) as e:
            self._count("error")
            raise ForgeUnavailableError(f"cannot reach the {self.title} API at {self.api}: "
                                        f"{self._safe(net_reason(e))}") from None
        status = r.status_code
        self._count(status)
        self._note_rate(status, r.headers, body)
        if status >= 500:
            raise ForgeUnavailableError(f"{self.title} API answered HTTP {status}")
        if 300 <= status < 400 and status != 304:
            # Not followed: a credential header would travel to wherever the forge points.
            where = self._safe(str(r.headers.get("location", "")).split("?", 1)[0])
            raise BadAnswerError(f"{self.title} API redirected ({status}) to {where or 'nowhere'}; "
                                 f"check api_url")
        return status, r.headers, body
