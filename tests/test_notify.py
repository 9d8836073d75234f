"""Notifications through apprise (SPEC sections 3 and 4, `[[notify]]`, `notify-test`): real `sync-agent run`
daemons and `sync-agent check` runs sending to a loopback service (tests/receiver.py) through apprise's
`json://` target, which posts {title, message, type}. The alert rules (events_for) are tested directly.
"""
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import gitfix
from hooksend import Client, free_port, push_body
from receiver import Receiver
from waiting import wait_until

from agent.model import BLOCKED, CLONED, ERROR, RESET, UP_TO_DATE, UPDATED, HookRun, Outcome
from agent.notify import _Memory, events_for

TOKEN = "ntfy-T0ken-9QzX-never-shown"  # in the notify URL's path, as a webhook token would be
SECRET = "notify-hook-Secret-3Jr8"


@pytest.fixture
def receivers():
    """Factory: receiver(mode="ok") -> a started Receiver; all stopped after the test."""
    made = []

    def make(mode="ok"):
        made.append(Receiver(mode).start())
        return made[-1]

    yield make
    for r in made:
        r.stop()


@dataclass
class Case:
    """Remotes, their pre-cloned checkouts, and a config file following them with [[notify]] targets."""

    remotes: dict
    paths: dict
    config_path: Path
    env: dict
    run_cli: object
    texts: list = field(default_factory=list)

    def head(self, name="demo"):
        return gitfix.head(self.paths[name])

    def cli(self, *args):
        done = self.run_cli(*args, "-c", self.config_path, env=self.env)
        self.texts.append(done.output)
        return done


@pytest.fixture
def case(tmp_path, remote, forge, write_config, agent_env, cli):
    """Factory: case(notify, names=("demo",), github=False, repo={}, agent={}, webhook=None) -> Case.

    Repos are git-only (`url = file://...`) unless github=True (then on the fake GitHub).
    """

    def make(notify, names=("demo",), github=False, repo=None, agent=None, webhook=None):
        remotes = {n: remote(n) for n in names}
        paths = {n: tmp_path / "checkouts" / n for n in names}
        for n in names:
            paths[n].parent.mkdir(exist_ok=True)
            gitfix.clone(remotes[n].bare, paths[n])
        repos = [{"name": n, **({"github": remotes[n].full_name} if github else {"url": remotes[n].url}),
                  "branch": "main", "path": str(paths[n]), "every": "1h", **(repo or {})} for n in names]
        env = dict(agent_env, HOOK_SECRET=SECRET)
        config = write_config({
            "agent": {"state_dir": str(tmp_path / "state"), "log_level": "debug", **(agent or {})},
            "github": {"api_url": forge.base_url},
            "webhook": webhook,
            "repos": repos,
            "notify": list(notify)})
        return Case(remotes, paths, config, env, cli)

    return make


def body_lines(msg):
    return msg["message"].splitlines()


# ---------------------------------------------------------------------------------------------
# what a message says
# ---------------------------------------------------------------------------------------------
def test_updated_message_names_repo_branch_commits_head_and_trigger(case, receivers):
    """`sync-agent check` after a push sends one `updated` message naming the repo, branch, old..new, the new
    head's subject and author, and the trigger."""
    rcv = receivers()
    c = case([{"urls": [rcv.url(f"/hooks/{TOKEN}")]}])
    old = c.head()
    new = c.remotes["demo"].pusher.commit(message="Fix the frobnicator’s timing")
    done = c.cli("check")
    assert done.returncode == 0, done.output
    assert c.head() == new

    (msg,) = rcv.messages()
    assert msg["path"] == f"/hooks/{TOKEN}"
    assert msg["title"] == "sync-agent: demo updated"
    assert msg["type"] == "success"
    text = msg["message"]
    assert "Repository: demo" in text and "branch main" in text
    assert f"{old[:7]}..{new[:7]}" in text
    assert "Head: Fix the frobnicator’s timing (Fixture Author)" in body_lines(msg)
    assert "Trigger: manual" in body_lines(msg)
    assert f"Path: {c.paths['demo']}" in body_lines(msg)

    assert c.cli("check").returncode == 0  # up to date: nothing to say
    time.sleep(0.2)
    assert len(rcv.messages()) == 1
    assert TOKEN not in "\n".join(c.texts)


