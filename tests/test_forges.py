"""Gitee, GitLab and Gitea: heads through each REST API, conditional requests, rate limits, tokens kept secret."""
import base64
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import gitfix
from agent.config import ForgeSettings, load_config
from agent.daemon import build_sources
from agent.errors import AuthError, BadAnswerError, ForgeUnavailableError, NotFoundError, RateLimitedError
from agent.forgehttp import rate_figures, rate_pause
from agent.gitea import GiteaForge
from agent.gitee import GiteeForge
from agent.gitlab import GitLabForge
from agent.model import RepoSpec
from fakeforges import FakeForge
from observe import line

FORGES = {"gitee": (GiteeForge, "Gitee", "acme/demo"),
          "gitlab": (GitLabForge, "GitLab", "grp/sub/demo"),
          "gitea": (GiteaForge, "Gitea", "acme/demo")}
STYLES = list(FORGES)


# ---- URLs, git auth, rate-limit reading: no network ---------------------------------------------------------
def settings(kind, api="https://forge.example/api", token="t0ken-VALUE"):
    return ForgeSettings(kind=kind, api_url=api, token=token)


def test_gitlab_encodes_the_project_path_and_the_branch_as_single_segments():
    """GitLab's project id is the URL-encoded full path; a branch's slash is encoded too."""
    gl = GitLabForge(settings("gitlab", "https://gitlab.example/api/v4"))
    assert gl.repo_url("grp/sub/demo") == "https://gitlab.example/api/v4/projects/grp%2Fsub%2Fdemo"
    assert (gl.branch_url("grp/sub/demo", "feature/x") ==
            "https://gitlab.example/api/v4/projects/grp%2Fsub%2Fdemo/repository/branches/feature%2Fx")
    assert gl.branch_url("g/p", "fix#1 a%b").endswith("/branches/fix%231%20a%25b")


def test_gitee_and_gitea_urls():
    """Gitee encodes a branch's slash; Gitea routes branches as a wildcard and keeps it."""
    ge = GiteeForge(settings("gitee", "https://gitee.com/api/v5/"))
    assert ge.repo_url("acme/demo") == "https://gitee.com/api/v5/repos/acme/demo"
    assert ge.branch_url("acme/demo", "feature/x") == "https://gitee.com/api/v5/repos/acme/demo/branches/feature%2Fx"
    ga = GiteaForge(settings("gitea", "https://git.example/api/v1"))
    assert ga.branch_url("acme/demo", "feature/x") == "https://git.example/api/v1/repos/acme/demo/branches/feature/x"
    assert ga.branch_url("acme/demo", "fix#1").endswith("/branches/fix%231")


def test_gitee_token_is_a_query_parameter_gitlab_and_gitea_use_headers():
    assert GiteeForge(settings("gitee")).auth_params() == {"access_token": "t0ken-VALUE"}
    assert GitLabForge(settings("gitlab")).auth_headers() == {"PRIVATE-TOKEN": "t0ken-VALUE"}
    assert GiteaForge(settings("gitea")).auth_headers() == {"Authorization": "token t0ken-VALUE"}
    for cls in (GiteeForge, GitLabForge, GiteaForge):
        bare = cls(settings(cls.kind, token=None))
        assert bare.auth_params() == {} and bare.auth_headers() == {}


def test_gitlab_hands_git_the_token_as_oauth2_for_its_own_urls_only():
    """git gets `Authorization: Basic base64(oauth2:TOKEN)` for URLs under the GitLab host, nothing elsewhere."""
    gl = GitLabForge(settings("gitlab", "https://gitlab.example/api/v4"))
    env = gl.git_env("https://gitlab.example/grp/sub/demo.git")
    n = env["GIT_CONFIG_COUNT"]
    i = int(n) - 1
    assert env[f"GIT_CONFIG_KEY_{i}"] == "http.https://gitlab.example/.extraHeader"
    value = env[f"GIT_CONFIG_VALUE_{i}"]
    assert value.startswith("Authorization: Basic ")
    assert base64.b64decode(value.split()[-1]).decode() == "oauth2:t0ken-VALUE"
    assert gl.git_env("https://elsewhere.example/grp/sub/demo.git") == {}
    assert gl.git_env("git@gitlab.example:grp/sub/demo.git") == {}
    assert GitLabForge(settings("gitlab", token=None)).git_env("https://forge.example/x.git") == {}


def test_gitee_and_gitea_leave_git_credentials_to_the_user():
    for cls in (GiteeForge, GiteaForge):
        forge = cls(settings(cls.kind, "https://forge.example/api"))
        assert forge.git_env("https://forge.example/acme/demo.git") == {}


