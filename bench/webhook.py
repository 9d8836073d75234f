"""Webhook benchmark: a signed GitHub push delivery to `sync-agent run`, until the checkout has the commit.

Each round pushes one commit, then (in alternating order) measures
  agent: POST /webhook (X-Hub-Signature-256) -> the checkout's HEAD is the new sha (inotify on .git)
  floor: in an identical clone, `git fetch origin main` + `git merge --ff-only SHA`, timed around both
and the overhead is agent - floor of the same round.

Run: /tmp/dev/bin/python bench/webhook.py [--rounds N] [--quick]
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import statistics
import subprocess
import sys
import time
import uuid

import harness as h
from harness import gitfix

SECRET_ENV = "BENCH_WEBHOOK_SECRET"
SECRET = "bench-webhook-secret-9c1e"
NAME = "hooked"


def post_push(port: int, sha: str, before: str) -> tuple[int, float]:
    """POST one signed push delivery; (status, seconds until the answer was read)."""
    body = json.dumps({"ref": "refs/heads/main", "before": before, "after": sha, "created": False,
                       "deleted": False, "forced": False,
                       "repository": {"full_name": f"acme/{NAME}", "name": NAME, "default_branch": "main"},
                       "head_commit": {"id": sha, "message": "bench"}}, separators=(",", ":")).encode()
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-Hub-Signature-256": sig, "User-Agent": "GitHub-Hookshot/bench"}
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/webhook", body, headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - t0
    finally:
        conn.close()


def timed_git(args, cwd, env) -> float:
    t0 = time.monotonic()
    p = subprocess.run(["git", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60)
    t = time.monotonic() - t0
    if p.returncode not in (0, 1) or (p.returncode == 1 and args[0] != "merge-base"):
        raise AssertionError(f"git {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return t


def run(s: h.Scratch, rounds: int, warmup: int) -> list:
    bare, pusher = s.remote(NAME)
    checkout = gitfix.clone(bare, s.root / "checkouts" / NAME)  # pre-cloned: only nudges act
    floor = gitfix.clone(bare, s.root / "floor" / NAME)
    port = h.free_port()
    cfg = s.config("webhook", [{"name": NAME, "github": f"acme/{NAME}", "branch": "main", "path": str(checkout),
                                "every": "1h"}],
                   webhook={"listen": f"127.0.0.1:{port}", "secret_env": SECRET_ENV})
    env = {**s.env(), SECRET_ENV: SECRET}
    d = s.start_daemon(cfg, env)
    git_env = {k: v for k, v in s.env().items() if k != h.TOKEN_ENV}
    git_env.update(LANGUAGE="C", GIT_TERMINAL_PROMPT="0")  # what the agent gives its git processes

    deadline = time.monotonic() + 30
    while True:  # listening, and the check at start is done (so a nudge is the only thing that acts)
        try:
            st, doc = h.get_json(f"http://127.0.0.1:{port}/status")
            if st == 200 and doc["repos"][0].get("last_result"):
                break
        except OSError:
            pass
        if time.monotonic() > deadline or not d.alive():
            raise AssertionError("the daemon did not come up with its first check done within 30 s")
        time.sleep(0.05)
    api_before = len(s.forge.head_requests())

    watch = h.HeadWatch(checkout)
    agent, floor_t, fetch_t, merge_t, extra_t, answer_t, over = [], [], [], [], [], [], []
    try:
        for i in range(warmup + rounds):
            before = pusher.head()
            sha = pusher.commit()
            time.sleep(0.05)

            def measure_agent():
                t0 = time.monotonic()
                status, answered = post_push(port, sha, before)
                if status != 202:
                    raise AssertionError(f"POST /webhook answered {status}, want 202")
                return watch.wait_for(sha, 15) - t0, answered

            def measure_floor():
                f = timed_git(["fetch", "origin", "main"], floor, git_env)
                m = timed_git(["merge", "--ff-only", "--no-stat", "-q", sha], floor, git_env)
                if h.read_head(floor) != sha:
                    raise AssertionError("the floor clone did not reach the commit")
                return f, m

            if i % 2:
                (a, ans), (f, m) = measure_agent(), measure_floor()
            else:
                (f, m), (a, ans) = measure_floor(), measure_agent()
            # The two git processes the agent runs beyond the floor's (rev-parse of the fetched ref,
            # merge-base --is-ancestor), timed the same way in the floor clone, for the diagnosis.
            x = timed_git(["rev-parse", "--verify", "-q", "refs/remotes/origin/main^{commit}"], floor, git_env) + \
                timed_git(["merge-base", "--is-ancestor", before, sha], floor, git_env)
            if i >= warmup:
                agent.append(a)
                answer_t.append(ans)
                fetch_t.append(f)
                merge_t.append(m)
                floor_t.append(f + m)
                extra_t.append(x)
                over.append(a - (f + m))
            time.sleep(0.2)  # let the agent record the check before the next push
    finally:
        watch.close()
    api_during = len(s.forge.head_requests()) - api_before
    d.stop()
    checks = [r["seconds"] for r in d.history(NAME) if r["trigger"] == "webhook" and r["result"] == "updated"]
    checks = checks[warmup:]

    A, F, O = h.summary(agent), h.summary(floor_t), h.summary(over)
    rows = [
        ("rounds (after warm-up)", f"{A['n']} (+{warmup})", "", ""),
        ("agent: POST -> HEAD moved, median", h.ms(A["median"]), "", ""),
        ("agent: p95 / max", f"{h.ms(A['p95'])} / {h.ms(A['max'])}", "", ""),
        ("floor: fetch + merge --ff-only, median", h.ms(F["median"]), "", ""),
        ("floor: p95 / max", f"{h.ms(F['p95'])} / {h.ms(F['max'])}", "", ""),
        ("  floor fetch / merge, median", f"{h.ms(statistics.median(fetch_t))} / {h.ms(statistics.median(merge_t))}",
         "", ""),
        ("overhead (agent - floor, per round), median", h.ms(O["median"]), "<= 20 ms, aim 5",
         h.verdict(O["median"] <= 0.020)),
        ("overhead p95", h.ms(O["p95"]), "", ""),
        ("POST answered (202), median", h.ms(statistics.median(answer_t)), "", ""),
        ("agent's own check duration (history), median", h.ms(statistics.median(checks)) if checks else "-", "", ""),
        ("rev-parse + merge-base in the floor clone, median", h.ms(statistics.median(extra_t)), "", ""),
        ("API requests during the nudges", str(api_during), "0 (a verified delivery fetches)",
         h.verdict(api_during == 0)),
    ]
    h.print_table("webhook: signed push delivery -> synced, every = \"1h\" (pre-cloned)", rows)
    rc = d.stop()
    return ([f"daemon exited {rc}"] if rc else []) + d.problems()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40, help="measured rounds (default 40)")
    ap.add_argument("--quick", action="store_true", help="8 rounds, a smoke run")
    args = ap.parse_args(argv)
    rounds = 8 if args.quick else max(1, args.rounds)
    h.preamble("bench/webhook.py" + (" --quick" if args.quick else ""))
    with h.Scratch(time_limit=60 + rounds * 5) as s:
        try:
            problems = run(s, rounds, warmup=3)
        except BaseException:
            for d in s.daemons:
                tail = d.log_text().splitlines()[-15:]
                if tail:
                    print(f"\n--- tail of {d.log_path.name} ---\n" + "\n".join(tail), file=sys.stderr)
            raise
    print(f"\n{h.load_note()} at end (2 cores: other work running meanwhile skews the figures)")
    if problems:
        print("\ndaemon warnings/errors:")
        for p in problems:
            print("  " + p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
