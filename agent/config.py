"""TOML config -> frozen dataclasses. Every problem names the file, the key path and the reason."""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Optional

from .cron import CronError, parse_cron
from .errors import ConfigError
from .model import RepoSpec

DEFAULT_API = "https://api.github.com"
# forge key in [[repos]] and its table: default API base (None: required when used)
FORGE_APIS = {"github": DEFAULT_API, "gitee": "https://gitee.com/api/v5", "gitlab": "https://gitlab.com/api/v4",
              "gitea": None}
LOG_LEVELS = ("debug", "info", "warning", "error")
MODES = ("ff-only", "reset")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SLUG_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
# Longest interval or backoff: far beyond any real use, far below what datetime arithmetic overflows on.
MAX_DURATION = 365 * 86400.0
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


@dataclass(frozen=True)
class AgentSettings:
    state_dir: str
    log_level: str = "info"
    workers: int = 4
    timezone: Optional[str] = None  # None: the machine's
    max_backoff: float = 600.0
    history_days: int = 30


@dataclass(frozen=True)
class ForgeSettings:
    """A forge's API table ([github], [gitee], [gitlab], [gitea])."""

    kind: str = "github"
    api_url: Optional[str] = DEFAULT_API
    token_env: Optional[str] = None
    token_file: Optional[str] = None
    token: Optional[str] = field(default=None, repr=False)
    token_note: str = ""  # where the token came from, or why there is none

    @property
    def web_url(self) -> str:
        """The web/git host for this API: https://github.com/, https://HOST/ for Enterprise and the rest."""
        m = re.match(r"^(https?://)([^/]+)", self.api_url or "")
        if not m:
            return ""
        host = m.group(2)
        if host == "api.github.com":
            host = "github.com"
        return f"{m.group(1)}{host}/"



@dataclass(frozen=True)
class WebhookSettings:
    host: Optional[str]  # None: no listener (the table only holds the secret, for relays)
    port: Optional[int]
    secret_env: Optional[str] = None
    secret_file: Optional[str] = None
    insecure_no_secret: bool = False
    max_body: int = 1024 * 1024
    secret: Optional[str] = field(default=None, repr=False)


NOTIFY_EVENTS = ("updated", "cloned", "reset", "blocked", "error", "recovered", "hook_failed")
NOTIFY_DEFAULT_ON = ("updated", "blocked", "error", "recovered")


@dataclass(frozen=True)
class NotifyTarget:
    """One `[[notify]]` table. The URLs carry tokens: never shown, only their schemes."""

    index: int
    urls: tuple = field(repr=False, default=())
    urls_env: Optional[str] = None
    on: tuple = NOTIFY_DEFAULT_ON
    repos: Optional[tuple] = None
    failures_before_alert: int = 3

    @property
    def label(self) -> str:
        schemes = sorted({u.split("://", 1)[0] for u in self.urls})
        return f"notify[{self.index}] ({', '.join(schemes) or 'no URL'})"


@dataclass(frozen=True)
class Config:
    path: str
    agent: AgentSettings
    github: ForgeSettings
    webhook: Optional[WebhookSettings]
    repos: tuple
    notify: tuple = ()
    forges: dict = field(default_factory=dict)  # kind -> ForgeSettings, github included
    relays: tuple = field(default=(), repr=False)  # SSE channel URLs (capabilities: not shown)

    def repo(self, name: str) -> Optional[RepoSpec]:
        return next((r for r in self.repos if r.name == name), None)

    def secrets(self) -> tuple:
        """Every secret value the agent holds, for redaction."""
        vals = [f.token for f in self.forges.values()] + [self.github.token]
        vals.append(self.webhook.secret if self.webhook else None)
        vals += [r.secret for r in self.repos]
        vals += [u for t in self.notify for u in t.urls]
        return tuple(v for v in vals if v)


