"""Every SPEC section 5 situation end to end: `sync-agent check` on real git against the fake GitHub."""
import re

import pytest

import gitfix
from conftest import agent_config, repo_entry
from observe import files, line, snapshot

MODES = ["ff-only", "reset"]
BACKUPS = "refs/sync-agent/backup/"


def backups(case):
    """{backup ref: sha} of the checkout."""
    out = case.git("for-each-ref", "--format=%(refname) %(objectname)", BACKUPS)
    return dict(ln.split() for ln in out.splitlines())


# ---- clone ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("empty_dir", [False, True], ids=["missing", "empty-dir"])
def test_missing_or_empty_path_is_cloned(sync_case, mode, empty_dir):
    """A missing path or an empty directory gets a clone of the branch: `cloned`, exit 0."""
    case = sync_case(checkout=False, mode=mode)
    if empty_dir:
        case.path.mkdir(parents=True)
    done = case.check()
    assert done.returncode == 0, done.output
    assert line(done) == f"demo: cloned {case.remote.head()[:7]}"
    assert case.head() == case.remote.head()
    assert case.git("symbolic-ref", "--short", "HEAD") == "main"
    assert (case.path / "app" / "data.txt").read_text() == "data 1\n"
    assert case.git("status", "--porcelain") == ""
    assert [p.name for p in case.path.parent.iterdir()] == ["demo"], "no clone leftovers beside the checkout"


def test_without_branch_the_default_branch_is_followed(tmp_path, forge, remote, write_config, cli):
    """With no `branch` configured the repository's default branch (here `trunk`) is cloned and followed."""
    r = remote("demo", branch="trunk")
    path = tmp_path / "co"
    config = write_config(agent_config(forge, tmp_path, [repo_entry(r, path, branch=None)]))
    assert cli("check", "-c", config).returncode == 0
    assert gitfix.git("symbolic-ref", "--short", "HEAD", cwd=path) == "trunk" and gitfix.head(path) == r.head()
    new = r.pusher.commit()
    done = cli("check", "-c", config)
    assert done.returncode == 0 and line(done).startswith("demo: updated ") and gitfix.head(path) == new


# ---- paths the agent must not touch ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["dir", "file"])
def test_path_that_is_not_a_checkout_is_left_alone(sync_case, mode, kind):
    """A path holding something else than a git checkout is an error (exit 1) and stays exactly as it was."""
    case = sync_case(checkout=False, mode=mode)
    case.path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "dir":
        case.path.mkdir()
        (case.path / "notes.txt").write_text("my notes\n")
        before = files(case.path)
    else:
        case.path.write_text("a file, not a directory\n")
    done = case.check()
    assert done.returncode == 1, done.output
    assert line(done).startswith("demo: error: ") and "not a git checkout" in line(done)
    if kind == "dir":
        assert files(case.path) == before and not (case.path / ".git").exists()
    else:
        assert case.path.read_text() == "a file, not a directory\n"


@pytest.mark.parametrize("mode", MODES)
def test_checkout_of_another_repository_is_left_alone(sync_case, remote, mode):
    """A checkout whose origin is another repository is an error (exit 1) and is not fetched into or moved."""
    case = sync_case(checkout=False, mode=mode)
    other = remote("other")
    case.remote.pusher.commit()  # demo moved: the agent would act if it took the checkout for its own
    gitfix.clone(other.bare, case.path)
    gitfix.dirty_edit(case.path, "README.md")
    before = snapshot(case.path)
    done = case.check()
    assert done.returncode == 1, done.output
    assert line(done).startswith("demo: error: ") and "another repository" in line(done)
    assert snapshot(case.path) == before
    assert case.git("rev-parse", "origin/main") == other.head()


# ---- up to date --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_up_to_date_asks_once_and_does_not_fetch(sync_case, forge, agent_env, tmp_path, mode):
    """L == R: `up-to-date`, exit 0, one head request to the forge and no git fetch; nothing changes."""
    case = sync_case(mode=mode)
    gitfix.untracked(case.path, "notes.txt", "mine\n")  # dirty does not matter when there is nothing to do
    before = snapshot(case.path)
    trace = tmp_path / "git-trace.log"
    done = case.check(env={**agent_env, "GIT_TRACE": str(trace)})
    assert done.returncode == 0, done.output
    assert line(done) == f"demo: up-to-date {case.remote.head()[:7]}"
    assert len(forge.head_requests()) == 1 and forge.count() == 1
    assert "fetch" not in (trace.read_text() if trace.exists() else "")
    assert not (case.path / ".git" / "FETCH_HEAD").exists()
    assert snapshot(case.path) == before


