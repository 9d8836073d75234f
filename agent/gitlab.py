"""GitLab through its REST API v4: the branch head and the project's facts, git auth for its own URLs."""
from __future__ import annotations

from urllib.parse import quote

from .forgehttp import RestForge
from .git import auth_env


class GitLabForge(RestForge):
    """GitLab (API v4), token in the `PRIVATE-TOKEN` header."""

    kind = "gitlab"
    title = "GitLab"

    def branch_url(self, slug: str, branch: str) -> str:
        return f"{self.repo_url(slug)}/repository/branches/{quote(branch, safe='')}"

    def repo_url(self, slug: str) -> str:
        # The project's full path is one URL segment: grp/sub/demo -> grp%2Fsub%2Fdemo.
        return f"{self.api}/projects/{quote(slug, safe='')}"

    def auth_headers(self) -> dict:
        return {"PRIVATE-TOKEN": self.token} if self.token else {}

    def sha_of(self, data) -> str:
        return data["commit"]["id"]

    def facts_of(self, data) -> dict:
        return {"default_branch": data.get("default_branch"), "clone_url": data.get("http_url_to_repo")}

    def git_env(self, url: str) -> dict:
        """Environment that lets git use our token (as user oauth2) for this GitLab's own URLs, and no others."""
        prefix = self.settings.web_url
        if self.token and prefix and url.startswith(prefix):
            return auth_env(self.token, prefix, username="oauth2")
        return {}
