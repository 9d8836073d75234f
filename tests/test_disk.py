"""A full disk: a fetch or clone that runs out of space is reported and leaves the work tree as it was.

Uses a small tmpfs mounted for the test (root, as on CI); skipped with the reason where mounting is
not allowed.
"""
import os
import subprocess
from pathlib import Path

import pytest

import gitfix
from conftest import agent_config, repo_entry


@pytest.fixture
def small_disk(tmp_path):
    """A 1.5 MiB tmpfs at tmp_path/disk; unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def big_commit(remote, mib=3):
    """Push a commit with `mib` MiB of incompressible data; return its sha."""
    return remote.pusher.commit({"big/blob.bin": os.urandom(mib * 1024 * 1024)}, message="big data")


def tree_snapshot(path):
    """Every file under the checkout but .git, with its bytes."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in Path(path).rglob("*")
            if p.is_file() and ".git" not in p.relative_to(path).parts}


def test_fetch_without_space_is_reported_and_changes_nothing(small_disk, remote, forge, write_config, cli):
    """A push too large for the disk: `check` exits 1 with one line naming the failed fetch; HEAD, the files and
    a local edit are as they were, and git finds the repository sound."""
    r = remote("demo")
    path = small_disk / "demo"
    gitfix.clone(r.bare, path)
    (path / "app" / "data.txt").write_text("my local edit\n")
    before_head, before_tree = gitfix.head(path), tree_snapshot(path)
    big_commit(r)
    config = write_config(agent_config(forge, small_disk.parent, [repo_entry(r, path)]))
    done = cli("check", "-c", config)
    assert done.returncode == 1, done.output
    line = next(ln for ln in done.output.splitlines() if ln.startswith("demo:"))
    assert "error" in line and "fetch" in line, line
    assert "Traceback" not in done.output
    assert gitfix.head(path) == before_head
    assert tree_snapshot(path) == before_tree
    fsck = subprocess.run(["git", "fsck", "--no-dangling", "--no-progress"], cwd=path, capture_output=True,
                          text=True, env=gitfix.git_env())
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_clone_without_space_leaves_nothing_half_made(small_disk, remote, forge, write_config, cli):
    """A clone that does not fit: `check` exits 1 with a one-line error, and neither the path nor a temporary
    clone is left on the disk; once there is room (a smaller path elsewhere) the same repo clones."""
    r = remote("demo")
    big_commit(r)
    path = small_disk / "demo"
    config = write_config(agent_config(forge, small_disk.parent, [repo_entry(r, path)]))
    done = cli("check", "-c", config)
    assert done.returncode == 1, done.output
    assert any(ln.startswith("demo: error") for ln in done.output.splitlines()), done.output
    assert not path.exists()
    assert os.listdir(small_disk) == []  # no temporary clone left behind
    roomy = small_disk.parent / "roomy" / "demo"
    config = write_config(agent_config(forge, small_disk.parent, [repo_entry(r, roomy)]), name="roomy.toml")
    done = cli("check", "-c", config)
    assert done.returncode == 0, done.output
    assert gitfix.head(roomy) == r.head()
