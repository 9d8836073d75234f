"""GitHub through PyGithub: the branch head by conditional request, rate limits honoured."""
from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.parse
from typing import Optional

import requests
from github import Auth, Github
from tenacity import retry, retry_if_exception_type, stop_after_attempt, stop_before_delay, wait_exponential_jitter

from .errors import (AuthError, BadAnswerError, ForgeError, ForgeUnavailableError, NotFoundError,
                     RateLimitedError)
from .git import auth_env
from .model import RemoteHead

HTTP_TIMEOUT = 15  # seconds for one API request; a hung call must never stall the schedule
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
SECONDARY_WAIT = 60.0  # GitHub's advice when a 403 names no time

log = logging.getLogger("sync_agent.github")

# Transient failures are retried inside one check, briefly; longer outages are the scheduler's
# backoff's business (a check must not sit on a worker for minutes).
_transient = retry(retry=retry_if_exception_type(ForgeUnavailableError),
                   wait=wait_exponential_jitter(initial=0.5, max=8, jitter=0.5),
                   stop=stop_after_attempt(4) | stop_before_delay(20), reraise=True)


class GitHubForge:
    """One GitHub (or Enterprise) API: heads, repository facts, rate-limit state, git auth."""

    kind = "github"

    def __init__(self, settings, timeout=HTTP_TIMEOUT, clock=time.time):
        self.settings = settings
        self.token = settings.token
        self.clock = clock
        # retry=None: no built-in hour-long sleep inside a call; we wait by rescheduling instead.
        self.gh = Github(auth=Auth.Token(self.token) if self.token else None, base_url=settings.api_url,
                         timeout=timeout, retry=None, seconds_between_requests=None,
                         seconds_between_writes=None, user_agent="sync-agent", lazy=True)
        self._lock = threading.Lock()
        self.paused_until = 0.0
        self.rate_limit: Optional[int] = None
        self.rate_remaining: Optional[int] = None
        self.rate_reset: Optional[float] = None
        self.responses: dict = {}  # status code (or "error") -> count, for /metrics

    # ---- the interface the sync uses ------------------------------------------------------
    def head(self, spec, branch: str, etag: Optional[str] = None, known_sha: Optional[str] = None) -> RemoteHead:
        """The head of `branch`; with `etag` and `known_sha`, a 304 costs nothing and returns it."""
        path = f"/repos/{spec.slug}/commits/{urllib.parse.quote(branch, safe='')}"
        headers = {"Accept": "application/vnd.github.sha"}
        if etag and known_sha:
            headers["If-None-Match"] = etag
        status, hdrs, body = self._get(path, headers)
        if status == 304:
            return RemoteHead(known_sha, etag, changed=False)
        if status == 422:
            raise NotFoundError(f"branch {branch!r} not found in {spec.slug} on GitHub")
        self._raise_for(status, body, spec.slug)
        sha = body.strip()
        if not SHA_RE.match(sha):
            raise BadAnswerError(f"GitHub answered the head of {spec.slug}:{branch} with something that is "
                                 f"not a commit sha ({_snippet(sha)})")
        return RemoteHead(sha, hdrs.get("etag"), changed=True)

    def describe(self, spec) -> dict:
        """default_branch and clone_url of the repository (one request)."""
        status, _, body = self._get(f"/repos/{spec.slug}", {"Accept": "application/vnd.github+json"})
        self._raise_for(status, body, spec.slug)
        try:
            data = json.loads(body)
            return {"default_branch": str(data["default_branch"]), "clone_url": str(data["clone_url"])}
        except (ValueError, KeyError, TypeError):
            raise BadAnswerError(f"GitHub's description of {spec.slug} is not readable JSON "
                                 f"({_snippet(body)})") from None

    def git_env(self, url: str) -> dict:
        """Environment that lets git use our token for this forge's own URLs, and no others."""
        prefix = self.settings.web_url
        if self.token and prefix and url.startswith(prefix):
            return auth_env(self.token, prefix)
        return {}

    # ---- HTTP ---------------------------------------------------------------------------
    @_transient
    def _get(self, path: str, headers: dict):
        now = self.clock()
        if now < self.paused_until:
            raise RateLimitedError(f"GitHub rate limit: waiting until {_hms(self.paused_until)}",
                                   self.paused_until)
        try:
            status, hdrs, body = self.gh.requester.requestJson("GET", path, headers=dict(headers))
        except requests.Timeout:
            self._count("error")
            raise ForgeUnavailableError(f"GitHub API at {self.settings.api_url} did not answer within "
                                        f"{HTTP_TIMEOUT} s") from None
        except (requests.RequestException, OSError) as e:
            self._count("error")
            raise ForgeUnavailableError(f"cannot reach the GitHub API at {self.settings.api_url}: "
                                        f"{_reason(e)}") from None
        except RuntimeError as e:  # PyGithub's redirect complaints
            self._count("error")
            raise BadAnswerError(f"GitHub API: {e}") from None
        self._count(status)
        self._note_rate(status, hdrs, body)
        if status >= 500:
            raise ForgeUnavailableError(f"GitHub API answered HTTP {status}")
        return status, hdrs, body if isinstance(body, str) else ""

    def _count(self, key):
        with self._lock:
            self.responses[key] = self.responses.get(key, 0) + 1

    def _note_rate(self, status, hdrs, body):
        """Keep the quota figures; on a rate-limit answer, pause this forge until the named time."""
        now = self.clock()
        remaining = _int(hdrs.get("x-ratelimit-remaining"))
        reset = _int(hdrs.get("x-ratelimit-reset"))
        with self._lock:
            if remaining is not None:
                self.rate_remaining = remaining
                self.rate_limit = _int(hdrs.get("x-ratelimit-limit"))
                self.rate_reset = reset
        until = None
        if status in (403, 429):
            retry_after = _int(hdrs.get("retry-after"))
            if retry_after is not None:
                until = now + retry_after
            elif remaining == 0 and reset:
                until = float(reset)
            elif status == 429 or "rate limit" in body.lower():
                until = now + SECONDARY_WAIT
        elif status < 300 and remaining == 0 and reset:
            until = float(reset)  # the next request would be refused
        if until is not None:
            until = max(until, now + 1.0)
            with self._lock:
                self.paused_until = max(self.paused_until, until)
            log.warning("GitHub rate limit reached: no requests to %s until %s", self.settings.api_url,
                        _hms(until))
            if status in (403, 429):
                raise RateLimitedError(f"GitHub rate limit: waiting until {_hms(until)}", until)

    def _raise_for(self, status, body, slug):
        if 200 <= status < 300:
            return
        msg = _message(body)
        if status == 401:
            raise AuthError(f"GitHub refused the token (401 {msg or 'Bad credentials'})")
        if status == 403:
            raise AuthError(f"GitHub refused access to {slug} (403 {msg})")
        if status == 404:
            raise NotFoundError(f"repository {slug} not found on GitHub (or the token cannot see it)")
        if status == 409:
            raise NotFoundError(f"repository {slug} is empty on GitHub")
        raise ForgeError(f"GitHub API answered HTTP {status} {msg}".rstrip())


def _message(body: str) -> str:
    try:
        return str(json.loads(body).get("message", ""))[:120]
    except (ValueError, AttributeError):
        return ""


def _snippet(text: str) -> str:
    text = " ".join(str(text).split())
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def _reason(e: Exception) -> str:
    text = str(e)
    m = re.search(r"\[Errno -?\d+\] ([^')\]]+)", text)
    if m:
        return m.group(1)
    return type(e).__name__


def _int(v) -> Optional[int]:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _hms(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))