# ---- behind ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_behind_is_fast_forwarded(sync_case, mode):
    """L behind R with a clean worktree: `updated L..R`, exit 0, HEAD and files are the remote's."""
    case = sync_case(mode=mode)
    old = case.head()
    new = case.remote.pusher.commit({"app/data.txt": "data 2\n"})
    done = case.check()
    assert done.returncode == 0, done.output
    assert line(done) == f"demo: updated {old[:7]}..{new[:7]}"
    assert case.head() == new and case.git("symbolic-ref", "--short", "HEAD") == "main"
    assert (case.path / "app" / "data.txt").read_text() == "data 2\n"
    assert backups(case) == {}, "nothing to save, so no backup"


def test_behind_with_an_edit_that_does_not_collide_is_updated(sync_case):
    """ff-only: a local edit to a file the push does not touch survives the fast-forward."""
    case = sync_case()
    mine = gitfix.dirty_edit(case.path, "app/config.txt")
    new = case.remote.pusher.commit({"app/data.txt": "data 2\n"})
    done = case.check()
    assert done.returncode == 0 and line(done).startswith("demo: updated ")
    assert case.head() == new and (case.path / "app" / "config.txt").read_bytes() == mine


def test_ff_only_blocks_when_a_local_edit_would_be_overwritten(sync_case):
    """ff-only: a dirty edit to a file the push changes blocks the update (exit 1) and keeps the edit."""
    case = sync_case()
    mine = gitfix.dirty_edit(case.path, "README.md")
    case.remote.pusher.commit()  # changes README.md
    before = snapshot(case.path)
    done = case.check()
    assert done.returncode == 1, done.output
    assert line(done).startswith("demo: blocked: local changes would be overwritten")
    assert "README.md" in line(done)
    assert (case.path / "README.md").read_bytes() == mine
    assert snapshot(case.path) == before


def test_ff_only_blocks_when_an_untracked_file_would_be_overwritten(sync_case):
    """ff-only: an untracked file where the push adds one blocks the update and keeps the user's file."""
    case = sync_case()
    gitfix.untracked(case.path, "app/new.txt", "mine\n")
    case.remote.pusher.commit({"app/new.txt": "theirs\n"})
    before = snapshot(case.path)
    done = case.check()
    assert done.returncode == 1, done.output
    assert line(done).startswith("demo: blocked: untracked files would be overwritten")
    assert "app/new.txt" in line(done)
    assert (case.path / "app" / "new.txt").read_text() == "mine\n"
    assert snapshot(case.path) == before


# ---- ahead and diverged, ff-only -----------------------------------------------------------------------------------
def test_ff_only_ahead_is_up_to_date_and_untouched(sync_case):
    """ff-only: local commits the remote lacks give `up-to-date (ahead N)`, exit 0, and stay."""
    case = sync_case()
    gitfix.local_commit(case.path)
    gitfix.local_commit(case.path)
    before = snapshot(case.path)
    done = case.check()
    assert done.returncode == 0, done.output
    assert line(done) == f"demo: up-to-date {before['head'][:7]} (ahead 2)"
    assert snapshot(case.path) == before


@pytest.mark.parametrize("how", ["force-push", "local-commit"])
def test_ff_only_diverged_is_blocked(sync_case, how):
    """ff-only: diverged history (a force push, or local and remote commits) is `blocked: diverged`, untouched."""
    case = sync_case()
    if how == "force-push":
        case.remote.pusher.force_push_rewrite()
    else:
        gitfix.local_commit(case.path)
        case.remote.pusher.commit()
    before = snapshot(case.path)
    done = case.check()
    assert done.returncode == 1, done.output
    assert line(done) == "demo: blocked: diverged"
    assert snapshot(case.path) == before


def test_ff_only_other_branch_checked_out_is_blocked(sync_case):
    """ff-only: HEAD on another branch than the followed one blocks; the user's branch is not moved."""
    case = sync_case()
    case.git("checkout", "-q", "-b", "experiment")
    case.remote.pusher.commit()
    before = snapshot(case.path)
    done = case.check()
    assert done.returncode == 1, done.output
    assert line(done).startswith("demo: blocked: ") and "branch" in line(done)
    assert snapshot(case.path) == before


