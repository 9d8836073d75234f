"""Relay benchmark: a signed GitHub push relayed over Server-Sent Events (smee.io / gosmee format) against the
same delivery POSTed straight to the listener, each timed until the checkout has the commit.

One daemon has both `[webhook] listen` (+ `secret_env`) and `[relay] url` = a channel of the loopback SSE
server of tests/sse_server.py; its one repo is at every = "1h" and pre-cloned, so only deliveries act.
Each round has one leg per path, each leg pushing its own commit:
  smee:   publish the delivery as smee.io relays it (lower-cased headers + `body` parsed JSON, which the agent
          re-serialises to verify the signature) -> the checkout's HEAD is the new sha (inotify on .git)
  direct: POST /webhook with the same headers and signed bytes -> HEAD is the new sha
  gosmee: publish it as gosmee does (raw body as base64 in `bodyB`) -> HEAD is the new sha   (--no-gosmee: off)
The order of the legs rotates through all orders, so smee and direct alternate which goes first.
Body signed = json.dumps(payload, separators=(",", ":"), ensure_ascii=False), as GitHub signs it.

Run: /tmp/dev/bin/python bench/relay.py [--rounds N] [--quick] [--no-gosmee]
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import statistics
import sys
import time
import uuid

import harness as h
from harness import gitfix, tomlwrite
from sse_server import SSEServer  # tests/ is on sys.path through harness

SECRET_ENV = "BENCH_WEBHOOK_SECRET"
SECRET = "bench-webhook-secret-9c1e"
NAME = "relayed"
# All orders of the three legs, listed so that smee and direct alternate which comes first.
ORDERS = [("smee", "direct", "gosmee"), ("direct", "smee", "gosmee"), ("gosmee", "smee", "direct"),
          ("gosmee", "direct", "smee"), ("smee", "gosmee", "direct"), ("direct", "gosmee", "smee")]
TRIGGER = {"smee": "relay", "gosmee": "relay", "direct": "webhook"}


def delivery(sha: str, before: str) -> tuple[dict, bytes, dict]:
    """(payload, the bytes GitHub would send and sign, headers) of one push delivery."""
    payload = {"ref": "refs/heads/main", "before": before, "after": sha, "created": False, "deleted": False,
               "forced": False, "repository": {"full_name": f"acme/{NAME}", "name": NAME, "default_branch": "main"},
               "head_commit": {"id": sha, "message": "bench"}}
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push", "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
               "User-Agent": "GitHub-Hookshot/bench"}
    return payload, body, headers


def post(port: int, body: bytes, headers: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/webhook", body, headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_until(cond, timeout: float, what: str, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def settle(d: h.Daemon, pause: float = 0.5, timeout: float = 15):
    """Until the daemon's log has not grown for `pause` seconds (its start-up checks are done)."""
    def quiet():
        n = len(d.log_text())
        time.sleep(pause)
        return len(d.log_text()) == n

    wait_until(quiet, timeout, "the daemon to go quiet", 0)