NOW = 1_700_000_000.0


@pytest.mark.parametrize("status, headers, body, until", [
    (429, {"Retry-After": "30"}, "", NOW + 30),
    (403, {"retry-after": "0"}, "", NOW + 1),  # never "now": at least a second
    (429, {"Retry-After": "Tue, 14 Nov 2023 22:14:20 GMT"}, "", 1_700_000_060.0),
    (403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 600)}, "", NOW + 600),
    (429, {"RateLimit-Remaining": "0", "RateLimit-Reset": str(int(NOW) + 90)}, "", NOW + 90),
    (429, {"RateLimit-Remaining": "0", "RateLimit-Reset": "45"}, "", NOW + 45),  # seconds, not an epoch
    (403, {}, '{"message": "API rate limit exceeded"}', NOW + 60),
    (429, {}, "", NOW + 60),
    (403, {}, '{"message": "Forbidden"}', None),
    (200, {"RateLimit-Remaining": "0", "RateLimit-Reset": str(int(NOW) + 120)}, "{}", NOW + 120),
    (200, {"X-RateLimit-Remaining": "7", "X-RateLimit-Reset": str(int(NOW) + 120)}, "{}", None),
    (304, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(NOW) + 120)}, "", None),
    (404, {"x-ratelimit-remaining": "0"}, "", None),
], ids=["retry-after", "retry-after-0", "retry-after-date", "github-reset", "gitlab-reset", "delta-reset",
        "secondary", "bare-429", "plain-403", "last-request", "quota-left", "304", "404"])
def test_rate_pause(status, headers, body, until):
    """How long one answer makes us leave a forge alone."""
    assert rate_pause(status, headers, body, NOW) == until


