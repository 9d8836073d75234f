"""What a user can observe of a checkout and of the agent's output, for before/after comparisons."""
import gitfix


def files(path):
    """Every file under path except inside .git, with its bytes."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(path).parts}


def snapshot(path):
    """What a user would call the state of a checkout: branch, HEAD, own refs, stashes, index and files."""
    git = lambda *a: gitfix.git(*a, cwd=path, check=False)  # noqa: E731
    refs = [ln for ln in git("for-each-ref", "--format=%(refname) %(objectname)").splitlines()
            if not ln.startswith("refs/remotes/")]  # a fetch may move remote-tracking refs; that is allowed
    return {"branch": git("symbolic-ref", "-q", "HEAD"), "head": gitfix.head(path), "refs": refs,
            "stash": git("stash", "list"), "status": git("status", "--porcelain", "--untracked-files=all"),
            "files": files(path)}


def line(done, name="demo"):
    """The one line `sync-agent check` printed for the repo `name`."""
    found = [ln for ln in done.output.splitlines() if ln.startswith(f"{name}: ")]
    assert len(found) == 1, done.output
    return found[0]
