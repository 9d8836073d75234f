"""Asking GitHub: conditional requests, retries on 5xx, rate limits, and failures that say what went wrong."""
import json
import re

import pytest

from observe import line, snapshot
from waiting import wait_until


def statuses(forge):
    return [r["status"] for r in forge.head_requests()]


# ---- 304 --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("branch", ["main", None],
                         ids=["branch-set", "default-branch"])
def test_unchanged_remote_is_a_304_even_from_a_new_process(sync_case, forge, branch):
    """A second `check` of an unchanged remote sends If-None-Match with the stored ETag and gets 304."""
    case = sync_case(branch=branch)
    sha = case.remote.head()
    assert case.check().returncode == 0
    stored = json.loads(case.status("--json").output)["repos"][0]
    assert stored["remote_sha"] == sha and stored["local_sha"] == sha

    second = case.check()  # a new process: the ETag comes from the state store
    assert second.returncode == 0 and line(second) == f"demo: up-to-date {sha[:7]}"
    heads = forge.head_requests()
    assert [r["status"] for r in heads] == [200, 304]
    assert heads[1]["headers"].get("if-none-match") == f'"{sha}"'

    new = case.remote.pusher.commit()
    third = case.check()
    assert third.returncode == 0 and line(third).startswith("demo: updated ")
    assert statuses(forge)[-1] == 200 and case.head() == new
    assert json.loads(case.status("--json").output)["repos"][0]["remote_sha"] == new


# ---- 5xx and connection failures --------------------------------------------------------------------------------
def test_a_couple_of_502s_are_retried(sync_case, forge):
    """Two 502 answers in a row are retried within the check, which then updates normally."""
    case = sync_case()
    new = case.remote.pusher.commit()
    forge.fail_next(2, 502)
    done = case.check()
    assert done.returncode == 0, done.output
    assert line(done).startswith("demo: updated ") and case.head() == new
    assert statuses(forge) == [502, 502, 200]


def test_persistent_503_is_a_one_line_error(sync_case, forge):
    """A forge that keeps answering 503 gives `error` (exit 1) with a one-line reason, a few tries, no traceback."""
    case = sync_case()
    case.remote.pusher.commit()
    before = snapshot(case.path)
    forge.fail_for(120, 503)
    done = case.check()
    assert done.returncode == 1
    assert line(done) == "demo: error: GitHub API answered HTTP 503"
    assert "Traceback" not in done.output
    assert 2 <= forge.count() <= 5, "retried, but not hammered"
    assert snapshot(case.path) == before


def test_unreachable_forge_is_a_one_line_error(sync_case, forge):
    """With nothing listening at api_url the check fails with a clear reason and leaves the checkout alone."""
    case = sync_case()
    before = snapshot(case.path)
    forge.stop()
    done = case.check()
    assert done.returncode == 1
    assert line(done) == f"demo: error: cannot reach the GitHub API at {forge.base_url}: Connection refused"
    assert "Traceback" not in done.output
    assert snapshot(case.path) == before


def test_garbled_answer_is_an_error(sync_case, forge):
    """A 200 whose body is not a commit sha is an error, not a reason to move the checkout."""
    case = sync_case()
    case.remote.pusher.commit()
    before = snapshot(case.path)
    forge.garbage_next(1)
    done = case.check()
    assert done.returncode == 1 and line(done).startswith("demo: error: ") and "sha" in line(done)
    assert snapshot(case.path) == before


def test_refused_token_is_an_error_that_does_not_show_it(sync_case, forge, agent_env):
    """A token GitHub refuses (401) gives an error naming the problem, never the token."""
    case = sync_case()
    forge.require_token = "the-right-token"
    done = case.check(env={**agent_env, "GITHUB_TOKEN": "wrong-token-4f1d9c"})
    assert done.returncode == 1
    assert line(done).startswith("demo: error: ") and "401" in line(done)
    assert "wrong-token-4f1d9c" not in done.output


# ---- rate limits ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [403, 429])
def test_rate_limited_check_says_so(sync_case, forge, status):
    """A 403 with remaining 0, or a 429 with Retry-After, is an error naming the rate limit and its end, asked once."""
    case = sync_case()
    before = snapshot(case.path)
    forge.rate_limit(30, status=status)
    done = case.check()
    assert done.returncode == 1
    assert line(done).startswith("demo: error: ")
    assert re.search(r"rate limit.*\d\d:\d\d", line(done), re.I), "names the limit and when it ends"
    assert forge.count() == 1, "a rate-limit answer is not retried at once"
    assert snapshot(case.path) == before


@pytest.mark.parametrize("status", [403, 429])
def test_daemon_waits_out_a_rate_limit_then_recovers(sync_case, forge, daemon, status):
    """While rate-limited a daemon polling every second asks at most a couple of times, then syncs again."""
    forge.anon_limit = 100000
    case = sync_case(every="1s")
    d = daemon(case.config_path)
    wait_until(lambda: forge.head_requests(), 15, what="the daemon's first check")
    forge.rate_limit(3, status=status)  # unheeded, polls every second (and retries) would land here
    new = case.remote.pusher.commit()
    wait_until(lambda: case.head() == new, 25, interval=0.1, what="the push synced after the limit")
    limited = [r for r in forge.requests if r["status"] == status]
    assert 1 <= len(limited) <= 2, [r["status"] for r in forge.requests]
    assert "rate limit" in d.log().lower()
    assert d.alive()
    assert d.stop() == 0
