"""Real git repositories for tests: bare remotes, a pusher standing in for upstream, local checkouts."""
import itertools
import os
import subprocess
import tempfile
import time
from pathlib import Path

IDENTITY = {"GIT_AUTHOR_NAME": "Fixture Author", "GIT_AUTHOR_EMAIL": "fixture@example.invalid",
            "GIT_COMMITTER_NAME": "Fixture Author", "GIT_COMMITTER_EMAIL": "fixture@example.invalid"}
_counter = itertools.count(1)


def git_env():
    """The caller's environment without GIT_* leaks, plus C locale, no user config and a fixed identity."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(IDENTITY, LC_ALL="C", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
               GIT_TERMINAL_PROMPT="0")
    return env


def git(*args, cwd=None, check=True):
    """Run git and return its stdout without the trailing newline; raise with stderr when it fails."""
    cmd = ["git", "-c", "init.defaultBranch=main", *map(str, args)]
    out = subprocess.run(cmd, cwd=cwd, env=git_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} (in {cwd}) exited {out.returncode}:\n{out.stderr}")
    return out.stdout.rstrip("\n")


def file_url(path):
    """The file:// URL of a local path."""
    return Path(path).absolute().as_uri()


def _unique_line(what="change"):
    """A line no other call produces, so every commit changes something."""
    return f"{what} {next(_counter)} {time.time_ns()}\n"


def make_remote(parent_dir, name, commits=2, branch="main"):
    """Create parent_dir/name.git holding `commits` commits on branch; return its path."""
    bare = Path(parent_dir) / f"{name}.git"
    git("init", "-q", "--bare", "-b", branch, bare)
    if commits:
        with tempfile.TemporaryDirectory(dir=parent_dir) as seed:
            pusher = Pusher(bare, seed, branch)
            pusher.commit({"README.md": f"# {name}\n", "app/config.txt": "setting = 1\n",
                           "app/data.txt": "data 1\n"}, message="initial commit")
            for _ in range(commits - 1):
                pusher.commit()
    return bare


class Pusher:
    """A working clone that commits and pushes to a bare remote, the way upstream developers would."""

    def __init__(self, bare, workdir, branch="main"):
        self.bare, self.workdir, self.branch = Path(bare), Path(workdir), branch
        if not (self.workdir / ".git").exists():
            git("init", "-q", "-b", branch, self.workdir)
            git("remote", "add", "origin", file_url(self.bare), cwd=self.workdir)

    def _run(self, *args, check=True):
        return git(*args, cwd=self.workdir, check=check)

    def _sync(self):
        """Put the work tree on the remote's current branch head (if it has one), discarding leftovers."""
        self._run("fetch", "-q", "--prune", "origin")
        if self._run("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{self.branch}", check=False):
            self._run("checkout", "-q", "-f", "-B", self.branch, f"origin/{self.branch}")
        elif self._run("rev-parse", "--verify", "--quiet", f"refs/heads/{self.branch}", check=False):
            self._run("checkout", "-q", "-f", self.branch)
        self._run("clean", "-q", "-fdx")

    def _write(self, files):
        for rel, content in files.items():
            path = self.workdir / rel
            if content is None:
                path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())

    def _append_readme(self):
        readme = self.workdir / "README.md"
        old = readme.read_bytes() if readme.exists() else b""
        self._write({"README.md": old + _unique_line().encode()})

    def commit(self, files=None, message=None):
        """Commit `files` ({path: str|bytes|None to delete}) or a new README line on top of the remote; push."""
        self._sync()
        if files is None:
            self._append_readme()
        else:
            self._write(files)
        self._run("add", "-A")
        self._run("commit", "-q", "--allow-empty", "-m", message or _unique_line("commit").strip())
        self._run("push", "-q", "origin", f"HEAD:refs/heads/{self.branch}")
        return self._run("rev-parse", "HEAD")

    def head(self):
        """The branch head in the bare remote, or None when the branch does not exist."""
        return git("--git-dir", self.bare, "rev-parse", "--verify", "--quiet",
                   f"refs/heads/{self.branch}", check=False) or None

    def force_push_rewrite(self):
        """Replace the last commit with a different one and force-push: the old head is no ancestor."""
        self._sync()
        amend = not self._run("rev-parse", "--verify", "--quiet", "HEAD~1", check=False)
        if not amend:
            self._run("reset", "-q", "--hard", "HEAD~1")
        self._append_readme()
        self._run("add", "-A")
        self._run("commit", "-q", *(["--amend"] if amend else []), "-m", "rewritten history")
        self._run("push", "-q", "--force", "origin", f"HEAD:refs/heads/{self.branch}")
        return self._run("rev-parse", "HEAD")

    def delete_branch(self):
        """Delete the branch on the remote (even its HEAD branch, which git refuses by default)."""
        git("--git-dir", self.bare, "config", "receive.denyDeleteCurrent", "ignore")
        self._run("push", "-q", "origin", "--delete", self.branch)

    def create_branch(self, name):
        """Create branch `name` on the remote at this branch's head; return its sha."""
        self._sync()
        self._run("push", "-q", "origin", f"HEAD:refs/heads/{name}")
        return self._run("rev-parse", "HEAD")


def clone(bare, dest, branch="main"):
    """A plain clone of the bare repository over file://; returns dest."""
    git("clone", "-q", "-b", branch, file_url(bare), dest)
    return dest


def head(checkout):
    """HEAD of a checkout, or None (no repository, or no commit yet)."""
    if not Path(checkout).is_dir():
        return None
    return git("rev-parse", "--verify", "--quiet", "HEAD", cwd=checkout, check=False) or None


def dirty_edit(checkout, rel):
    """Append a line to a (tracked) file, leaving it uncommitted; return the file's new content."""
    path = Path(checkout) / rel
    data = (path.read_bytes() if path.exists() else b"") + _unique_line("local edit").encode()
    path.write_bytes(data)
    return data


def untracked(checkout, rel, text):
    """Write an untracked file; return its content."""
    path = Path(checkout) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path.read_bytes()


def local_commit(checkout, rel="local.txt"):
    """Commit a local change (fixed identity) that the remote does not have; return its sha."""
    path = Path(checkout) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(_unique_line("local commit").encode())
    git("add", rel, cwd=checkout)
    git("commit", "-q", "-m", "local commit", cwd=checkout)
    return git("rev-parse", "HEAD", cwd=checkout)
