"""Outages: a failing forge is asked less and less often (up to max_backoff), then the repo recovers;
a git remote that disappears, a checkout deleted or replaced while the daemon runs."""
import json
import random
import re
import shutil
import time
from datetime import datetime

import pytest

import gitfix
from agent.schedule import backoff_delay
from conftest import agent_config, repo_entry
from observe import line, snapshot
from waiting import wait_until

MAX_BACKOFF = 8.0
CHECK_LINE = re.compile(r"^(\S+) (\w+) (\S+) \[(\w+)\] (.*?) \((\S+)\.\.(\S+), (\d+) ms\)(.*)$", re.M)


@pytest.fixture(autouse=True)
def generous_quota(forge):
    """Polling every second without a token would soon spend the 60 an hour of the fake forge."""
    forge.anon_limit = 100000


def checks_in_log(text, name="demo"):
    """[(start, end, summary, rest)] of each check the daemon logged for `name`, times in epoch seconds.

    The log line is written when a check ends and carries its duration, so start = end - duration.
    """
    out = []
    for m in CHECK_LINE.finditer(text):
        stamp, _level, repo, _trigger, summary, _old, _new, ms, rest = m.groups()
        if repo != name:
            continue
        end = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").timestamp()
        out.append((end - int(ms) / 1000.0, end, summary, rest))
    return out


def status_of(cli, config, name="demo"):
    done = cli("status", "--json", "-c", config)
    assert done.returncode == 0, done.output
    return next(r for r in json.loads(done.output)["repos"] if r["name"] == name)


# ---- backoff, the pure part ----------------------------------------------------------------------------------
def test_backoff_delay_grows_is_capped_and_jittered():
    """Doubling from about 2 s, never above the cap, and two repos with the same failure count spread out."""
    cap = 8.0
    for n in range(1, 8):
        lo, hi = backoff_delay(n, cap, rng=lambda: 0.0), backoff_delay(n, cap, rng=lambda: 0.999999)
        assert 0 < lo <= hi <= cap
    mids = [backoff_delay(n, 10_000, rng=lambda: 0.5) for n in range(1, 12)]
    assert all(b > a * 1.5 for a, b in zip(mids, mids[1:])), mids
    assert 1.0 <= mids[0] <= 3.0
    assert max(backoff_delay(n, cap) for n in range(1, 60) for _ in range(20)) <= cap
    # at the cap the delay is cap-ish, not shrinking back down
    assert min(backoff_delay(n, cap) for n in range(4, 60) for _ in range(20)) >= 0.5 * cap
    assert backoff_delay(0, cap) == 0
    # jitter: two repos (two independent draws) at the same failure count rarely get the same wait
    rng_a, rng_b = random.Random(1), random.Random(2)
    pairs = [(backoff_delay(5, 600, rng=rng_a.random), backoff_delay(5, 600, rng=rng_b.random)) for _ in range(200)]
    assert sum(a != b for a, b in pairs) >= 195
    samples = {round(backoff_delay(5, 600), 6) for _ in range(200)}
    assert len(samples) > 150, "the default rng jitters"
    spread = [backoff_delay(5, 600) for _ in range(500)]
    assert max(spread) - min(spread) > 0.05 * 32, "jitter spreads failing repos by more than a hair"


