"""A local checkout: what is there, and the few git operations a sync needs."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Optional

from .decide import Place, Relation
from .errors import GitError
from .git import AGENT_IDENTITY, LOCAL_TIMEOUT, NETWORK_TIMEOUT, run_git, stderr_tail

BACKUP_PREFIX = "refs/sync-agent/backup/"

# git's own words (LANG=C) when a fast-forward would overwrite local work.
_WOULD_OVERWRITE = ("would be overwritten by merge", "would be overwritten by checkout")
# Paths the agent hands to git are names, not patterns.
_LITERAL = {"GIT_LITERAL_PATHSPECS": "1"}


def place_of(path: str) -> Place:
    """ABSENT, NOT_GIT or CHECKOUT (FOREIGN is decided by the caller from the origin URL)."""
    try:
        entries = os.listdir(path)
    except FileNotFoundError:
        return Place.ABSENT
    except NotADirectoryError:
        return Place.NOT_GIT
    if not entries:
        return Place.ABSENT
    return Place.CHECKOUT if ".git" in entries else Place.NOT_GIT


def same_repository(url_a: str, url_b: str) -> bool:
    """True when two remote URLs name the same repository (its last path part, case-insensitive).

    Lenient on purpose: https, ssh and file URLs of one repository differ in everything else.
    """
    return _repo_name(url_a) == _repo_name(url_b)


def normalise_url(url: str) -> str:
    """host/path of a git URL, lower-cased, without scheme, user, port or `.git`: for comparing."""
    import re

    u = url.strip().lower()
    u = re.sub(r"^[a-z+]+://", "", u)
    u = re.sub(r"^[^@/]*@", "", u)
    u = re.sub(r"^([^/:]+):(\d+)/", r"\1/", u)  # host:port/
    u = u.replace(":", "/", 1) if "/" not in u.split(":", 1)[0] and ":" in u else u  # scp-like
    u = u.rstrip("/")
    return u[:-4] if u.endswith(".git") else u


def _repo_name(url: str) -> str:
    tail = url.rstrip("/").replace(":", "/").rsplit("/", 1)[-1]
    return (tail[:-4] if tail.endswith(".git") else tail).lower()


class Checkout:
    """One working tree; every git call through run_git, with the secrets to redact."""

    def __init__(self, path: str, secrets=()):
        self.path = path
        self.secrets = tuple(s for s in secrets if s)

    def _git(self, *args, timeout=LOCAL_TIMEOUT, env=None, check=True, input=None):
        return run_git(args, cwd=self.path, timeout=timeout, env=env, check=check, secrets=self.secrets,
                       input=input)

    # ---- reading, cheaply ---------------------------------------------------------------
    def git_dir(self) -> str:
        d = os.path.join(self.path, ".git")
        if os.path.isfile(d):  # a worktree or submodule: "gitdir: PATH"
            with open(d) as f:
                line = f.read().strip()
            if line.startswith("gitdir:"):
                d = os.path.normpath(os.path.join(self.path, line[7:].strip()))
        return d

    def read_head(self) -> tuple[Optional[str], Optional[str]]:
        """(sha of HEAD or None, branch name or None when detached), read from files: no process."""
        gd = self.git_dir()
        try:
            with open(os.path.join(gd, "HEAD")) as f:
                head = f.read().strip()
        except OSError:
            return self._head_by_git()
        if not head.startswith("ref: "):
            return (head or None), None
        ref = head[5:]
        branch = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None
        sha = _read_ref(gd, ref)
        if sha is None and not _unborn(gd, ref):
            return self._head_by_git()
        return sha, branch

    def _head_by_git(self):
        p = self._git("rev-parse", "-q", "--verify", "HEAD^{commit}", check=False)
        sha = p.stdout.strip() or None
        b = self._git("symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip() or None
        return sha, b

    def origin_url(self) -> Optional[str]:
        p = self._git("config", "--get", "remote.origin.url", check=False)
        return p.stdout.strip() or None

    def is_dirty(self) -> bool:
        """Tracked changes or untracked (not ignored) files."""
        return bool(self._git("status", "--porcelain", "--untracked-files=normal").stdout.strip())

    def relation(self, local: Optional[str], remote: str) -> Relation:
        if local is None:
            return Relation.BEHIND  # an unborn branch: anything is a fast-forward
        if local == remote:
            return Relation.EQUAL
        if self._is_ancestor(local, remote):
            return Relation.BEHIND
        if self._is_ancestor(remote, local):
            return Relation.AHEAD
        return Relation.DIVERGED

    def _is_ancestor(self, a: str, b: str) -> bool:
        p = self._git("merge-base", "--is-ancestor", a, b, check=False)
        if p.returncode in (0, 1):  # anything else is an error, not a "no"
            return p.returncode == 0
        raise GitError(f"`git merge-base --is-ancestor` failed (exit {p.returncode}): {stderr_tail(p.stderr)}")

    def count_commits(self, since: str, until: str) -> int:
        return int(self._git("rev-list", "--count", f"{since}..{until}").stdout.strip() or 0)

    # ---- changing ----------------------------------------------------------------------
    def clear_stale_locks(self) -> list:
        """Remove git lock files (index.lock, ref locks) that no live process holds.

        A git killed mid-write (a power cut, SIGKILL of the agent) leaves them behind and every later
        write fails with "File exists". Called only under our repo lock, so no git of ours is at
        work here; a lock still open in any process, or any git process working in this checkout,
        is left alone.
        """
        gd = self.git_dir()
        found = []
        for top in (gd, os.path.join(gd, "refs")):
            for dirpath, _dirs, files in os.walk(top):
                found += [os.path.join(dirpath, f) for f in files if f.endswith(".lock")]
                if dirpath == gd:
                    break  # only the top of .git here; refs/ is walked on its own
        if not found:
            return []
        held = _files_held_open(found)
        if held or _git_working_in(self.path, gd):
            return []
        removed = []
        for f in found:
            try:
                os.unlink(f)
                removed.append(os.path.relpath(f, self.path))
            except OSError:
                pass
        return removed

    def fetch(self, source: str, branch: str, env=None) -> Optional[str]:
        """Fetch only the followed branch into refs/remotes/origin/<branch>; return its sha.

        Returns None when the branch does not exist on the remote.
        """
        ref = f"refs/remotes/origin/{branch}"
        p = self._git("fetch", "--no-tags", "--no-write-fetch-head", "--quiet", source,
                      f"+refs/heads/{branch}:{ref}", timeout=NETWORK_TIMEOUT, env=env, check=False)
        if p.returncode != 0:
            if "couldn't find remote ref" in p.stderr:
                return None
            raise GitError(f"`git fetch {source} {branch}` failed (exit {p.returncode}): "
                           f"{stderr_tail(p.stderr, self.secrets)}", p.returncode, p.stderr)
        return _read_ref(self.git_dir(), ref) or self._git("rev-parse", "--verify", "-q",
                                                           f"{ref}^{{commit}}").stdout.strip()

    def fast_forward(self, sha: str) -> Optional[str]:
        """`git merge --ff-only SHA`; return None on success, git's reason when it refused
        because local edits or untracked files, ignored ones included, would be overwritten.
        Other failures raise."""
        p = self._git("merge", "--ff-only", "--no-overwrite-ignore", "--no-stat", "-q", sha, check=False)
        if p.returncode == 0:
            return None
        if any(w in p.stderr for w in _WOULD_OVERWRITE):
            return _refusal(p.stderr)
        raise GitError(f"`git merge --ff-only {sha[:12]}` failed (exit {p.returncode}): "
                       f"{stderr_tail(p.stderr, self.secrets)}", p.returncode, p.stderr)

    def save_and_reset(self, local: Optional[str], remote: str, dirty: bool) -> str:
        """Keep L under a backup ref, stash dirty work (untracked files too) and any ignored
        files R would put a tracked file over, reset to R.

        Returns a sentence naming where the local work went.
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        saved = []
        if local:
            ref = _free_ref(self, BACKUP_PREFIX + stamp)
            self._git("update-ref", "--create-reflog", "-m", "sync-agent: HEAD before reset", ref, local)
            saved.append(f"{ref} (HEAD was {local[:12]})")
        if dirty:
            msg = f"sync-agent: local changes before reset to {remote[:12]} at {stamp}"
            stash = self._stash(msg, "--include-untracked")
            ref = _free_ref(self, BACKUP_PREFIX + stamp + "-worktree")
            self._git("update-ref", "--create-reflog", "-m", "sync-agent: local changes", ref, stash)
            saved.append(f"stash {stash[:12]} '{msg}' (also {ref})")
        ignored = self._ignored_in_the_way(local, remote)
        if ignored:
            msg = f"sync-agent: ignored files before reset to {remote[:12]} at {stamp}"
            stash = self._stash(msg, "--all", paths=ignored)
            ref = _free_ref(self, BACKUP_PREFIX + stamp + "-ignored")
            self._git("update-ref", "--create-reflog", "-m", "sync-agent: ignored files", ref, stash)
            saved.append(f"stash {stash[:12]} '{msg}' (also {ref})")
        self._git("reset", "--hard", "-q", remote)
        return "; ".join(saved)

    def _stash(self, msg: str, which: str, paths=()) -> str:
        """`git stash push WHICH` (of PATHS only, when given); return the new stash commit."""
        before = self._git("rev-parse", "-q", "--verify", "refs/stash", check=False).stdout.strip()
        if paths:
            self._git("stash", "push", which, "-m", msg, "--pathspec-from-file=-", "--pathspec-file-nul",
                      env={**AGENT_IDENTITY, **_LITERAL}, input="\0".join(paths) + "\0")
        else:
            self._git("stash", "push", which, "-m", msg, env=AGENT_IDENTITY)
        stash = self._git("rev-parse", "-q", "--verify", "refs/stash", check=False).stdout.strip()
        if not stash or stash == before:  # nothing was saved: never go on to the reset
            raise GitError(f"`git stash push {which}` saved nothing; not resetting over {', '.join(paths[:5])}")
        return stash

    def _ignored_in_the_way(self, local: Optional[str], remote: str) -> list:
        """Ignored paths that a reset to REMOTE would overwrite or remove: files where REMOTE adds a
        file, files where it needs a directory, and ignored content of directories where it adds a
        file. git counts ignored files as expendable; their owner may not. Costs one git process,
        and one or two more only when something stands in the way."""
        if local:
            out = self._git("diff", "--name-only", "-z", "--no-renames", "--diff-filter=A", local, remote).stdout
        else:
            out = self._git("ls-tree", "-r", "-z", "--name-only", remote).stdout
        files, dirs, looked, not_dirs = [], [], set(), set()
        for rel in filter(None, out.split("\0")):
            parts = rel.split("/")
            below_a_file = False
            for i in range(1, len(parts)):  # where REMOTE needs a directory
                sub = "/".join(parts[:i])
                if sub not in looked:
                    looked.add(sub)
                    full = os.path.join(self.path, sub)
                    if os.path.islink(full) or (os.path.lexists(full) and not os.path.isdir(full)):
                        files.append(sub)
                        not_dirs.add(sub)
                if sub in not_dirs:  # what stands there goes as a whole; nothing below it to look at
                    below_a_file = True
                    break
            if below_a_file:
                continue
            full = os.path.join(self.path, rel)  # where REMOTE puts a file
            if os.path.islink(full) or os.path.isfile(full):
                files.append(rel)
            elif os.path.isdir(full):
                dirs.append(rel)
        found = []
        if files:  # which of them git ignores (and does not track)
            p = self._git("check-ignore", "-z", "--stdin", input="\0".join(files) + "\0",
                          check=False)
            if p.returncode not in (0, 1):
                raise GitError(f"`git check-ignore` failed (exit {p.returncode}): {stderr_tail(p.stderr)}")
            found += [f for f in p.stdout.split("\0") if f]
        if dirs:
            p = self._git("ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory", "--",
                          *dirs, env=_LITERAL)
            found += [f for f in p.stdout.split("\0") if f]
        return found

    def clone(self, url: str, branch: str, env=None) -> str:
        """Clone the branch into the (missing or empty) path; return the new HEAD sha.

        Cloned beside the target and renamed into place, so an interrupted clone leaves nothing
        half-made at the path.
        """
        parent = os.path.dirname(os.path.abspath(self.path)) or "."
        os.makedirs(parent, exist_ok=True)
        prefix = f".{os.path.basename(self.path)}.sync-agent-clone-"
        for old in os.listdir(parent):  # left by an interrupted clone; we hold the repo lock
            if old.startswith(prefix):
                shutil.rmtree(os.path.join(parent, old), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
        try:
            run_git(["clone", "--quiet", "--no-tags", "--single-branch", "--branch", branch, "--", url, tmp],
                    cwd=parent, timeout=NETWORK_TIMEOUT, env=env, secrets=self.secrets)
            if os.path.isdir(self.path):
                os.rmdir(self.path)  # empty, or place_of() would not have said ABSENT
            os.rename(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        sha, _ = self.read_head()
        return sha


def _files_held_open(paths) -> bool:
    """True when any process has one of these files open (a scan of /proc/*/fd)."""
    want = {os.path.realpath(p) for p in paths}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in want:
                        return True
                except OSError:
                    continue
        except OSError:
            continue
    return False


def _git_working_in(path, git_dir) -> bool:
    """True when a git process has its working directory in this checkout."""
    roots = (os.path.realpath(path), os.path.realpath(git_dir))
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if not f.read().startswith("git"):
                    continue
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if any(cwd == r or cwd.startswith(r + os.sep) for r in roots):
            return True
    return False


def _free_ref(co: Checkout, ref: str) -> str:
    n, cand = 1, ref
    while co._git("rev-parse", "-q", "--verify", cand, check=False).returncode == 0:
        n += 1
        cand = f"{ref}-{n}"
    return cand


def _read_ref(gd: str, ref: str) -> Optional[str]:
    try:
        with open(os.path.join(gd, ref)) as f:
            v = f.read().strip()
        if len(v) >= 40:
            return v
    except OSError:
        pass
    try:
        with open(os.path.join(gd, "packed-refs")) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except OSError:
        pass
    return None


def _unborn(gd: str, ref: str) -> bool:
    """A fresh `git init` has HEAD pointing at a branch with no commit yet."""
    return not os.path.exists(os.path.join(gd, ref)) and not os.path.exists(os.path.join(gd, "packed-refs")) \
        and not os.path.exists(os.path.join(gd, "reftable"))


def _refusal(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    files = [ln for ln in lines if not ln.endswith(":") and not ln.lower().startswith(("please", "aborting",
                                                                                         "error", "merge"))]
    if "untracked working tree files" in stderr:
        what = "untracked files would be overwritten"
    else:
        what = "local changes would be overwritten"
    return f"{what}: {', '.join(files[:5])}" if files else what