def run(s: h.Scratch, sse: SSEServer, rounds: int, warmup: int, legs: tuple) -> list:
    bare, pusher = s.remote(NAME)
    checkout = gitfix.clone(bare, s.root / "checkouts" / NAME)  # pre-cloned: only deliveries act
    port = h.free_port()
    cfg = s.dir("configs") / "relay.toml"
    cfg.write_text(tomlwrite.dumps({
        "agent": {"state_dir": str(s.root / "state" / "relay"), "log_level": "info"},
        "github": {"api_url": s.forge.base_url, "token_env": h.TOKEN_ENV},
        "webhook": {"listen": f"127.0.0.1:{port}", "secret_env": SECRET_ENV},
        "relay": {"url": sse.url},
        "repos": [{"name": NAME, "github": f"acme/{NAME}", "branch": "main", "path": str(checkout),
                   "every": "1h"}]}))
    d = s.start_daemon(cfg, {**s.env(), SECRET_ENV: SECRET})

    def up():
        if not d.alive():
            raise AssertionError("the daemon exited")
        if "relay[0]: connected" not in d.log_text() or sse.open_streams() != 1:
            return False
        try:
            st, doc = h.get_json(f"http://127.0.0.1:{port}/status")
        except OSError:
            return False
        return st == 200 and bool(doc["repos"][0].get("last_result"))

    # listening, subscribed, and the checks at start and on connect done: only our deliveries act
    wait_until(up, 30, "the daemon to listen, subscribe and finish its first check", 0.05)
    settle(d)
    api_before = len(s.forge.head_requests())
    checks_before = d.checks(NAME)

    watch = h.HeadWatch(checkout)
    times = {leg: [] for leg in legs}
    answer_t = []
    sequence = []  # (leg, measured?) of every leg, in order: matched with the history rows afterwards
    try:
        for i in range(warmup + rounds):
            order = [leg for leg in ORDERS[i % len(ORDERS)] if leg in legs]
            for leg in order:
                before = pusher.head()
                sha = pusher.commit()
                payload, body, headers = delivery(sha, before)
                n = d.checks(NAME)
                time.sleep(0.05)
                t0 = time.monotonic()
                if leg == "direct":
                    status = post(port, body, headers)
                    answer_t.append(time.monotonic() - t0)
                    if status != 202:
                        raise AssertionError(f"POST /webhook answered {status}, want 202")
                elif leg == "smee":
                    if sse.send_smee(headers, payload) != 1:
                        raise AssertionError("the relay channel has no subscriber")
                else:
                    if sse.send_gosmee(headers, body) != 1:
                        raise AssertionError("the relay channel has no subscriber")
                t = watch.wait_for(sha, 15) - t0
                if i >= warmup:
                    times[leg].append(t)
                sequence.append((leg, i >= warmup))
                # the check is recorded before the next push, so no leg finds the previous one still running
                wait_until(lambda: d.checks(NAME) > n, 10, "the check to be recorded")
                time.sleep(0.1)
    finally:
        watch.close()
    api_during = len(s.forge.head_requests()) - api_before
    connections = sse.connections
    t_stop = time.monotonic()
    rc = d.stop()
    t_stop = time.monotonic() - t_stop
    updated = [r for r in d.history(NAME) if r["result"] == "updated"]
    extra_checks = d.checks(NAME) - checks_before - len(sequence)
    own = {leg: [] for leg in legs}  # the agent's own check duration (history), per path
    mismatch = len(updated) != len(sequence)
    if not mismatch:
        for (leg, measured), r in zip(sequence, updated):
            if r["trigger"] != TRIGGER[leg]:
                mismatch = True
            elif measured:
                own[leg].append(r["seconds"])

    S = {leg: h.summary(times[leg]) for leg in legs}
    med = {leg: S[leg]["median"] for leg in legs}
    diffs = [a - b for a, b in zip(times["smee"], times["direct"])]  # same round: they share its load
    rows = [("rounds (after warm-up)", f"{rounds} (+{warmup}), {len(legs)} pushes each", "", "")]
    label = {"smee": "relay, smee format (body re-serialised)", "direct": "direct POST /webhook",
             "gosmee": "relay, gosmee format (bodyB)"}
    for leg in legs:
        rows.append((f"{label[leg]}: send -> HEAD moved, median / p95",
                     f"{h.ms(med[leg])} / {h.ms(S[leg]['p95'])}", "", ""))
    rows += [
        ("relay (smee) - direct, difference of medians", h.ms(med["smee"] - med["direct"]), "", ""),
        ("relay (smee) - direct, per round, median / p95",
         f"{h.ms(statistics.median(diffs))} / {h.ms(h.percentile(diffs, 95))}", "", ""),
    ]
    if "gosmee" in legs:
        rows.append(("relay (gosmee) - direct, difference of medians", h.ms(med["gosmee"] - med["direct"]), "", ""))
    rows.append(("direct: POST answered (202), median", h.ms(statistics.median(answer_t)), "", ""))
    if not mismatch:
        rows.append(("agent's own check (history), median: " + " / ".join(legs),
                     " / ".join(h.ms(statistics.median(own[leg])) for leg in legs), "", ""))
    rows += [
        ("checks beyond one per delivery", str(extra_checks) + ("" if not mismatch else ", history mismatch"),
         "0", h.verdict(extra_checks == 0 and not mismatch)),
        ("relay connections opened (no reconnect)", str(connections), "1", h.verdict(connections == 1)),
        ("API requests during the deliveries", str(api_during), "0 (a verified delivery fetches)",
         h.verdict(api_during == 0)),
        ("daemon stop, SIGTERM -> exit", f"{t_stop:.2f} s", "", ""),
    ]
    h.print_table("relay: signed push relayed over SSE vs POSTed, -> synced, every = \"1h\" (pre-cloned)", rows)
    return ([f"daemon exited {rc}"] if rc else []) + d.problems()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30, help="measured rounds (default 30)")
    ap.add_argument("--quick", action="store_true", help="8 rounds, a smoke run")
    ap.add_argument("--no-gosmee", action="store_true", help="leave out the gosmee-format leg")
    args = ap.parse_args(argv)
    rounds = 8 if args.quick else max(2, args.rounds)
    legs = ("smee", "direct") if args.no_gosmee else ("smee", "direct", "gosmee")
    h.preamble("bench/relay.py" + (" --quick" if args.quick else "") + (" --no-gosmee" if args.no_gosmee else ""))
    with h.Scratch(time_limit=60 + (rounds + 2) * len(legs) * 3) as s:
        # Keep-alive comments every 2 s, as gosmee sends them (smee pings every 30 s): the agent's relay
        # thread only sees its stop on the next data from the channel (READ_TIMEOUT, 90 s, on a silent one).
        sse = SSEServer(channel=f"/bench-{uuid.uuid4().hex[:12]}", keepalive=2.0).start()
        try:
            problems = run(s, sse, rounds, warmup=2, legs=legs)
        except BaseException:
            for d in s.daemons:
                tail = d.log_text().splitlines()[-15:]
                if tail:
                    print(f"\n--- tail of {d.log_path.name} ---\n" + "\n".join(tail), file=sys.stderr)
            raise
        finally:
            for d in s.daemons:  # before the channel goes, so the daemon does not log a lost connection
                d.stop()
            sse.stop()
    print(f"\n{h.load_note()} at end (2 cores: other work running meanwhile skews the figures)")
    if problems:
        print("\ndaemon warnings/errors:")
        for p in problems:
            print("  " + p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