def test_error_announced_after_threshold_once_then_recovered_once(case, receivers, daemon):
    """With failures_before_alert = 2, the daemon announces `error` once, at the second failure in a row, stays
    quiet through later failures, then announces `recovered` once when the remote is back."""
    rcv = receivers()
    c = case([{"urls": [rcv.url(f"/{TOKEN}")], "on": ["error", "recovered"], "failures_before_alert": 2}],
             repo={"every": "1s"}, agent={"max_backoff": "1s"})
    bare = c.remotes["demo"].bare
    moved = bare.with_name("demo.git.away")
    bare.rename(moved)  # the remote is gone: every check fails
    d = daemon(c.config_path, env=c.env)

    (alert,) = rcv.wait_for(1, timeout=15)
    assert alert["title"] == "sync-agent: demo error" and alert["type"] == "failure"
    assert "Failures in a row: 2" in body_lines(alert)
    assert "does not appear to be a git repository" in alert["message"]
    assert "keeps retrying" in alert["message"]
    d.wait_log(r"failures in a row: 3\b", 15)
    time.sleep(0.2)
    assert len(rcv.messages()) == 1  # quiet through the 3rd failure

    moved.rename(bare)
    mark = d.mark()
    _, back = rcv.wait_for(2, timeout=10)
    assert back["title"] == "sync-agent: demo recovered" and back["type"] == "success"
    assert "Back to normal: up-to-date" in back["message"]
    wait_until(lambda: len(re.findall(r"demo \[schedule\] up-to-date", d.log()[mark:])) >= 2, 10,
               what="two good checks")
    assert [m["title"] for m in rcv.messages()] == ["sync-agent: demo error", "sync-agent: demo recovered"]
    assert TOKEN not in d.log()


def test_blocked_once_per_situation(case, receivers, daemon):
    """A diverged checkout checked again and again with the same heads is announced once; a new remote head
    is a new situation and is announced once more; the checkout is never touched."""
    rcv = receivers()
    c = case([{"urls": [rcv.url(f"/{TOKEN}")], "on": ["blocked"]}], repo={"every": "1s"})
    mine = gitfix.local_commit(c.paths["demo"])
    theirs = c.remotes["demo"].pusher.commit()
    d = daemon(c.config_path, env=c.env)

    (first,) = rcv.wait_for(1, timeout=10)
    assert first["title"] == "sync-agent: demo blocked" and first["type"] == "warning"
    assert "Reason: diverged" in body_lines(first) and 'mode = "reset"' in first["message"]
    assert theirs[:7] in first["message"] or mine[:7] in first["message"]
    wait_until(lambda: len(re.findall(r"demo \[schedule\] blocked: diverged", d.log())) >= 2, 10,
               what="a second blocked check")
    assert len(rcv.messages()) == 1

    newer = c.remotes["demo"].pusher.commit()
    mark = d.mark()
    _, second = rcv.wait_for(2, timeout=10)
    assert second["title"] == "sync-agent: demo blocked"
    wait_until(lambda: len(re.findall(r"demo \[schedule\] blocked: diverged", d.log()[mark:])) >= 2, 10,
               what="two more blocked checks")
    assert len(rcv.messages()) == 2
    assert c.head() == mine and c.remotes["demo"].head() == newer
    assert TOKEN not in d.log()


def test_repos_filter(case, receivers):
    """A target with `repos = ["alpha"]` hears only about alpha; a target without the filter hears about both."""
    rcv = receivers()
    c = case([{"urls": [rcv.url("/alpha-only")], "repos": ["alpha"]}, {"urls": [rcv.url("/all")]}],
             names=("alpha", "beta"))
    for r in c.remotes.values():
        r.pusher.commit()
    done = c.cli("check")
    assert done.returncode == 0, done.output
    assert [m["title"] for m in rcv.messages("/alpha-only")] == ["sync-agent: alpha updated"]
    assert sorted(m["title"] for m in rcv.messages("/all")) == ["sync-agent: alpha updated",
                                                               "sync-agent: beta updated"]