# ---- reset mode ---------------------------------------------------------------------------------------------------
def assert_reset(case, done, old):
    """The check said `reset`, HEAD is the remote's, and exactly one backup ref keeps the old HEAD."""
    assert done.returncode == 0, done.output
    assert line(done).startswith(f"demo: reset {old[:7]}..{case.remote.head()[:7]}")
    assert case.head() == case.remote.head()
    assert case.git("symbolic-ref", "--short", "HEAD") == "main"
    heads = {ref: sha for ref, sha in backups(case).items() if not ref.endswith(("-worktree", "-ignored"))}
    assert list(heads.values()) == [old], backups(case)
    (ref,) = heads
    assert re.fullmatch(BACKUPS + r"\d{8}T\d{6}Z", ref), ref
    assert ref in line(done)
    status = case.status()
    assert status.returncode == 0 and ref in status.output, status.output
    return ref


def test_reset_mode_diverged_resets_with_a_backup(sync_case):
    """reset: after a force push HEAD becomes the remote's, and the old HEAD is kept under a backup ref."""
    case = sync_case(mode="reset")
    old = case.head()
    case.remote.pusher.force_push_rewrite()
    assert_reset(case, case.check(), old)
    assert case.git("status", "--porcelain") == ""


def test_reset_mode_ahead_resets_with_a_backup(sync_case):
    """reset: local commits are replaced by the remote's head and stay reachable from the backup ref."""
    case = sync_case(mode="reset")
    local = gitfix.local_commit(case.path)
    ref = assert_reset(case, case.check(), local)
    assert case.git("show", f"{ref}:local.txt").startswith("local commit")


def test_reset_mode_dirty_and_behind_stashes_local_work_without_a_git_identity(sync_case, agent_env):
    """reset: dirty edits and untracked files go to a named stash (no git identity needed) and come back."""
    case = sync_case(mode="reset")
    old = case.head()
    mine = gitfix.dirty_edit(case.path, "README.md")
    notes = gitfix.untracked(case.path, "notes/todo.txt", "my notes\n")
    new = case.remote.pusher.commit({"app/data.txt": "data 2\n"})
    done = case.check(env=agent_env)  # agent_env: empty HOME, no user.name/user.email anywhere
    assert_reset(case, done, old)
    assert case.head() == new and case.git("status", "--porcelain") == ""
    assert (case.path / "README.md").read_bytes() != mine and not (case.path / "notes").exists()

    stash = case.git("stash", "list")
    assert "sync-agent" in stash, stash
    status = case.status().output
    assert "stash" in status and re.search(BACKUPS + r"\S+-worktree", status), status
    # The user gets everything back with a plain `git stash pop`.
    case.git("stash", "pop")
    assert (case.path / "README.md").read_bytes() == mine
    assert (case.path / "notes" / "todo.txt").read_bytes() == notes
    assert (case.path / "app" / "data.txt").read_text() == "data 2\n"


# ---- ignored files: git counts them as expendable, the user may not -------------------------------------------------
def ignore_locally(case, *patterns):
    """Ignore PATTERNS in this checkout only (.git/info/exclude), as someone keeping local files would."""
    exclude = case.path / ".git" / "info" / "exclude"
    exclude.parent.mkdir(exist_ok=True)
    with exclude.open("a") as f:
        f.write("".join(p + "\n" for p in patterns))


def test_ff_only_blocks_when_an_ignored_file_would_be_overwritten(sync_case):
    """ff-only: an ignored file at a path the push starts tracking blocks the update; the file stays."""
    case = sync_case()
    ignore_locally(case, "local.conf")
    mine = gitfix.untracked(case.path, "app/local.conf", "my settings\n")
    assert case.git("status", "--porcelain") == ""  # not a local change in git's eyes
    case.remote.pusher.commit({"app/local.conf": "theirs\n"})
    before = snapshot(case.path)
    done = case.check()
    assert done.returncode == 1, done.output
    assert line(done).startswith("demo: blocked: untracked files would be overwritten"), line(done)
    assert "app/local.conf" in line(done)
    assert (case.path / "app" / "local.conf").read_bytes() == mine
    assert snapshot(case.path) == before


