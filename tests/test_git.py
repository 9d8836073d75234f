"""The one git helper's error text: git's verdict and its cause, without its advice or our secrets."""
import pytest

from agent.git import stderr_tail

INDEX_LOCK = """fatal: Unable to create '/srv/site/.git/index.lock': File exists.

Another git process seems to be running in this repository, e.g.
an editor opened by 'git commit'. Please make sure all processes
are terminated then try again. If it still fails, a git process
may have crashed in this repository earlier:
remove the file manually to continue.
"""
SSH = """ssh: Could not resolve hostname git.example.invalid: Name or service not known
fatal: Could not read from remote repository.

Please make sure you have the correct access rights
and the repository exists.
"""
DAEMON = """fatal: unable to connect to 127.0.0.1:
127.0.0.1[0: 127.0.0.1]: errno=Connection refused
"""


@pytest.mark.parametrize("stderr, want", [
    (INDEX_LOCK, "fatal: Unable to create '/srv/site/.git/index.lock': File exists."),
    (SSH, "ssh: Could not resolve hostname git.example.invalid: Name or service not known | "
          "fatal: Could not read from remote repository."),
    (DAEMON, "fatal: unable to connect to 127.0.0.1: | 127.0.0.1[0: 127.0.0.1]: errno=Connection refused"),
    ("hint: use --force\nerror: failed to push some refs\n", "error: failed to push some refs"),
    ("warning: one\nwarning: two\n", "warning: one | warning: two"),
    ("", "(no message)"),
])
def test_stderr_tail_keeps_the_verdict_and_its_cause(stderr, want):
    assert stderr_tail(stderr) == want


def test_stderr_tail_redacts_secrets():
    out = stderr_tail("fatal: unable to access 'https://x-access-token:s3cret@host/r/': 403\n", secrets=("s3cret",))
    assert "s3cret" not in out and "***" in out