def nudged_daemon(case, daemon, notify):
    """(Case, Daemon, push) for a repo on the fake GitHub with a listener; push() commits upstream, delivers the
    signed push and waits for the checkout to follow, returning how long that took."""
    port = free_port()
    c = case(notify, github=True, webhook={"listen": f"127.0.0.1:{port}", "secret_env": "HOOK_SECRET"})
    d = daemon(c.config_path, env=c.env)
    client = Client(port)
    d.wait_log(r"demo \[schedule\] up-to-date", 15)

    def push():
        old = c.head()
        new = c.remotes["demo"].pusher.commit()
        body = push_body(c.remotes["demo"].full_name, before=old, after=new)
        t0 = time.monotonic()
        assert client.deliver(body, secret=SECRET).status == 202
        wait_until(lambda: c.head() == new, 10, what="the checkout at the pushed commit")
        return time.monotonic() - t0

    return c, d, push


def test_hanging_or_refusing_notifier_does_not_delay_syncs(case, receivers, daemon):
    """With one target that never answers and one that answers 500, pushes nudged by webhook still reach the
    checkout promptly; each failure is logged naming the target but never its URL, nor is the URL in `status`."""
    hang, refuse = receivers("hang"), receivers("error")
    c, d, push = nudged_daemon(case, daemon, [{"urls": [hang.url(f"/hang/{TOKEN}")], "on": ["updated"]},
                                              {"urls": [refuse.url(f"/refuse/{TOKEN}")], "on": ["updated"]}])
    lags = [push() for _ in range(3)]
    assert max(lags) < 2.0, lags  # a hung notification (4 s apprise timeout) would show here
    assert len(hang.messages()) >= 1  # it was asked, and never answered

    d.wait_log(r"notify\[1\] \(json\): notification not sent: ", 10)
    d.wait_log(r"notify\[0\] \(json\): notification not sent: ", 15)
    status = c.cli("status")
    status_json = c.cli("status", "--json")
    assert status.returncode == status_json.returncode == 0
    assert all(r["local_sha"] == c.head() for r in json.loads(status_json.stdout)["repos"])
    for text in (d.log(), status.output, status_json.output):
        assert TOKEN not in text and "/hang/" not in text and "/refuse/" not in text
        assert SECRET not in text


def test_a_hanging_target_does_not_delay_another(case, receivers, daemon):
    """While one target never answers, another still gets each `updated` message within a second or so."""
    hang, ok = receivers("hang"), receivers()
    _, _, push = nudged_daemon(case, daemon, [{"urls": [hang.url("/hang")], "on": ["updated"]},
                                              {"urls": [ok.url("/ok")], "on": ["updated"]}])
    for i in range(1, 4):
        push()
        ok.wait_for(i, timeout=1.5)


def test_notify_test_command(case, receivers):
    """`sync-agent notify-test` prints a line per target, sent or FAILED, and exits 1 when any failed, 0 when all
    were sent; the URLs are not printed."""
    ok, refuse = receivers(), receivers("error")
    c = case([{"urls": [ok.url(f"/ok/{TOKEN}")]}, {"urls": [refuse.url(f"/no/{TOKEN}")]}])
    done = c.cli("notify-test")
    assert done.returncode == 1, done.output
    lines = done.stdout.splitlines()
    assert lines[0] == "notify[0] (json): sent", done.output
    assert lines[1].startswith("notify[1] (json): FAILED"), done.output
    assert len(lines) == 2
    (msg,) = ok.messages()
    assert msg["title"] == "sync-agent: test message"
    assert len(refuse.messages()) == 1

    c2 = case([{"urls": [ok.url(f"/ok/{TOKEN}")]}], names=("other",))
    done = c2.cli("notify-test")
    assert done.returncode == 0, done.output
    assert done.stdout.splitlines() == ["notify[0] (json): sent"]
    assert len(ok.messages()) == 2
    assert TOKEN not in "\n".join(c.texts + c2.texts)