# ---- a forge outage seen from the forge and from status ---------------------------------------------------
def test_forge_outage_backs_off_to_the_cap_then_recovers(tmp_path, forge, remote, write_config, daemon, cli):
    """503s for a while: checks thin out (gaps grow up to max_backoff, never beyond, never shorter than the
    backoff), status counts the failures; afterwards the first success resets the count and polling is back
    to every second."""
    r = remote("demo")
    path = tmp_path / "checkouts" / "demo"
    config = write_config(agent_config(forge, tmp_path, [repo_entry(r, path, every="1s")],
                                       max_backoff=f"{MAX_BACKOFF:g}s"))
    d = daemon(config)
    wait_until(lambda: gitfix.head(path) == r.head(), 20, what="the first clone")
    wait_until(lambda: len(forge.head_requests()) >= 3, 15, what="a few polls")

    forge.fail_for(600, 503)
    d.wait_log(r"demo \[schedule\] error: .*failures in a row: 3\b", 60)
    during = status_of(cli, config)
    assert during["failures_in_a_row"] >= 3, during
    assert during["failing_since"] and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", during["failing_since"])
    assert during["last_result"].startswith("error") and "503" in (during["last_error"] or ""), during
    new = r.pusher.commit()  # upstream moves during the outage
    d.wait_log(r"demo \[schedule\] error: .*failures in a row: 4\b", 40)
    forge.clear_faults()  # the outage ends
    wait_until(lambda: gitfix.head(path) == new, 30, interval=0.2, what="the sync after the outage")
    t_back = time.monotonic()
    wait_until(lambda: len(forge.head_requests(since=t_back)) >= 4, 15, interval=0.2,
               what="polling again after the outage")
    log = d.log()
    assert d.alive() and "Traceback" not in log

    checks = checks_in_log(log)
    failed = [c for c in checks if c[2].startswith("error")]
    assert len(failed) == 4, log[-3000:]
    first_ok = next(c for c in checks if c[0] > failed[-1][1])
    assert first_ok[2].startswith("updated"), first_ok
    # from one failing check's end to the next check's start: ~2, ~4, then max_backoff (capped from 8, 16)
    runs = failed + [first_ok]
    gaps = [round(b[0] - a[1], 2) for a, b in zip(runs, runs[1:])]
    slack = 1.5  # a late scheduler on a busy machine; never early
    for n, gap in enumerate(gaps, start=1):
        want = min(MAX_BACKOFF, 2.0 * 2 ** (n - 1))
        assert 0.8 * want - 0.3 <= gap <= want + slack, f"after {n} failures: gaps {gaps}"
    assert gaps[0] < gaps[1] < gaps[2] - 1, f"gaps grow: {gaps}"
    assert max(gaps) <= MAX_BACKOFF + slack, gaps

    # the forge saw the same: a check retries a few times inside itself, never more than 4
    outage = [q for q in forge.requests if q["status"] == 503]
    assert 4 <= len(outage) <= 4 * len(failed), len(outage)

    after = status_of(cli, config)
    assert after["failures_in_a_row"] == 0 and after["failing_since"] is None, after
    assert after["local_sha"] == new and after["last_error"] is None, after
    # back to the 1 s cadence: one answered request about every second
    later = forge.head_requests(since=t_back)
    assert all(q["status"] in (200, 304) for q in later), [q["status"] for q in later]
    cadence = [b["t"] - a["t"] for a, b in zip(later, later[1:])]
    assert max(cadence) < 2.5 and sum(cadence) / len(cadence) < 1.6, cadence
    assert d.stop() == 0


# ---- a git remote that goes away -----------------------------------------------------------------------------
def test_git_remote_moved_away_is_an_error_then_syncs_when_back(tmp_path, remote, write_config, cli):
    """A git-only repo (no API) whose bare repository disappears: a one-line error naming the cause, the
    checkout untouched; once it is back, the next check updates."""
    r = remote("plain")
    path = tmp_path / "checkouts" / "plain"
    path.parent.mkdir()
    gitfix.clone(r.bare, path)
    config = write_config({"agent": {"state_dir": str(tmp_path / "state")},
                           "repos": [{"name": "plain", "url": r.url, "branch": "main", "path": str(path)}]})
    first = cli("check", "-c", config)
    assert first.returncode == 0 and line(first, "plain") == f"plain: up-to-date {r.head()[:7]}", first.output

    new = r.pusher.commit()
    before = snapshot(path)
    away = r.bare.with_name("plain-away.git")
    r.bare.rename(away)
    try:
        down = cli("check", "-c", config)
        assert down.returncode == 1, down.output
        msg = line(down, "plain")
        assert msg.startswith("plain: error: "), msg
        assert str(r.bare) in msg and ("does not appear to be a git repository" in msg
                                       or "Could not read from remote" in msg), msg
        assert "Traceback" not in down.output
        assert snapshot(path) == before
        st = status_of(cli, config, "plain")
        assert st["failures_in_a_row"] == 1 and st["local_sha"] != new
    finally:
        away.rename(r.bare)
    back = cli("check", "-c", config)
    assert back.returncode == 0 and line(back, "plain").startswith("plain: updated "), back.output
    assert gitfix.head(path) == new
    assert status_of(cli, config, "plain")["failures_in_a_row"] == 0


