"""Gitea and Forgejo through their REST API v1: the branch head and the repository's facts."""
from __future__ import annotations

from urllib.parse import quote

from .forgehttp import RestForge


class GiteaForge(RestForge):
    """Gitea / Forgejo (API v1), token in `Authorization: token X`.

    git fetches get no token from us: users give git their own credentials (a credential helper or
    SSH) for private repositories.
    """

    kind = "gitea"
    title = "Gitea"

    def branch_url(self, slug: str, branch: str) -> str:
        # Gitea routes /branches/* as a wildcard: a branch's slashes stay slashes.
        return f"{self.repo_url(slug)}/branches/{quote(branch, safe='/')}"

    def repo_url(self, slug: str) -> str:
        owner, repo = slug.split("/", 1)
        return f"{self.api}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}"

    def auth_headers(self) -> dict:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def sha_of(self, data) -> str:
        return data["commit"]["id"]

    def facts_of(self, data) -> dict:
        return {"default_branch": data.get("default_branch"), "clone_url": data.get("clone_url")}