@pytest.mark.parametrize("how", ["behind", "diverged"])
def test_reset_mode_saves_ignored_files_in_the_way_in_a_named_stash(sync_case, agent_env, how):
    """reset: ignored files the new commit would overwrite (a file over a file, a directory over a file,
    a file over an ignored directory) go to a stash the agent names; other ignored files stay put."""
    case = sync_case(mode="reset")
    ignore_locally(case, "local.conf", "cache", "build/", "tmp/", "notes.local")
    mine = {"app/local.conf": gitfix.untracked(case.path, "app/local.conf", "my settings\n"),
            "cache": gitfix.untracked(case.path, "cache", "a cache file\n"),
            "build/out.bin": gitfix.untracked(case.path, "build/out.bin", "built here\n"),
            "tmp/a.txt": gitfix.untracked(case.path, "tmp/a.txt", "scratch a\n")}
    kept = {"tmp/keep.txt": gitfix.untracked(case.path, "tmp/keep.txt", "scratch keep\n"),
            "notes.local": gitfix.untracked(case.path, "notes.local", "my notes\n")}
    if how == "diverged":
        gitfix.local_commit(case.path)
    old = case.head()
    assert case.git("status", "--porcelain") == ""
    theirs = {"app/local.conf": "theirs\n", "cache/index.txt": "index\n", "build": "a file now\n",
              "tmp/a.txt": "tracked a\n"}
    case.remote.pusher.commit(theirs)
    done = case.check(env=agent_env)  # no git identity anywhere
    assert_reset(case, done, old)
    for rel, text in theirs.items():
        assert (case.path / rel).read_text() == text, rel
    for rel, content in kept.items():
        assert (case.path / rel).read_bytes() == content, f"{rel} was not in the way and must stay"

    (ref,) = [r for r in backups(case) if r.endswith("-ignored")]
    assert ref in line(done) and "ignored files" in line(done), line(done)
    assert "sync-agent: ignored files" in case.git("stash", "list")
    assert ref in case.status().output
    # Every file that was in the way is in the stash's untracked-files commit, byte for byte.
    for rel, content in mine.items():
        assert (case.git("show", f"{ref}^3:{rel}") + "\n").encode() == content, rel
    saved = set(case.git("ls-tree", "-r", "--name-only", f"{ref}^3").splitlines())
    assert saved == set(mine), saved


def test_reset_mode_without_ignored_files_in_the_way_makes_no_extra_stash(sync_case):
    """reset: ignored files elsewhere are neither stashed nor touched."""
    case = sync_case(mode="reset")
    ignore_locally(case, "*.log")
    log = gitfix.untracked(case.path, "app/run.log", "log lines\n")
    gitfix.local_commit(case.path)
    old = case.head()
    case.remote.pusher.commit({"app/other.txt": "new\n"})
    done = case.check()
    assert_reset(case, done, old)
    assert (case.path / "app" / "run.log").read_bytes() == log
    assert not [r for r in backups(case) if r.endswith("-ignored")] and case.git("stash", "list") == ""


# ---- the forge does not know the branch or the repository ---------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("missing", ["branch", "repository"])
def test_missing_on_the_forge_is_an_error_and_changes_nothing(sync_case, forge, mode, missing):
    """A branch or repository the forge does not have is an error naming it (exit 1); the checkout is untouched."""
    case = sync_case(mode=mode)
    gitfix.dirty_edit(case.path, "README.md")
    if missing == "branch":
        case.remote.pusher.delete_branch()
    else:
        forge.remove_repo(case.remote.full_name)
    before = snapshot(case.path)
    done = case.check()
    assert done.returncode == 1, done.output
    text = line(done)
    assert text.startswith("demo: error: ") and "not found" in text
    assert ("'main'" if missing == "branch" else "acme/demo") in text
    assert "Traceback" not in done.output
    assert snapshot(case.path) == before


@pytest.mark.parametrize("missing", ["branch", "repository"])
def test_missing_on_the_forge_clones_nothing(sync_case, forge, missing):
    """With nothing at the path, a missing branch or repository is an error and creates nothing."""
    case = sync_case(checkout=False)
    if missing == "branch":
        case.remote.pusher.delete_branch()
    else:
        forge.remove_repo(case.remote.full_name)
    done = case.check()
    assert done.returncode == 1 and line(done).startswith("demo: error: ")
    assert not case.path.exists()
    assert not case.path.parent.exists() or list(case.path.parent.iterdir()) == [], "no clone leftovers"


@pytest.mark.parametrize("mode", MODES)
def test_failed_fetch_is_an_error_and_changes_nothing(sync_case, tmp_path, mode):
    """When git cannot fetch from the checkout's origin the check is an error and the checkout stays as it was."""
    case = sync_case(mode=mode)
    case.git("remote", "set-url", "origin", gitfix.file_url(tmp_path / "gone" / "demo.git"))
    gitfix.dirty_edit(case.path, "README.md")
    case.remote.pusher.force_push_rewrite()  # reset mode would reset, had the fetch worked
    before = snapshot(case.path)
    done = case.check()
    assert done.returncode == 1, done.output
    assert line(done).startswith("demo: error: ") and "fetch" in line(done)
    assert "Traceback" not in done.output
    assert snapshot(case.path) == before
