"""GitHub through PyGithub: the branch head by conditional request, rate limits honoured."""
from __future__ import annotations

import json
import logging
import time
import urllib.parse
from typing import Optional

import requests
from github import Auth, Github

from .errors import AuthError, BadAnswerError, ForgeError, ForgeUnavailableError, NotFoundError
from .forgehttp import HTTP_TIMEOUT, SHA_RE, QuotaKeeper, api_message, net_reason, retry_transient, snippet
from .git import auth_env
from .model import RemoteHead

log = logging.getLogger("sync_agent.github")


class GitHubForge(QuotaKeeper):
    """One GitHub (or Enterprise) API: heads, repository facts, rate-limit state, git auth."""

    kind = "github"
    title = "GitHub"

    def __init__(self, settings, timeout=HTTP_TIMEOUT, clock=time.time):
        self.settings = settings
        self.token = settings.token
        self.clock = clock
        # retry=None: no built-in hour-long sleep inside a call; we wait by rescheduling instead.
        self.gh = Github(auth=Auth.Token(self.token) if self.token else None, base_url=settings.api_url,
                         timeout=timeout, retry=None, seconds_between_requests=None,
                         seconds_between_writes=None, user_agent="sync-agent", lazy=True)
        self.api = settings.api_url
        self._init_quota()

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
                                 f"not a commit sha ({snippet(sha)})")
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
                                 f"({snippet(body)})") from None

    def git_env(self, url: str) -> dict:
        """Environment that lets git use our token for this forge's own URLs, and no others."""
        prefix = self.settings.web_url
        if self.token and prefix and url.startswith(prefix):
            return auth_env(self.token, prefix)
        return {}

    # ---- HTTP ---------------------------------------------------------------------------
    @retry_transient
    def _get(self, path: str, headers: dict):
        self._wait_if_paused()
        try:
            status, hdrs, body = self.gh.requester.requestJson("GET", path, headers=dict(headers))
        except requests.Timeout:
            self._count("error")
            raise ForgeUnavailableError(f"GitHub API at {self.settings.api_url} did not answer within "
                                        f"{HTTP_TIMEOUT} s", timed_out=True) from None
        except (requests.RequestException, OSError) as e:
            self._count("error")
            raise ForgeUnavailableError(f"cannot reach the GitHub API at {self.settings.api_url}: "
                                        f"{net_reason(e)}") from None
        except RuntimeError as e:  # PyGithub's redirect complaints
            self._count("error")
            raise BadAnswerError(f"GitHub API: {e}") from None
        self._count(status)
        self._note_rate(status, hdrs, body)
        if status >= 500:
            raise ForgeUnavailableError(f"GitHub API answered HTTP {status}")
        return status, hdrs, body if isinstance(body, str) else ""

    def _raise_for(self, status, body, slug):
        if 200 <= status < 300:
            return
        msg = api_message(body)
        if status == 401:
            raise AuthError(f"GitHub refused the token (401 {msg or 'Bad credentials'})")
        if status == 403:
            raise AuthError(f"GitHub refused access to {slug} (403 {msg})")
        if status == 404:
            raise NotFoundError(f"repository {slug} not found on GitHub (or the token cannot see it)")
        if status == 409:
            raise NotFoundError(f"repository {slug} is empty on GitHub")
        raise ForgeError(f"GitHub API answered HTTP {status} {msg}".rstrip())