def parse_duration(text) -> Optional[float]:
    """`30s`, `5m`, `1h`, `1d`, `1h30m` -> seconds; None when not a duration."""
    if not isinstance(text, str):
        return None
    m = DURATION_RE.match(text.strip())
    if not m or not text.strip() or not any(m.groups()):
        return None
    d, h, mi, s = (int(x or 0) for x in m.groups())
    return float(d * 86400 + h * 3600 + mi * 60 + s)


class _Problems:
    def __init__(self, fname):
        self.fname = fname
        self.items = []

    def add(self, key, reason):
        self.items.append(f"{self.fname}: {key}: {reason}")


_TYPES = {str: "a string", int: "a whole number", bool: "true or false", float: "a number", list: "an array"}


def _get(p, table, key, path, kinds, default=None):
    """Read table[key] if it has one of `kinds`; else record a problem and return default."""
    if key not in table:
        return default
    v = table[key]
    ok = any(isinstance(v, k) and not (k in (int, float) and isinstance(v, bool)) for k in kinds)
    if not ok:
        want = " or ".join(_TYPES.get(k, k.__name__) for k in kinds)
        p.add(path, f"want {want}, got {type(v).__name__} {_show(v)}")
        return default
    if isinstance(v, str) and "\0" in v:  # no path, URL, name or command can hold one (os calls raise)
        p.add(path, f"must not contain a NUL character, got {_show(v)}")
        return default
    return v


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _unknown(p, table, known, prefix, hints=None):
    for k in table:
        if k not in known:
            hint = (hints or {}).get(k) or _did_you_mean(k, known)
            p.add(f"{prefix}{k}", "unknown key" + (f" ({hint})" if hint else ""))


def _did_you_mean(k, known):
    import difflib
    close = difflib.get_close_matches(k, list(known), n=1, cutoff=0.7)
    return f"did you mean `{close[0]}`?" if close else ""


def _resolve_path(base_dir, value):
    value = os.path.expanduser(value)
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(base_dir, value))


def _read_secret_file(p, key, path):
    try:
        with open(path, encoding="utf-8") as f:
            v = f.read().strip()
    except OSError as e:
        p.add(key, f"cannot read {path}: {e.strerror}")
        return None
    if not v:
        p.add(key, f"{path} is empty")
    return v or None


