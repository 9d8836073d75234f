"""Gitee through its REST API v5: the branch head, conditional when Gitee gave an ETag."""
from __future__ import annotations

from urllib.parse import quote

from .forgehttp import RestForge


class GiteeForge(RestForge):
    """Gitee (API v5). The token travels as the `access_token` query parameter, as Gitee's API wants it;
    it never enters a message, since those name the API base, not the request URL.

    git fetches get no token from us: users give git their own credentials (a credential helper or
    SSH) for private Gitee repositories.
    """

    kind = "gitee"
    title = "Gitee"

    def branch_url(self, slug: str, branch: str) -> str:
        return f"{self.repo_url(slug)}/branches/{quote(branch, safe='')}"

    def repo_url(self, slug: str) -> str:
        owner, repo = slug.split("/", 1)
        return f"{self.api}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}"

    def auth_params(self) -> dict:
        return {"access_token": self.token} if self.token else {}

    def sha_of(self, data) -> str:
        return data["commit"]["sha"]

    def facts_of(self, data) -> dict:
        url = data.get("clone_url") or data.get("html_url") or ""
        if url and not url.endswith(".git"):
            url += ".git"  # Gitee's html_url is the web page; git wants the .git form
        return {"default_branch": data.get("default_branch"), "clone_url": url}
