"""The state store: SQLite (WAL) under state_dir. The only module that speaks SQL."""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Optional

from .errors import AgentError

SCHEMA = """
CREATE TABLE IF NOT EXISTS repo (
    name TEXT PRIMARY KEY,
    branch TEXT, source TEXT, path TEXT,
    local_sha TEXT, remote_sha TEXT, etag TEXT,
    last_check TEXT, last_result TEXT, last_error TEXT,
    failures_in_a_row INTEGER NOT NULL DEFAULT 0, failing_since TEXT,
    next_run TEXT, backup TEXT, last_change TEXT,
    hook TEXT, hook_output TEXT, blocked_key TEXT
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    repo TEXT NOT NULL, at TEXT NOT NULL, first_at TEXT NOT NULL, trigger TEXT NOT NULL,
    result TEXT NOT NULL, old_sha TEXT, new_sha TEXT, detail TEXT,
    seconds REAL NOT NULL, count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS history_repo ON history (repo, id);
"""
STATUS_FIELDS = ("name", "branch", "source", "path", "local_sha", "remote_sha", "last_check", "last_result",
                 "last_error", "failures_in_a_row", "failing_since", "next_run", "backup", "hook")


def iso(epoch: Optional[float]) -> Optional[str]:
    """ISO 8601 UTC with a Z, to the second."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def blocked_key(outcome) -> str:
    """One blocked situation: the same heads and the same reason."""
    return f"{outcome.old_sha}|{outcome.remote_sha}|{outcome.detail}"


class StateError(AgentError):
    pass


class State:
    """Per-repo state and check history; safe to share between threads."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "state.db")
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(repo)")}
            if "blocked_key" not in cols:  # a state.db from before notifications
                self.db.execute("ALTER TABLE repo ADD COLUMN blocked_key TEXT")
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        except (sqlite3.DatabaseError, OSError) as e:
            raise StateError(f"cannot open the state database {self.path}: {e}. If it is damaged, move it "
                             f"aside (mv {self.path} {self.path}.broken); the agent starts a new one and "
                             f"only the check history is lost.") from None
        self.lock = threading.Lock()

    def close(self):
        with self.lock:
            self.db.close()

    def _q(self, sql, args=()):
        with self.lock:
            try:
                return self.db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise StateError(f"state database {self.path}: {e}") from None

    # ---- reading -----------------------------------------------------------------------
    def repo(self, name: str) -> Optional[dict]:
        rows = self._q("SELECT * FROM repo WHERE name = ?", (name,))
        return dict(rows[0]) if rows else None

    def repos(self) -> list:
        return [dict(r) for r in self._q("SELECT * FROM repo ORDER BY name")]

    def history(self, name: Optional[str] = None, limit: int = 50) -> list:
        if name:
            rows = self._q("SELECT * FROM history WHERE repo = ? ORDER BY id DESC LIMIT ?", (name, limit))
        else:
            rows = self._q("SELECT * FROM history ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]

    # ---- writing -----------------------------------------------------------------------
    def record(self, spec, branch, outcome, trigger: str, finished: float):
        """Store one check: the repo's row and a history entry, in one transaction.

        Unchanged checks of the same kind in a row share one history entry (with a count), so
        polling every few seconds for a month does not grow the database without bound.
        """
        now = iso(finished)
        error = outcome.detail if not outcome.ok else None
        failed = outcome.result == "error"
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                row = self.db.execute("SELECT failures_in_a_row, failing_since, remote_sha, backup, hook,"
                                      " hook_output, last_change, blocked_key FROM repo WHERE name = ?",
                                      (spec.name,)).fetchone()
                fails = (row["failures_in_a_row"] if row else 0) + 1 if failed else 0
                since = ((row["failing_since"] if row and row["failing_since"] else now) if failed else None)
                remote = outcome.remote_sha or (row["remote_sha"] if row else None)
                backup = outcome.backup or (row["backup"] if row else None)
                hook = outcome.hook.describe() if outcome.hook else (row["hook"] if row else None)
                hook_out = outcome.hook.output_tail if outcome.hook else (row["hook_output"] if row else None)
                change = now if outcome.moved else (row["last_change"] if row else None)
                # the blocked situation last seen, until a good check clears it (notifications)
                blocked = (blocked_key(outcome) if outcome.result == "blocked" else
                           (row["blocked_key"] if row else None) if failed else None)
                self.db.execute(
                    "INSERT INTO repo (name, branch, source, path, local_sha, remote_sha, etag, last_check,"
                    " last_result, last_error, failures_in_a_row, failing_since, backup, last_change, hook,"
                    " hook_output, blocked_key) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT(name) DO UPDATE SET branch=excluded.branch, source=excluded.source,"
                    " path=excluded.path, local_sha=excluded.local_sha, remote_sha=excluded.remote_sha,"
                    " etag=excluded.etag, last_check=excluded.last_check, last_result=excluded.last_result,"
                    " last_error=excluded.last_error, failures_in_a_row=excluded.failures_in_a_row,"
                    " failing_since=excluded.failing_since, backup=excluded.backup,"
                    " last_change=excluded.last_change, hook=excluded.hook, hook_output=excluded.hook_output,"
                    " blocked_key=excluded.blocked_key",
                    (spec.name, branch, spec.source, spec.path, outcome.new_sha, remote, outcome.etag, now,
                     outcome.summary(), error, fails, since, backup, change, hook, hook_out, blocked))
                last = self.db.execute("SELECT id, trigger, result, old_sha, new_sha, detail FROM history"
                                       " WHERE repo = ? ORDER BY id DESC LIMIT 1", (spec.name,)).fetchone()
                same = (last is not None and not outcome.moved and outcome.hook is None
                        and (last["trigger"], last["result"], last["old_sha"], last["new_sha"], last["detail"])
                        == (trigger, outcome.result, outcome.old_sha, outcome.new_sha, outcome.detail or None))
                if same:
                    self.db.execute("UPDATE history SET at = ?, seconds = ?, count = count + 1 WHERE id = ?",
                                    (now, outcome.seconds, last["id"]))
                else:
                    self.db.execute("INSERT INTO history (repo, at, first_at, trigger, result, old_sha, new_sha,"
                                    " detail, seconds) VALUES (?,?,?,?,?,?,?,?,?)",
                                    (spec.name, now, now, trigger, outcome.result, outcome.old_sha,
                                     outcome.new_sha, outcome.detail or None, outcome.seconds))
                self.db.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.DatabaseError:
                    pass
                raise StateError(f"state database {self.path}: {e}") from None
        return fails

    def set_next_run(self, name: str, when: Optional[float]):
        self._q("UPDATE repo SET next_run = ? WHERE name = ?", (iso(when), name))

    def ensure_repo(self, spec):
        """A row for a configured repo that has not been checked yet, so status lists it."""
        self._q("INSERT OR IGNORE INTO repo (name, branch, source, path) VALUES (?,?,?,?)",
                (spec.name, spec.branch, spec.source, spec.path))

    def prune(self, days: int) -> int:
        cutoff = iso(time.time() - days * 86400)
        with self.lock:
            cur = self.db.execute("DELETE FROM history WHERE at < ?", (cutoff,))
            return cur.rowcount