def load_config(path: str, environ=None) -> Config:
    """Read and validate the config file; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    fname = path
    p = _Problems(fname)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"{fname}: cannot read the config file: no such file"]) from None
    except OSError as e:
        raise ConfigError([f"{fname}: cannot read the config file: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{fname}: TOML syntax error: {e}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{fname}: TOML syntax error: the file is not UTF-8"]) from None
    except RecursionError:  # tomllib recurses into nested inline arrays and tables
        raise ConfigError([f"{fname}: TOML syntax error: arrays or inline tables nested too deeply"]) from None
    base = os.path.dirname(os.path.abspath(path))

    known_tables = {"agent", "webhook", "repos", "notify", "relay", *FORGE_APIS}
    _unknown(p, data, known_tables, "")
    tables = {}
    for t in ("agent", "webhook", *FORGE_APIS):
        v = data.get(t, {})
        if not isinstance(v, dict):
            p.add(t, "want a table")
            v = {}
        tables[t] = v

    agent = _load_agent(p, tables["agent"], base)
    forges = {k: _load_forge(p, k, tables[k], base, env) for k in FORGE_APIS}
    relays = _load_relay(p, data.get("relay"))
    webhook = _load_webhook(p, tables["webhook"], base, env, bool(relays)) if "webhook" in data else None
    repos = _load_repos(p, data.get("repos"), base, agent, env)
    # every repo names a secret of its own (a problem with one is reported at that repo)
    raw = data.get("repos") if isinstance(data.get("repos"), list) else []
    own = bool(raw) and all(isinstance(r, dict) and ("secret_env" in r or "secret_file" in r) for r in raw)
    if webhook is not None and not (webhook.secret_env or webhook.secret_file or webhook.insecure_no_secret or own):
        p.add("webhook.secret_env", "a webhook secret is required (secret_env or secret_file, here or in every "
                                    "repo), or insecure_no_secret = true")
    if relays and webhook is None and not own:
        p.add("relay", "relayed deliveries are verified with the [webhook] secret: add [webhook] with "
                       "secret_env or secret_file (listen is optional), or insecure_no_secret = true")
    for kind in ("gitee", "gitlab", "gitea"):
        users = [r.name for r in repos if r.source == kind]
        if users and not forges[kind].api_url:
            p.add(f"{kind}.api_url", f"required: repos {', '.join(users)} use {kind}")
    notify = _load_notify(p, data.get("notify"), {r.name for r in repos}, env)
    if p.items:
        raise ConfigError(p.items)
    return Config(path=os.path.abspath(path), agent=agent, github=forges["github"], webhook=webhook, repos=repos,
                  notify=notify, forges=forges, relays=relays)


def _load_relay(p, t) -> tuple:
    if t is None:
        return ()
    if not isinstance(t, dict):
        p.add("relay", "want a table with `url`")
        return ()
    _unknown(p, t, {"url"}, "relay.")
    urls = _get(p, t, "url", "relay.url", [str, list], None)
    if urls is None:
        p.add("relay.url", "required: the relay channel URL (https://smee.io/..., or an array of them)")
        return ()
    urls = [urls] if isinstance(urls, str) else urls
    good = []
    for i, u in enumerate(urls):
        if not isinstance(u, str) or not re.match(r"^https?://[^/\s]+/?\S*$", u):
            p.add(f"relay.url[{i}]", "want an http(s) URL of a relay channel")
        else:
            good.append(u)
    return tuple(good)


def _load_notify(p, tables, names, env) -> tuple:
    if tables is None:
        return ()
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        p.add("notify", "want [[notify]] tables")
        return ()
    out = []
    for i, t in enumerate(tables):
        pre = f"notify[{i}]."
        n0 = len(p.items)
        _unknown(p, t, {"urls", "urls_env", "on", "repos", "failures_before_alert"}, pre)
        urls = _get(p, t, "urls", pre + "urls", [list, str], [])
        urls = [urls] if isinstance(urls, str) else urls
        if not all(isinstance(u, str) for u in urls):
            p.add(pre + "urls", "want an array of apprise URLs (strings)")
            urls = []
        uenv = _get(p, t, "urls_env", pre + "urls_env", [str], None)
        if uenv:
            from_env = (env.get(uenv) or "").split()
            if not from_env:
                p.add(pre + "urls_env", f"${uenv} is not set or empty")
            urls = list(urls) + from_env
        elif not urls:
            p.add(pre + "urls", "give apprise URLs in `urls`, or `urls_env` naming an environment variable")
        for u in urls:
            if "://" not in u:
                p.add(pre + ("urls_env" if uenv and u not in (t.get("urls") or []) else "urls"),
                      f"not an apprise URL (scheme://...): {u.split(':', 1)[0][:20]!r}...")
        if urls and len(p.items) == n0:
            from .notify import unusable_urls

            for j in unusable_urls(urls):
                p.add(pre + "urls", f"URL {j + 1} is not one apprise can send to (scheme "
                                    f"{urls[j].split('://', 1)[0][:12]!r})")
        on = _get(p, t, "on", pre + "on", [list], list(NOTIFY_DEFAULT_ON))
        bad = [e for e in on if e not in NOTIFY_EVENTS]
        if bad or not all(isinstance(e, str) for e in on):
            p.add(pre + "on", f"unknown events {bad!r}; want any of {', '.join(NOTIFY_EVENTS)}")
        repos = _get(p, t, "repos", pre + "repos", [list], None)
        if repos is not None and not all(isinstance(r, str) for r in repos):
            p.add(pre + "repos", "want an array of repo names (strings)")
        elif repos is not None:
            unknown = [r for r in repos if r not in names]
            if unknown:
                p.add(pre + "repos", f"no repo named {', '.join(map(repr, unknown))}")
        fba = _get(p, t, "failures_before_alert", pre + "failures_before_alert", [int], 3)
        if fba < 1:
            p.add(pre + "failures_before_alert", f"want at least 1, got {fba}")
        if len(p.items) == n0:
            out.append(NotifyTarget(index=i, urls=tuple(urls), urls_env=uenv, on=tuple(on),
                                    repos=tuple(repos) if repos is not None else None,
                                    failures_before_alert=fba))
    return tuple(out)


def _load_agent(p, t, base) -> AgentSettings:
    pre = "agent."
    _unknown(p, t, {"state_dir", "log_level", "workers", "timezone", "max_backoff", "history_days"}, pre)
    state_dir = _resolve_path(base, _get(p, t, "state_dir", pre + "state_dir", [str], ".sync-agent"))
    level = _get(p, t, "log_level", pre + "log_level", [str], "info").lower()
    if level not in LOG_LEVELS:
        p.add(pre + "log_level", f"want one of {', '.join(LOG_LEVELS)}, got {level!r}")
    workers = _get(p, t, "workers", pre + "workers", [int], 4)
    if not 1 <= workers <= 64:
        p.add(pre + "workers", f"want 1 to 64, got {workers}")
    tz = _get(p, t, "timezone", pre + "timezone", [str], None)
    if tz is not None:
        try:
            import zoneinfo
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            p.add(pre + "timezone", f"unknown time zone {tz!r} (want a name like Europe/Berlin or UTC)")
            tz = None
    mb_text = _get(p, t, "max_backoff", pre + "max_backoff", [str], "10m")
    max_backoff = parse_duration(mb_text)
    if max_backoff is None or not 1 <= max_backoff <= MAX_DURATION:
        p.add(pre + "max_backoff", f"want a duration like \"10m\" (1s to 365d), got {mb_text!r}")
        max_backoff = 600.0
    days = _get(p, t, "history_days", pre + "history_days", [int], 30)
    if days < 1:
        p.add(pre + "history_days", f"want at least 1, got {days}")
    return AgentSettings(state_dir=state_dir, log_level=level if level in LOG_LEVELS else "info",
                         workers=workers, timezone=tz, max_backoff=max_backoff, history_days=days)


def _load_forge(p, kind, t, base, env) -> ForgeSettings:
    pre = f"{kind}."
    hints = {"token": "put the token in an environment variable (token_env) or a file (token_file), "
                      "never in the config"}
    _unknown(p, t, {"api_url", "token_env", "token_file"}, pre, hints)
    api = _get(p, t, "api_url", pre + "api_url", [str], FORGE_APIS[kind])
    api = api.rstrip("/") if api else None
    if api is not None and not re.match(r"^https?://[^/\s]+", api):
        p.add(pre + "api_url", f"want an http(s) URL like {FORGE_APIS[kind] or 'https://HOST/api/v1'}, "
                               f"got {api!r}")
    tenv = _get(p, t, "token_env", pre + "token_env", [str], None)
    tfile = _get(p, t, "token_file", pre + "token_file", [str], None)
    if tenv and tfile:
        p.add(pre + "token_file", "set token_env or token_file, not both")
    token, note = None, ""
    if tfile:
        tfile = _resolve_path(base, tfile)
        token = _read_secret_file(p, pre + "token_file", tfile)
        note = f"token from file {tfile}"
    elif tenv:
        token = env.get(tenv) or None
        note = f"token from ${tenv}" if token else f"${tenv} is not set: asking without a token"
    elif kind == "github" and env.get("GITHUB_TOKEN"):
        token, note = env["GITHUB_TOKEN"], "token from $GITHUB_TOKEN"
    else:
        note = "no token: asking without one"
    return ForgeSettings(kind=kind, api_url=api, token_env=tenv, token_file=tfile, token=token, token_note=note)


def _load_webhook(p, t, base, env, relays=False) -> Optional[WebhookSettings]:
    pre = "webhook."
    _unknown(p, t, {"listen", "secret_env", "secret_file", "insecure_no_secret", "max_body"}, pre,
             {"secret": "put the secret in an environment variable (secret_env) or a file (secret_file)"})
    listen = _get(p, t, "listen", pre + "listen", [str], None)
    host, port = None, None
    if listen is None:
        if not relays:
            p.add(pre + "listen", "required when [webhook] is present (HOST:PORT or PORT)")
    else:
        m = re.fullmatch(r"(?:\[?([^\]]*)\]?:)?(\d{1,5})", listen.strip())
        if not m or not 0 < int(m.group(2)) < 65536:
            p.add(pre + "listen", f"want HOST:PORT like 127.0.0.1:8080, got {listen!r}")
        else:
            host, port = (m.group(1) or "127.0.0.1"), int(m.group(2))
    insecure = _get(p, t, "insecure_no_secret", pre + "insecure_no_secret", [bool], False)
    max_body = _get(p, t, "max_body", pre + "max_body", [int], 1024 * 1024)
    if not 1024 <= max_body <= 64 * 1024 * 1024:
        p.add(pre + "max_body", f"want 1024 to 67108864 bytes, got {max_body}")
    # Without any secret: reported by the caller, who knows whether every repo has one of its own.
    senv, sfile, secret = _load_secret(p, t, pre, base, env, required=not insecure)
    return WebhookSettings(host=host, port=port, secret_env=senv, secret_file=sfile,
                           insecure_no_secret=insecure, max_body=max_body, secret=secret)


def _load_secret(p, t, pre, base, env, required=True):
    """(secret_env, secret_file, secret) of a table; a named variable that is unset is a problem if required."""
    senv = _get(p, t, "secret_env", pre + "secret_env", [str], None)
    sfile = _get(p, t, "secret_file", pre + "secret_file", [str], None)
    secret = None
    if senv and sfile:
        p.add(pre + "secret_file", "set secret_env or secret_file, not both")
    elif sfile:
        sfile = _resolve_path(base, sfile)
        secret = _read_secret_file(p, pre + "secret_file", sfile)
    elif senv:
        secret = env.get(senv) or None
        if not secret and required:
            p.add(pre + "secret_env", f"${senv} is not set (the listener refuses to start without a secret)")
    return senv, sfile, secret


REPO_KEYS = {"name", "branch", "path", "url", "every", "schedule", "mode", "on_change", "hook_timeout",
             "secret_env", "secret_file", *FORGE_APIS}
GITLAB_PATH_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$")


def _load_repos(p, repos, base, agent, env) -> tuple:
    if repos is None:
        p.add("repos", "no [[repos]] entries: nothing to sync")
        return ()
    if not isinstance(repos, list) or not all(isinstance(r, dict) for r in repos):
        p.add("repos", "want [[repos]] tables")
        return ()
    out, names, paths = [], {}, {}
    for i, r in enumerate(repos):
        spec = _load_repo(p, r, f"repos[{i}]", base, agent, env)
        if spec is None:
            continue
        if spec.name in names:
            p.add(f"repos[{i}].name", f"duplicate name {spec.name!r} (also repos[{names[spec.name]}])")
        names.setdefault(spec.name, i)
        if spec.path in paths:
            p.add(f"repos[{i}].path", f"{spec.path} is also the path of repos[{paths[spec.path]}]")
        paths.setdefault(spec.path, i)
        out.append(spec)
    return tuple(out)


def _load_repo(p, r, pre, base, agent, env) -> Optional[RepoSpec]:
    n0 = len(p.items)
    _unknown(p, r, REPO_KEYS, pre + ".")
    kinds = [k for k in FORGE_APIS if k in r]
    if len(kinds) > 1:
        p.add(f"{pre}.{kinds[1]}", f"at most one forge key per repo (also {kinds[0]})")
    source = kinds[0] if kinds else "git"
    slug = _get(p, r, source, f"{pre}.{source}", [str], None) if kinds else None
    url = _get(p, r, "url", pre + ".url", [str], None)
    if slug is not None and not (GITLAB_PATH_RE if source == "gitlab" else SLUG_RE).fullmatch(slug):
        p.add(f"{pre}.{source}", f"want {'group/project' if source == 'gitlab' else 'owner/repo'}, got {slug!r}")
    if slug is None and url is None:
        p.add(pre, "needs `github = \"owner/repo\"` (or gitee, gitlab, gitea) or a git `url`")
    if url is not None and (not url.strip() or url.startswith("-") or any(c in url for c in "\n\r\0 ")):
        p.add(pre + ".url", f"not a git URL: {url!r}")
    default_name = (slug or url or "").rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    default_name = default_name[:-4] if default_name.endswith(".git") else default_name
    name = _get(p, r, "name", pre + ".name", [str], default_name)
    if not NAME_RE.fullmatch(name or "") or name in (".", ".."):
        p.add(pre + ".name", f"{name!r} is not a usable name (letters, digits, . _ -, not starting with . or -)")
    branch = _get(p, r, "branch", pre + ".branch", [str], None)
    if branch is not None and not _valid_branch(branch):
        p.add(pre + ".branch", f"{branch!r} is not a valid branch name")
    path = _get(p, r, "path", pre + ".path", [str], None)
    if path is None and "path" not in r:  # present but unusable: already reported
        p.add(pre + ".path", "required: the local checkout to keep in step")
    elif path is not None and not path.strip():
        p.add(pre + ".path", "must not be empty")
    every_text = _get(p, r, "every", pre + ".every", [str], None)
    schedule = _get(p, r, "schedule", pre + ".schedule", [str], None)
    every = None
    if every_text is not None and schedule is not None:
        p.add(pre + ".schedule", "set `every` or `schedule`, not both")
    if every_text is not None:
        every = parse_duration(every_text)
        if every is None:
            p.add(pre + ".every", f"want an interval like \"30s\", \"5m\", \"1h\", \"1d\", got {every_text!r}")
        elif every < 1:
            p.add(pre + ".every", "must be at least 1s")
        elif every > MAX_DURATION:
            p.add(pre + ".every", f"must be at most 365d, got {every_text!r}")
    if schedule is not None:
        try:
            parse_cron(schedule, agent.timezone or "UTC")
        except CronError as e:
            p.add(pre + ".schedule", f"bad cron expression {schedule!r}: {e}")
    if every_text is None and schedule is None:
        every = 300.0
    mode = _get(p, r, "mode", pre + ".mode", [str], "ff-only")
    if mode not in MODES:
        p.add(pre + ".mode", f"want \"ff-only\" or \"reset\", got {mode!r}")
    hook = _get(p, r, "on_change", pre + ".on_change", [str, list], None)
    if isinstance(hook, list):
        if not hook or not all(isinstance(a, str) for a in hook):
            p.add(pre + ".on_change", "an array must hold the command and its arguments as strings")
        hook = tuple(hook)
    elif isinstance(hook, str) and not hook.strip():
        p.add(pre + ".on_change", "must not be empty")
    timeout = _get(p, r, "hook_timeout", pre + ".hook_timeout", [int, float], 300)
    if not 0 < timeout <= 86400:
        p.add(pre + ".hook_timeout", f"want seconds between 0 and 86400, got {timeout}")
    senv, sfile, secret = _load_secret(p, r, pre + ".", base, env)
    if len(p.items) > n0:
        return None
    return RepoSpec(name=name, path=_resolve_path(base, path), source=source, slug=slug,
                    branch=branch, url=url, every=every, schedule=schedule, mode=mode, on_change=hook,
                    hook_timeout=float(timeout), secret_env=senv, secret_file=sfile, secret=secret)


def _valid_branch(b: str) -> bool:
    if not b or b.startswith(("-", "/")) or b.endswith(("/", ".", ".lock")) or ".." in b or "//" in b:
        return False
    if b.startswith("refs/") or b == "@" or "@{" in b:
        return False
    return not re.search(r"[\x00-\x20\x7f~^:?*\[\\]", b)