def test_rate_figures_read_either_header_family():
    assert rate_figures({"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "59", "X-RateLimit-Reset": "9"}) == \
        (60, 59, 9)
    assert rate_figures({"RateLimit-Limit": "2000", "RateLimit-Remaining": "1999"}) == (2000, 1999, None)
    assert rate_figures({}) == (None, None, None)


def test_build_sources_adds_gitea_only_when_configured(write_config, tmp_path):
    base = {"agent": {"state_dir": str(tmp_path / "state")},
            "repos": [{"name": "demo", "gitee": "acme/demo", "path": str(tmp_path / "co")}]}
    sources = build_sources(load_config(str(write_config(base))))
    assert {k: v.kind for k, v in sources.items()} == {"github": "github", "gitee": "gitee", "gitlab": "gitlab",
                                                       "git": "git"}
    with_gitea = dict(base, gitea={"api_url": "https://git.example/api/v1"})
    sources = build_sources(load_config(str(write_config(with_gitea, "gitea.toml"))))
    assert sources["gitea"].kind == "gitea" and sources["gitea"].api == "https://git.example/api/v1"
    assert sources["gitee"].api == "https://gitee.com/api/v5" and sources["gitlab"].api == "https://gitlab.com/api/v4"


# ---- a fake forge of each style -------------------------------------------------------------------------------
@dataclass
class ForgeCase:
    """A repo on a fake forge of one style, a checkout path, a config following it, and the CLI to run."""

    style: str
    title: str
    slug: str
    fake: FakeForge
    token: str
    bare: Path
    pusher: gitfix.Pusher
    path: Path
    config_path: Path
    state_dir: Path
    env: dict
    run_cli: object

    def check(self):
        return self.run_cli("check", "-c", self.config_path, env=self.env)

    def source(self):
        cls = FORGES[self.style][0]
        return cls(ForgeSettings(kind=self.style, api_url=self.fake.base_url, token=self.token))

    def spec(self, slug=None):
        return RepoSpec(name="demo", path=str(self.path), source=self.style, slug=slug or self.slug)

    def leaked(self, *texts):
        """Where the token shows up: in these texts, the state dir or the checkout's files."""
        found = [f"text {i}" for i, t in enumerate(texts) if self.token in t]
        for root in (self.state_dir, self.path):
            if root.exists():
                found += [str(p) for p in root.rglob("*") if p.is_file() and self.token.encode() in p.read_bytes()]
        return found


@pytest.fixture(params=STYLES)
def forge_case(request, tmp_path, write_config, cli, agent_env):
    """Factory: forge_case(**repo_keys) -> ForgeCase for the parametrized style; the checkout path starts missing."""
    style = request.param
    cls, title, slug = FORGES[style]
    token = f"tok-{style}-Zq81xPW"
    fake = FakeForge(style, token=token).start()
    request.addfinalizer(fake.stop)
    bare = gitfix.make_remote(tmp_path, "demo", commits=2)
    fake.add_repo(slug, bare)

    def make(**repo_keys):
        repo = {"name": "demo", style: slug, "path": str(tmp_path / "checkouts" / "demo"), **repo_keys}
        config = {"agent": {"state_dir": str(tmp_path / "state"), "log_level": "debug"},
                  style: {"api_url": fake.base_url, "token_env": "FORGE_TOKEN"}, "repos": [repo]}
        return ForgeCase(style, title, slug, fake, token, bare, gitfix.Pusher(bare, tmp_path / "pusher"),
                         Path(repo["path"]), write_config(config), tmp_path / "state",
                         dict(agent_env, FORGE_TOKEN=token), cli)

    return make


def test_check_clones_a_missing_path_and_follows_a_push(forge_case):
    """`check` clones the default branch through the API's clone URL, then fast-forwards after a push;
    the token reaches the forge but neither the output nor anything on disk."""
    case = forge_case()
    first_sha = case.pusher.head()
    first = case.check()
    assert first.returncode == 0, first.output
    assert line(first) == f"demo: cloned {first_sha[:7]}"
    assert gitfix.head(case.path) == first_sha
    new = case.pusher.commit()
    second = case.check()
    assert second.returncode == 0, second.output
    assert line(second) == f"demo: updated {first_sha[:7]}..{new[:7]}"
    assert gitfix.head(case.path) == new
    api = case.fake.api_requests()
    assert api and all(r["token"] == case.token for r in api), "every API request carries the token"
    assert all(r["headers"].get("user-agent") == "sync-agent" for r in api)
    if case.style == "gitlab":  # the fake's git routes demand Basic oauth2:TOKEN
        assert case.fake.git_requests() and all(r["status"] == 200 for r in case.fake.git_requests())
    assert case.leaked(first.output, second.output) == []


def test_unchanged_second_check_is_conditional(forge_case):
    """A second `check` (a new process) sends the stored ETag and gets 304 where the forge gives ETags."""
    case = forge_case(branch="main")
    sha = case.pusher.head()
    assert case.check().returncode == 0
    again = case.check()
    assert again.returncode == 0, again.output
    assert line(again) == f"demo: up-to-date {sha[:7]}"
    heads = case.fake.head_requests()
    assert len(heads) == 2
    if case.fake.etags:
        assert heads[0]["status"] == 200 and heads[1]["status"] == 304
        assert heads[1]["headers"].get("if-none-match", "").startswith('W/"')
    else:  # no ETag given: nothing to be conditional on
        assert [h["status"] for h in heads] == [200, 200]
        assert "if-none-match" not in heads[1]["headers"]


def test_missing_branch_is_an_error_naming_it(forge_case):
    """A branch the forge does not have: `error` naming the branch and the repository, exit status 1."""
    case = forge_case(branch="nope")
    done = case.check()
    assert done.returncode == 1
    assert line(done) == f"demo: error: branch 'nope' not found in {case.slug} on {case.title}"
    assert not case.path.exists()
    assert case.leaked(done.output) == []


def test_rate_limit_with_retry_after_is_named_and_not_hammered(forge_case):
    """A 429 with Retry-After: `error` naming the rate limit, after one request."""
    case = forge_case(branch="main")
    case.fake.rate_limit(120)
    done = case.check()
    assert done.returncode == 1
    assert line(done).startswith(f"demo: error: {case.title} rate limit: waiting until ")
    assert len(case.fake.api_requests()) == 1
    assert case.leaked(done.output) == []


def test_a_couple_of_502s_are_retried(forge_case):
    case = forge_case(branch="main")
    case.fake.fail_next(2, 502)
    done = case.check()
    assert done.returncode == 0, done.output
    assert line(done).startswith("demo: cloned ")
    assert [r["status"] for r in case.fake.head_requests()] == [502, 502, 200]


# ---- the adapters in-process against the fakes ------------------------------------------------------------------
@pytest.mark.parametrize("forge_case", ["gitlab"], indirect=True)
def test_a_spent_quota_pauses_the_forge_without_asking_again(forge_case):
    """An answer saying no request is left pauses the forge until the reset; meanwhile nothing is sent."""
    case = forge_case()
    src = case.source()
    case.fake.set_quota(1, reset_in=300)
    head = src.head(case.spec(), "main")
    assert head.sha == case.pusher.head()
    assert src.rate_remaining == 0 and src.responses == {200: 1}
    with pytest.raises(RateLimitedError, match=r"^GitLab rate limit: waiting until ") as e:
        src.head(case.spec(), "main")
    assert e.value.until >= time.time() + 250
    assert len(case.fake.api_requests()) == 1


def test_after_a_429_the_forge_is_left_alone_until_retry_after(forge_case):
    """Once a forge said Retry-After, further heads fail at once, without a request, naming the time."""
    case = forge_case()
    src = case.source()
    case.fake.rate_limit(120)
    with pytest.raises(RateLimitedError) as first:
        src.head(case.spec(), "main")
    case.fake.clear_faults()
    with pytest.raises(RateLimitedError) as second:
        src.head(case.spec(), "main")
    assert str(second.value) == str(first.value) and second.value.until == first.value.until
    assert time.time() + 100 <= first.value.until <= time.time() + 125
    assert [r["status"] for r in case.fake.api_requests()] == [429] and src.responses == {429: 1}


def test_persistent_503_is_a_one_line_error_after_a_few_tries(forge_case):
    case = forge_case()
    src = case.source()
    case.fake.fail_for(120, 503)
    with pytest.raises(ForgeUnavailableError) as e:
        src.head(case.spec(), "main")
    assert str(e.value) == f"{case.title} API answered HTTP 503"
    assert 2 <= len(case.fake.api_requests()) <= 5
    assert src.responses == {503: len(case.fake.api_requests())}


def test_unreadable_answers_are_bad_answers(forge_case):
    """Malformed JSON, or a sha that is not 40 hex digits, is a BadAnswerError quoting a bit of it."""
    case = forge_case()
    src = case.source()
    case.fake.answer_next(1, 200, b'{"commit": {"s')
    with pytest.raises(BadAnswerError, match="not readable JSON"):
        src.head(case.spec(), "main")
    field = "sha" if case.style == "gitee" else "id"
    case.fake.answer_next(1, 200, {"name": "main", "commit": {field: "main"}})
    with pytest.raises(BadAnswerError, match=r"is not a commit sha \('main'\)"):
        src.head(case.spec(), "main")
    case.fake.answer_next(1, 200, {"default_branch": "main"})
    with pytest.raises(BadAnswerError, match="names no clone URL"):
        src.describe(case.spec())


def test_wrong_token_and_missing_repository(forge_case):
    """401 is an AuthError, a repository the forge does not know a NotFoundError naming it; no token in either."""
    case = forge_case()
    wrong = FORGES[case.style][0](ForgeSettings(kind=case.style, api_url=case.fake.base_url, token="not-it-123"))
    with pytest.raises(AuthError, match=f"^{case.title} refused the token \\(401") as e:
        wrong.head(case.spec(), "main")
    assert "not-it-123" not in str(e.value)
    missing = "acme/nope" if case.style != "gitlab" else "grp/sub/nope"
    with pytest.raises(NotFoundError) as e:
        case.source().head(case.spec(missing), "main")
    assert str(e.value) == f"repository {missing} not found on {case.title} (or the token cannot see it)"
    with pytest.raises(NotFoundError):
        case.source().describe(case.spec(missing))


@pytest.mark.parametrize("forge_case", ["gitee"], indirect=True)
def test_unreachable_gitee_error_names_the_api_not_the_token(forge_case):
    """The request URL carries Gitee's access_token; the error names only the API base and the reason."""
    case = forge_case()
    src = case.source()
    case.fake.stop()
    with pytest.raises(ForgeUnavailableError) as e:
        src.head(case.spec(), "main")
    assert str(e.value) == f"cannot reach the Gitee API at {case.fake.base_url}: Connection refused"
    assert case.token not in str(e.value)


def test_gitlab_branch_with_a_slash_reaches_the_fake_encoded(tmp_path):
    """A branch `feature/x` on a nested GitLab project is found (the fake, like GitLab, needs it encoded)."""
    bare = gitfix.make_remote(tmp_path, "demo")
    pusher = gitfix.Pusher(bare, tmp_path / "pusher")
    sha = pusher.create_branch("feature/x")
    fake = FakeForge("gitlab").start()
    try:
        fake.add_repo("grp/sub/demo", bare)
        src = GitLabForge(ForgeSettings(kind="gitlab", api_url=fake.base_url))
        spec = RepoSpec(name="demo", path=str(tmp_path / "co"), source="gitlab", slug="grp/sub/demo")
        assert src.head(spec, "feature/x").sha == sha
        assert fake.head_requests()[0]["path"].endswith("/projects/grp%2Fsub%2Fdemo/repository/branches/feature%2Fx")
        assert src.describe(spec)["clone_url"] == fake.clone_url("grp/sub/demo")
    finally:
        fake.stop()