# ---- the checkout changes under the daemon -------------------------------------------------------------------
def test_checkout_deleted_while_running_is_cloned_again(tmp_path, forge, remote, write_config, daemon):
    """rm -rf of the checkout while the daemon runs: the next check clones it again."""
    r = remote("demo")
    path = tmp_path / "checkouts" / "demo"
    config = write_config(agent_config(forge, tmp_path, [repo_entry(r, path, every="1s")]))
    d = daemon(config)
    wait_until(lambda: gitfix.head(path) == r.head(), 20, what="the first clone")
    d.wait_log(r"demo \[schedule\] cloned ", 10)
    shutil.rmtree(path)
    new = r.pusher.commit()
    wait_until(lambda: gitfix.head(path) == new, 20, interval=0.1, what="the checkout cloned again")
    assert len(re.findall(r"demo \[schedule\] cloned ", d.log())) == 2, d.log()[-2000:]
    assert gitfix.git("fsck", "--no-dangling", cwd=path) == ""
    assert not list(path.parent.glob(".demo.sync-agent-clone-*"))
    assert d.alive() and "Traceback" not in d.log()
    assert d.stop() == 0


def test_checkout_replaced_by_a_plain_directory_is_left_alone(tmp_path, forge, remote, write_config, daemon, cli):
    """The checkout replaced by a directory with a file: reported as not a git checkout, nothing touched."""
    r = remote("demo")
    path = tmp_path / "checkouts" / "demo"
    config = write_config(agent_config(forge, tmp_path, [repo_entry(r, path, every="1s")]))
    d = daemon(config)
    wait_until(lambda: gitfix.head(path) == r.head(), 20, what="the first clone")
    shutil.rmtree(path)
    path.mkdir()
    (path / "notes.txt").write_text("mine, not a checkout\n")
    r.pusher.commit()
    mark = d.mark()
    d.wait_log(r"demo \[schedule\] error: .*not a git checkout", 15, since=mark)
    st = status_of(cli, config)
    assert "not a git checkout" in (st["last_error"] or ""), st
    assert st["failures_in_a_row"] >= 1
    assert sorted(p.name for p in path.iterdir()) == ["notes.txt"]
    assert (path / "notes.txt").read_text() == "mine, not a checkout\n"
    assert not list(path.parent.glob(".demo.sync-agent-clone-*"))
    assert d.alive() and "Traceback" not in d.log()
    assert d.stop() == 0


# ---- many repos after one rate limit ----------------------------------------------------------------------
def test_repos_come_back_from_a_rate_limit_spread_out(tmp_path, forge, remote, write_config, daemon):
    """A rate limit names one reset time for every repo on the forge. Twelve repos polling every second wait
    it out without asking (one refused request in all), and afterwards they do not all ask in the same
    instant: each comes back at the reset plus a jitter of its own (up to 2 s)."""
    remotes = [remote(f"r{i:02d}") for i in range(12)]
    paths = {r.full_name: tmp_path / "checkouts" / r.name for r in remotes}
    config = write_config(agent_config(forge, tmp_path, [repo_entry(r, paths[r.full_name], every="1s")
                                                        for r in remotes]))
    d = daemon(config)
    wait_until(lambda: all(gitfix.head(paths[r.full_name]) == r.head() for r in remotes), 30,
               what="every repo cloned")
    forge.rate_limit(3, status=403)  # x-ratelimit-remaining: 0 and one reset time, for every repo
    limit_end = time.monotonic() + 3
    d.wait_log(r"GitHub rate limit reached", 10)
    # the limit, its reset rounded up to the second, the jitter, and a poll more of the slowest repo
    time.sleep(3 + 1 + 2 + 1.5)
    refused = [q for q in forge.requests if q["status"] == 403]
    assert len(refused) == 1, f"{len(refused)} requests refused: once told, the forge is left alone"
    firsts = {}
    for q in forge.head_requests(since=limit_end):
        firsts.setdefault(q["repo"], q["t"])
    assert sorted(firsts) == sorted(paths), "every repo asks again after the limit"
    back = sorted(t - limit_end for t in firsts.values())
    assert back[0] >= -0.05, f"a repo asked before the reset: {back}"
    assert back[-1] - back[0] >= 0.5, f"the repos came back together: {[round(b, 2) for b in back]}"
    assert back[-1] <= 1 + 2 + 1, f"a repo came back late: {[round(b, 2) for b in back]}"
    assert d.alive() and "Traceback" not in d.log()
    assert d.stop() == 0
