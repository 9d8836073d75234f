"""Value types shared by the modules: what a repo is, and what a check did."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

# Results a check can end with; the first word of Outcome.result is one of these.
CLONED = "cloned"
UPDATED = "updated"
UP_TO_DATE = "up-to-date"
RESET = "reset"
BLOCKED = "blocked"
ERROR = "error"

OK_RESULTS = (CLONED, UPDATED, UP_TO_DATE, RESET)
TRIGGERS = ("schedule", "webhook", "relay", "manual")


@dataclass(frozen=True)
class RepoSpec:
    """One `[[repos]]` entry, validated and with defaults applied."""

    name: str
    path: str  # absolute
    source: str  # "github" or "git"
    slug: Optional[str] = None  # owner/repo on the forge; None for a git-only source
    branch: Optional[str] = None  # None: the repository's default branch
    url: Optional[str] = None
    every: Optional[float] = None  # seconds
    schedule: Optional[str] = None  # 5-field cron
    mode: str = "ff-only"
    on_change: Union[None, str, tuple] = None
    hook_timeout: float = 300.0
    # The repo's own webhook secret, instead of [webhook]'s, and where it was read from.
    secret_env: Optional[str] = None
    secret_file: Optional[str] = None
    secret: Optional[str] = field(default=None, repr=False)

    @property
    def describe_schedule(self) -> str:
        if self.schedule:
            return f"cron '{self.schedule}'"
        return f"every {format_seconds(self.every)} (±10%)"


@dataclass(frozen=True)
class RemoteHead:
    """The branch head as the forge reported it; `etag` lets the next ask be conditional."""

    sha: str
    etag: Optional[str] = None
    changed: bool = True  # False when the forge answered 304 Not Modified


@dataclass
class HookRun:
    """What an on_change command did."""

    returncode: Optional[int]  # None: killed after the timeout or could not start
    seconds: float
    output_tail: str
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.error is None

    def describe(self) -> str:
        if self.error:
            return f"on_change hook failed: {self.error}"
        if self.returncode == 0:
            return f"on_change hook ok in {self.seconds:.1f} s"
        return f"on_change hook failed: exit status {self.returncode} after {self.seconds:.1f} s"


@dataclass
class Outcome:
    """The result of one check of one repo."""

    result: str  # one of the constants above
    old_sha: Optional[str] = None
    new_sha: Optional[str] = None
    remote_sha: Optional[str] = None
    detail: str = ""  # "ahead 2", "diverged", the reason of an error
    backup: Optional[str] = None  # where saved local work went
    hook: Optional[HookRun] = None
    etag: Optional[str] = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result in OK_RESULTS

    @property
    def moved(self) -> bool:
        return self.result in (CLONED, UPDATED, RESET)

    def summary(self) -> str:
        """`updated abc1234..def5678`, `blocked: diverged`, `up-to-date (ahead 2)`..."""
        text = self.result
        if self.result in (UPDATED, RESET) and self.old_sha and self.new_sha:
            text += f" {short(self.old_sha)}..{short(self.new_sha)}"
        elif self.result == CLONED and self.new_sha:
            text += f" {short(self.new_sha)}"
        elif self.result == UP_TO_DATE and self.new_sha:
            text += f" {short(self.new_sha)}"
        if self.detail:
            text += f" ({self.detail})" if self.result == UP_TO_DATE else f": {self.detail}"
        if self.backup:
            text += f"; local work saved in {self.backup}"
        return text


def short(sha: Optional[str]) -> str:
    return sha[:7] if sha else "-"


def format_seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"
