"""The command line: builds the parts from the config; the one place that prints errors and exits."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from . import __version__
from .config import load_config
from .errors import AgentError, ConfigError
from .logs import setup_logging
from .model import OK_RESULTS, short
from .state import STATUS_FIELDS, State

log = logging.getLogger("sync_agent")
PRUNE_EVERY = 3600.0


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    # -c works before and after the command: the subcommand's copy must not reset the main one's.
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, metavar="CONFIG",
                        help="config file (default: ./config.toml)")
    common.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                        help="log lines as text (default) or JSON, for log shippers")
    p = argparse.ArgumentParser(prog="sync-agent", parents=[common],
                                description="Keep local git checkouts in step with branches on GitHub.")
    p.add_argument("--version", action="version", version=f"sync-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    c = sub.add_parser("check", parents=[common], help="check and sync the named repos (default: all) now")
    c.add_argument("names", nargs="*", metavar="NAME")
    s = sub.add_parser("status", parents=[common], help="show each repo's state")
    s.add_argument("--json", action="store_true", help="as JSON (the same as GET /status)")
    sub.add_parser("validate", parents=[common], help="check the config and print the plan")
    h = sub.add_parser("history", parents=[common], help="recent checks from the state store")
    h.add_argument("name", nargs="?", metavar="NAME")
    h.add_argument("--limit", type=int, default=20, metavar="N", help="at most N entries (default 20)")
    h.add_argument("--json", action="store_true", help="as JSON")
    sub.add_parser("notify-test", parents=[common], help="send a test message to every notification target")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config_path = getattr(args, "config", "config.toml")
    log_format = getattr(args, "log_format", "text")
    try:
        config = load_config(config_path)
        setup_logging(config.agent.log_level, log_format, config.secrets())
        return COMMANDS[args.command](config, args)
    except ConfigError as e:
        for line in e.problems:
            print(f"sync-agent: {line}", file=sys.stderr)
        return e.exit_code
    except AgentError as e:
        print(f"sync-agent: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly; point stdout at /dev/null so the final
        # flush at exit does not complain again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


# ---- run ------------------------------------------------------------------------------------
def cmd_run(config, args) -> int:
    from .daemon import Agent
    from .locks import agent_lock

    lock = agent_lock(config.agent.state_dir).acquire(wait=0)
    agent = Agent(config)
    events = {"stop": threading.Event(), "reload": threading.Event()}

    def on_stop(signum, frame):
        events["stop"].set()

    def on_hup(signum, frame):
        events["reload"].set()
        events["stop"].set()  # wake the loop; it tells the two apart

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    log.info("sync-agent %s starting: %d repos, state in %s", __version__, len(config.repos),
             config.agent.state_dir)
    listener = _start_listener(agent, config)
    agent.start()
    relays = _start_relays(agent, config)
    last_prune = 0.0
    try:
        while True:
            events["stop"].wait(timeout=60)
            if events["reload"].is_set():
                events["reload"].clear()
                events["stop"].clear()
                new = _reload(agent, config, args)
                if new.webhook != config.webhook:
                    if listener:
                        listener.stop()
                    listener = _start_listener(agent, new, fatal=False)
                if new.webhook != config.webhook or new.relays != config.relays:
                    for r in relays:
                        r.stop()
                    relays = _start_relays(agent, new)
                config = new
                continue
            if events["stop"].is_set():
                break
            if time.monotonic() - last_prune > PRUNE_EVERY:
                last_prune = time.monotonic()
                agent.state.prune(config.agent.history_days)
    finally:
        log.info("stopping: finishing running checks")
        for r in relays:
            r.stop()
        if listener:
            listener.stop()
        agent.stop()
        lock.release()
    log.info("stopped")
    return 0


def _start_relays(agent, config):
    from .relay import RelayClient

    def check_all():
        for spec in agent.config.repos:
            agent.nudge(spec.name, "relay", via_fetch=False)

    return [RelayClient(url, agent.webhook_app, check_all, i).start() for i, url in enumerate(config.relays)]


def _start_listener(agent, config, fatal=True):
    from .listener import Listener

    if config.webhook is None or config.webhook.port is None:
        return None
    app = agent.webhook_app
    if app.insecure and any(app.key_of(r) is None for r in config.repos):
        log.warning("webhook listener without a secret (insecure_no_secret = true): anyone who can reach "
                    "it can ask for checks")
    try:
        return Listener(agent, config.webhook, lambda: status_report(agent.config, agent.state)).start()
    except OSError as e:
        if fatal:
            agent.stop()
            raise AgentError(str(e)) from None
        log.error("reload: the webhook listener could not start: %s", e)
        return None


def _reload(agent, config, args):
    path = config.path
    try:
        new = load_config(path)
    except ConfigError as e:
        for line in e.problems:
            log.error("reload refused, keeping the running config: %s", line)
        return config
    setup_logging(new.agent.log_level, getattr(args, "log_format", "text"), new.secrets())
    agent.reload(new)
    return new


# ---- check ----------------------------------------------------------------------------------
def cmd_check(config, args) -> int:
    from .daemon import Checker, build_sources, make_notifier

    specs = _pick(config, args.names)
    state = State(config.agent.state_dir)
    notifier = make_notifier(config)
    checker = Checker(config, state, build_sources(config), notifier=notifier)

    def one(spec):
        out = checker.check(spec, "manual")
        checker.record(spec, out, "manual")
        return spec, out

    bad = 0
    with ThreadPoolExecutor(max_workers=config.agent.workers) as pool:
        for spec, out in pool.map(one, specs):
            line = f"{spec.name}: {out.summary()}"
            if out.hook is not None and not out.hook.ok:
                line += f"; {out.hook.describe()}"
            print(line, flush=True)
            bad += out.result not in OK_RESULTS
    if notifier is not None:
        notifier.flush()
        notifier.close()
    state.close()
    return 1 if bad else 0


# ---- notify-test ----------------------------------------------------------------------------
def cmd_notify_test(config, args) -> int:
    from .notify import send_now

    if not config.notify:
        print("no [[notify]] targets configured")
        return 1
    host = os.uname().nodename
    bad = 0
    for t in config.notify:
        ok, why = send_now(t, "sync-agent: test message",
                           f"A test message from sync-agent on {host} ({config.path}). Events: {', '.join(t.on)}.")
        print(f"{t.label}: {'sent' if ok else 'FAILED: ' + why}", flush=True)
        bad += not ok
    return 1 if bad else 0


def _pick(config, names):
    if not names:
        return list(config.repos)
    unknown = [n for n in names if config.repo(n) is None]
    if unknown:
        raise ConfigError([f"{config.path}: no repo named {n!r} (configured: "
                           f"{', '.join(r.name for r in config.repos)})" for n in unknown])
    return [config.repo(n) for n in names]


# ---- status / history -------------------------------------------------------------------------
def status_report(config, state) -> dict:
    """The facts of GET /status and `status --json`: every configured repo, with its stored state."""
    rows = {r["name"]: r for r in state.repos()}
    out = []
    for spec in config.repos:
        r = rows.get(spec.name, {})
        item = {k: r.get(k) for k in STATUS_FIELDS}
        item.update(name=spec.name, branch=spec.branch or r.get("branch"), path=spec.path,
                    source=f"{spec.source}:{spec.slug}" if spec.slug else spec.url,
                    failures_in_a_row=r.get("failures_in_a_row") or 0)
        item["schedule"] = spec.describe_schedule
        item["hook_output"] = r.get("hook_output")
        out.append(item)
    return {"repos": out}


def cmd_status(config, args) -> int:
    state = State(config.agent.state_dir)
    report = status_report(config, state)
    state.close()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    head = ("NAME", "BRANCH", "LOCAL", "REMOTE", "LAST CHECK", "FAILS", "NEXT RUN", "RESULT")
    rows = []
    for r in report["repos"]:
        rows.append((r["name"], r["branch"] or "(default)", short(r["local_sha"]), short(r["remote_sha"]),
                     _when(r["last_check"]), str(r["failures_in_a_row"]), _when(r["next_run"]),
                     r["last_result"] or "not checked yet"))
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*head))
    for r, row in zip(report["repos"], rows):
        print(fmt.format(*row))
        if r["failures_in_a_row"]:
            print(f"    failures in a row: {r['failures_in_a_row']} (since {_when(r['failing_since'])})")
        if r["last_error"] and r["last_error"] not in (r["last_result"] or ""):
            print(f"    error: {r['last_error']}")
        if r["hook"]:
            print(f"    hook: {r['hook']}")
            tail = [ln for ln in (r.get("hook_output") or "").splitlines() if ln.strip()][-3:]
            for ln in tail:
                print(f"      | {ln[:200]}")
        if r["backup"]:
            print(f"    backup: {r['backup']}")
    return 0


def _when(iso_text):
    if not iso_text:
        return "-"
    return iso_text.replace("T", " ")


def cmd_history(config, args) -> int:
    if args.name and config.repo(args.name) is None:
        raise ConfigError([f"{config.path}: no repo named {args.name!r}"])
    if args.limit < 1:
        raise ConfigError(["--limit: want a number of entries of 1 or more"])
    state = State(config.agent.state_dir)
    rows = state.history(args.name, args.limit)
    state.close()
    if args.json:
        keys = ("repo", "at", "first_at", "count", "trigger", "result", "old_sha", "new_sha", "detail", "seconds")
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
        return 0
    for r in rows:
        shas = f"{short(r['old_sha'])}..{short(r['new_sha'])}"
        times = f" x{r['count']} since {_when(r['first_at'])}" if r["count"] > 1 else ""
        detail = f": {r['detail']}" if r["detail"] else ""
        print(f"{_when(r['at'])}  {r['repo']:<16} {r['trigger']:<8} {r['result']}{detail}  {shas}  "
              f"{r['seconds'] * 1000:.0f} ms{times}")
    if not rows:
        print("no checks recorded yet")
    return 0


# ---- validate -------------------------------------------------------------------------------
def cmd_validate(config, args) -> int:
    from .daemon import _local_tz
    from .schedule import make_trigger, next_runs

    tz = ZoneInfo(config.agent.timezone) if config.agent.timezone else _local_tz()
    now = datetime.now(timezone.utc)
    print(f"{config.path}: ok, {len(config.repos)} repos; state in {config.agent.state_dir}")
    for kind in sorted({s.source for s in config.repos} - {"git"}):
        f = config.forges[kind]
        print(f"{kind} API {f.api_url} ({f.token_note})")
    if config.webhook and config.webhook.port:
        print(f"webhook listener on {config.webhook.host}:{config.webhook.port}")
    if config.relays:
        print(f"{len(config.relays)} relay subscription(s)")
    for spec in config.repos:
        src = f"{spec.source} {spec.slug}" if spec.slug else f"git {spec.url}"
        first = next_runs(make_trigger(spec, tz, now), 1, now)
        when = first[0].astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z") if first else "never"
        print(f"  {spec.name}: {src} branch {spec.branch or '(default)'} -> {spec.path}")
        print(f"      {spec.describe_schedule}, mode {spec.mode}; first check at start, next run {when}"
              + (f"; on_change {_show_hook(spec.on_change)}" if spec.on_change else "")
              + ("; its own webhook secret" if spec.secret else ""))
    return 0


def _show_hook(h):
    return " ".join(h) if isinstance(h, tuple) else f"sh -c {h!r}"


COMMANDS = {"run": cmd_run, "check": cmd_check, "status": cmd_status, "validate": cmd_validate,
            "history": cmd_history, "notify-test": cmd_notify_test}
