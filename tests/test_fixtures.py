"""The fakes themselves: the fake GitHub answers like GitHub, and the git helpers make real history."""
import subprocess
import time
import tomllib

import pytest
import requests

import gitfix
import tomlwrite
from waiting import wait_until

SHA = {"Accept": "application/vnd.github.sha"}
TOKEN = {"Authorization": "token t0k"}


@pytest.fixture
def session():
    with requests.Session() as session:
        yield session


def head_url(forge, full_name, ref="main"):
    return f"{forge.base_url}/repos/{full_name}/commits/{ref}"


def test_sha_etag_round_trip(forge, remote, session):
    """The sha endpoint's ETag is the quoted sha; If-None-Match gets a free 304 until the branch moves."""
    r = remote()
    first = session.get(head_url(forge, r.full_name), headers={**SHA, **TOKEN})
    assert first.status_code == 200 and first.text == r.head()
    assert first.headers["ETag"] == f'"{r.head()}"'
    remaining = int(first.headers["x-ratelimit-remaining"])
    assert first.headers["x-ratelimit-limit"] == "5000"

    again = session.get(head_url(forge, r.full_name), headers={**SHA, **TOKEN, "If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    assert int(again.headers["x-ratelimit-remaining"]) == remaining

    new = r.pusher.commit()
    moved = session.get(head_url(forge, r.full_name), headers={**SHA, **TOKEN, "If-None-Match": first.headers["ETag"]})
    assert moved.status_code == 200 and moved.text == new
    assert [q["status"] for q in forge.head_requests()] == [200, 304, 200]


def test_anonymous_304_is_charged_and_limit_is_60(forge, remote, session):
    """Without a token the budget is 60 and even a 304 costs one."""
    r = remote()
    etag = session.get(head_url(forge, r.full_name), headers=SHA).headers["ETag"]
    again = session.get(head_url(forge, r.full_name), headers={**SHA, "If-None-Match": f"W/{etag}"})
    assert again.status_code == 304
    assert again.headers["x-ratelimit-limit"] == "60" and again.headers["x-ratelimit-used"] == "2"


def test_json_routes_and_names_case_insensitive(forge, remote, session):
    """Repo and ref JSON answer for any case of the name; a slash in a branch name works."""
    r = remote("Demo")
    r.pusher.create_branch("feature/x")
    repo = session.get(f"{forge.base_url}/repos/ACME/demo").json()
    assert repo["full_name"] == "acme/Demo" and repo["default_branch"] == "main"
    assert repo["clone_url"] == r.url
    ref = session.get(f"{forge.base_url}/repos/acme/demo/git/ref/heads/feature/x").json()
    assert ref["object"]["sha"] == r.head()
    commit = session.get(head_url(forge, "acme/demo", "feature%2Fx"))
    assert commit.json()["sha"] == r.head() and commit.headers["ETag"].startswith('"')
    assert session.get(f"{forge.base_url}/repos/acme/demo/git/ref/heads/nope").status_code == 404


def test_unknown_branch_is_422(forge, remote, session):
    r = remote()
    answer = session.get(head_url(forge, r.full_name, "no-such-branch"), headers=SHA)
    assert answer.status_code == 422
    assert answer.json()["message"] == "No commit found for SHA: no-such-branch"


def test_unknown_or_removed_repo_is_404(forge, remote, session):
    r = remote()
    assert session.get(head_url(forge, "acme/missing"), headers=SHA).status_code == 404
    forge.remove_repo(r.full_name)
    answer = session.get(head_url(forge, r.full_name), headers=SHA)
    assert answer.status_code == 404 and answer.json()["message"] == "Not Found"
    assert session.get(f"{forge.base_url}/nothing/here").status_code == 404


def test_rate_limit_403_then_429(forge, remote, session):
    """rate_limit() answers 403 with remaining 0 and the window's end as reset, or 429 with Retry-After."""
    r = remote()
    forge.rate_limit(30)
    answer = session.get(head_url(forge, r.full_name), headers={**SHA, **TOKEN})
    assert answer.status_code == 403 and "rate limit" in answer.json()["message"]
    assert answer.headers["x-ratelimit-remaining"] == "0"
    assert 25 <= int(answer.headers["x-ratelimit-reset"]) - time.time() <= 31

    forge.rate_limit(7, status=429)
    answer = session.get(head_url(forge, r.full_name), headers=SHA)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "7"

    forge.clear_faults()
    assert session.get(head_url(forge, r.full_name), headers=SHA).status_code == 200


def test_exhausted_budget_is_403(forge, remote, session):
    r = remote()
    forge.set_remaining(1)
    assert session.get(head_url(forge, r.full_name), headers=SHA).headers["x-ratelimit-remaining"] == "0"
    answer = session.get(head_url(forge, r.full_name), headers=SHA)
    assert answer.status_code == 403 and answer.headers["x-ratelimit-remaining"] == "0"
    assert session.get(f"{forge.base_url}/rate_limit").json()["resources"]["core"]["remaining"] == 0


def test_fail_next_garbage_and_token(forge, remote, session):
    """Injected faults hit exactly the next requests; require_token refuses other credentials."""
    r = remote()
    forge.fail_next(2)
    assert [session.get(head_url(forge, r.full_name), headers=SHA).status_code for _ in range(3)] == [502, 502, 200]
    forge.garbage_next(1)
    bad = session.get(head_url(forge, r.full_name), headers=SHA)
    assert bad.status_code == 200 and bad.text != r.head() and len(bad.text) < 40
    forge.require_token = "t0k"
    assert session.get(head_url(forge, r.full_name), headers=SHA).status_code == 401
    assert session.get(head_url(forge, r.full_name), headers={**SHA, "Authorization": "Bearer t0k"}).status_code == 200


def test_stop_cuts_keepalive_connections(forge, remote, session):
    """After stop() even a kept-alive connection fails, and start() serves on the same port again."""
    r = remote()
    assert session.get(head_url(forge, r.full_name), headers=SHA).ok
    forge.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(head_url(forge, r.full_name), headers=SHA, timeout=2)
    forge.start()
    assert session.get(head_url(forge, r.full_name), headers=SHA).text == r.head()


def test_pusher_commit_moves_bare_head(remote, tmp_path):
    r = remote()
    before = r.head()
    after = r.pusher.commit({"app/data.txt": "data 2\n"})
    assert after != before and r.head() == after
    checkout = gitfix.clone(r.bare, tmp_path / "co")
    assert gitfix.head(checkout) == after
    assert (checkout / "app" / "data.txt").read_text() == "data 2\n"


def test_force_push_rewrite_is_not_a_descendant(remote):
    r = remote()
    old = r.head()
    new = r.pusher.force_push_rewrite()
    assert r.head() == new != old
    is_ancestor = subprocess.run(["git", "--git-dir", str(r.bare), "merge-base", "--is-ancestor", old, new],
                                 env=gitfix.git_env())
    assert is_ancestor.returncode == 1  # 0 would be a fast-forward, 128 an error


def test_local_changes_and_branch_deletion(remote, tmp_path):
    r = remote()
    checkout = gitfix.clone(r.bare, tmp_path / "co")
    local = gitfix.local_commit(checkout)
    assert gitfix.head(checkout) == local != r.head()
    assert gitfix.dirty_edit(checkout, "README.md") == (checkout / "README.md").read_bytes()
    assert "README.md" in gitfix.git("status", "--porcelain", cwd=checkout)
    r.pusher.delete_branch()
    assert r.head() is None and gitfix.head(tmp_path / "nothing") is None


def test_toml_writer_round_trips():
    data = {"agent": {"state_dir": "st", "workers": 2, "debug": False},
            "github": {"api_url": "http://127.0.0.1:1/api/v3"},
            "repos": [{"github": "acme/demo", "path": "/tmp/x y", "every": "1s", "on_change": ["sh", "-c", "é\"\\"]},
                      {"github": "acme/b", "path": "p", "hook_timeout": 1.5}]}
    assert tomllib.loads(tomlwrite.dumps(data)) == data


def test_wait_until_returns_value_or_names_what():
    assert wait_until(lambda: 42, 1) == 42
    with pytest.raises(AssertionError, match="the moon"):
        wait_until(lambda: None, 0.05, what="the moon")