def test_check_runs_announce_error_once_and_recovered_once(case, receivers):
    """Repeated `sync-agent check` runs (as from cron) announce `error` once and `recovered` once, like the daemon."""
    rcv = receivers()
    c = case([{"urls": [rcv.url("/")], "on": ["error", "recovered"], "failures_before_alert": 2}])
    bare = c.remotes["demo"].bare
    moved = bare.with_name("demo.git.away")
    bare.rename(moved)
    for _ in range(3):
        assert c.cli("check").returncode == 1
    assert [m["title"] for m in rcv.messages()] == ["sync-agent: demo error"]
    moved.rename(bare)
    assert c.cli("check").returncode == 0
    assert [m["title"] for m in rcv.messages()] == ["sync-agent: demo error", "sync-agent: demo recovered"]


# ---------------------------------------------------------------------------------------------
# the rules, directly
# ---------------------------------------------------------------------------------------------
A, B, C = "a" * 40, "b" * 40, "c" * 40


def run_rules(checks, threshold=2):
    """events_for over a series of (outcome, failures in a row) for one target and repo."""
    mem = _Memory()
    return [events_for(out, fails, threshold, mem) for out, fails in checks]


def test_events_for_alert_once_and_recover_once():
    """Errors are announced once, at the threshold; the first good check after that is `recovered`, once."""
    err = Outcome(ERROR, A, A, detail="network down")
    ok = Outcome(UP_TO_DATE, A, A, A)
    assert run_rules([(err, 1), (err, 2), (err, 3), (err, 4), (ok, 0), (ok, 0), (err, 1), (ok, 0)]) == \
           [[], ["error"], [], [], ["recovered"], [], [], []]
    assert run_rules([(err, 1), (ok, 0)]) == [[], []]  # below the threshold: nothing said, nothing to recover
    assert run_rules([(err, 1)], threshold=1) == [["error"]]
    moved = Outcome(UPDATED, A, B, B)
    assert run_rules([(err, 1), (err, 2), (moved, 0)]) == [[], ["error"], ["updated", "recovered"]]


def test_events_for_blocked_once_per_situation():
    """A blocked situation is told once per (local, remote, reason); a new one, or the same after it cleared, again."""
    diverged = Outcome(BLOCKED, A, A, B, detail="diverged")
    newer = Outcome(BLOCKED, A, A, C, detail="diverged")
    ok = Outcome(UP_TO_DATE, A, A, A)
    err = Outcome(ERROR, A, A, detail="timeout")
    assert run_rules([(diverged, 0), (diverged, 0), (newer, 0), (newer, 0), (ok, 0), (newer, 0)]) == \
           [["blocked"], [], ["blocked"], [], [], ["blocked"]]
    # a passing error does not make the same situation news again
    assert run_rules([(diverged, 0), (err, 1), (diverged, 0)]) == [["blocked"], [], []]
    # an alerted error followed by a block: recovered from the error, and now blocked
    assert run_rules([(err, 1), (err, 2), (diverged, 0)]) == [[], ["error"], ["recovered", "blocked"]]


def test_events_for_changes_and_hooks():
    """Every change is news; a failed on_change hook adds `hook_failed`."""
    failed_hook = HookRun(returncode=3, seconds=0.1, output_tail="boom")
    assert run_rules([(Outcome(CLONED, None, A, A), 0)]) == [["cloned"]]
    assert run_rules([(Outcome(RESET, A, B, B, backup="refs/sync-agent/backup/x"), 0)]) == [["reset"]]
    assert run_rules([(Outcome(UPDATED, A, B, B, hook=failed_hook), 0)]) == [["updated", "hook_failed"]]
    ok_hook = HookRun(returncode=0, seconds=0.1, output_tail="")
    assert run_rules([(Outcome(UPDATED, A, B, B, hook=ok_hook), 0)]) == [["updated"]]
