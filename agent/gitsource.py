"""A git-only source: the head from `git ls-remote`, for any host, no API and no token."""
from __future__ import annotations

import re

from .errors import ForgeUnavailableError, GitError, NotFoundError
from .git import NETWORK_TIMEOUT, run_git, stderr_tail
from .model import RemoteHead

LS_REMOTE_TIMEOUT = 60.0


class GitSource:
    kind = "git"

    def head(self, spec, branch, etag=None, known_sha=None) -> RemoteHead:
        p = self._ls_remote("--exit-code", spec.url, f"refs/heads/{branch}")
        if p.returncode == 2:
            raise NotFoundError(f"branch {branch!r} not found at {spec.url}")
        for line in p.stdout.splitlines():
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{branch}" and re.fullmatch(r"[0-9a-f]{40}", sha):
                return RemoteHead(sha, None, changed=sha != known_sha)
        raise NotFoundError(f"branch {branch!r} not found at {spec.url}")

    def describe(self, spec) -> dict:
        p = self._ls_remote("--symref", spec.url, "HEAD")
        m = re.search(r"^ref: refs/heads/(\S+)\tHEAD$", p.stdout, re.M)
        if not m:
            raise NotFoundError(f"{spec.url} names no default branch; set `branch`")
        return {"default_branch": m.group(1), "clone_url": spec.url}

    def git_env(self, url: str) -> dict:
        return {}

    def _ls_remote(self, *args):
        try:
            p = run_git(["ls-remote", *args], timeout=min(LS_REMOTE_TIMEOUT, NETWORK_TIMEOUT), check=False)
        except GitError as e:
            raise ForgeUnavailableError(str(e)) from None
        if p.returncode not in (0, 2):
            raise ForgeUnavailableError(f"`git ls-remote {args[-2]}` failed (exit {p.returncode}): "
                                        f"{stderr_tail(p.stderr)}")
        return p
