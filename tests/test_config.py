"""The config file as a user meets it: `validate` and `check` on good and bad files."""
import re

import pytest

from agent.config import load_config, parse_duration
from agent.errors import ConfigError

GOOD_HEAD = """\
[agent]
state_dir = "state"

[github]
api_url = "http://127.0.0.1:9/api/v3"
"""

GOOD_REPO_LINES = 'name = "plain"\ngithub = "acme/plain"\npath = "checkouts/plain"'
GOOD_REPO = """
[[repos]]
name = "demo"
github = "acme/demo"
path = "checkouts/demo"
"""


def config_text(*repo_lines, head=GOOD_HEAD):
    """A config with the good head and one `[[repos]]` table per argument (its key lines)."""
    tables = "".join(f"\n[[repos]]\n{lines}\n" for lines in repo_lines)
    return head + tables


def problems(output):
    """The problem lines of a failed run (one per problem)."""
    return [ln for ln in output.splitlines() if ln.strip()]


# (id, config text, key path, what the reason must say)
BAD = [
    ("unknown key", config_text('github = "acme/demo"\npath = "co"\nevrey = "5m"'), "repos[0].evrey",
     "unknown key"),
    ("wrong type", config_text('github = "acme/demo"\npath = "co"\nevery = 5'), "repos[0].every", "string"),
    ("duplicate name", config_text('name = "same"\ngithub = "acme/a"\npath = "a"',
                                   'name = "same"\ngithub = "acme/b"\npath = "b"'), "repos[1].name", "duplicate"),
    ("every and schedule", config_text('github = "acme/demo"\npath = "co"\nevery = "5m"\nschedule = "0 * * * *"'),
     "repos[0]", "not both"),
    ("bad cron", config_text('github = "acme/demo"\npath = "co"\nschedule = "61 * * * *"'), "repos[0].schedule",
     "61"),
    ("bad interval", config_text('github = "acme/demo"\npath = "co"\nevery = "5 minutes"'), "repos[0].every",
     "5 minutes"),
    ("interval too long to schedule", config_text('github = "acme/demo"\npath = "co"\nevery = "99999999999d"'),
     "repos[0].every", "99999999999d"),
    ("max_backoff too long", GOOD_HEAD.replace('state_dir = "state"', 'state_dir = "state"\nmax_backoff = "999999d"')
     + GOOD_REPO, "agent.max_backoff", "999999d"),
    ("missing path", config_text('github = "acme/demo"'), "repos[0].path", "required"),
    ("bad mode", config_text('github = "acme/demo"\npath = "co"\nmode = "merge"'), "repos[0].mode", "merge"),
    ("name with path traversal", config_text('name = "../x"\ngithub = "acme/demo"\npath = "co"'),
     "repos[0].name", "../x"),
    ("bad agent key type", GOOD_HEAD.replace('state_dir = "state"', 'state_dir = "state"\nworkers = "two"')
     + GOOD_REPO, "agent.workers", "whole number"),
]


@pytest.mark.parametrize("text, key, reason", [pytest.param(t, k, r, id=i) for i, t, k, r in BAD])
def test_bad_config_is_refused_with_file_and_key(cli, write_config, text, key, reason):
    """A bad config makes `validate` exit 2 with one line naming the file, the key path and what is wrong."""
    path = write_config(text)
    done = cli("validate", "-c", path)
    assert done.returncode == 2, done.output
    assert "Traceback" not in done.output
    lines = problems(done.output)
    assert len(lines) == 1, done.output
    assert str(path) in lines[0]
    assert re.search(re.escape(key) + r"(\.\w+)?: ", lines[0]), lines[0]
    assert reason in lines[0]


def test_token_in_the_file_is_refused_without_echoing_it(cli, write_config):
    """`[github] token = ...` is refused (exit 2) pointing at token_env/token_file, and the value is not printed."""
    secret = "ghp_PastedIntoTheConfig0123456789"
    path = write_config(GOOD_HEAD + f'token = "{secret}"\n' + GOOD_REPO)
    done = cli("validate", "-c", path)
    assert done.returncode == 2, done.output
    assert "github.token" in done.output and "token_env" in done.output
    assert secret not in done.output
    assert "Traceback" not in done.output


def test_toml_syntax_error_names_the_line(cli, write_config):
    """A TOML syntax error exits 2 naming the file and the line it is on."""
    path = write_config(GOOD_HEAD + "\n[[repos]]\nname = = \"x\"\n")  # line 8
    done = cli("validate", "-c", path)
    assert done.returncode == 2
    assert str(path) in done.output and "line 8" in done.output
    assert "Traceback" not in done.output


def test_every_problem_is_reported_at_once(cli, write_config):
    """Several problems in one file are all listed, one line each, not just the first."""
    path = write_config(config_text('github = "acme/demo"\npath = "a"\nmode = "merge"',
                                    'github = "acme/b"\npath = "b"\nevery = "soon"',
                                    'github = "acme/c"'))
    done = cli("validate", "-c", path)
    assert done.returncode == 2
    lines = problems(done.output)
    assert len(lines) == 3, done.output
    for key in ("repos[0].mode", "repos[1].every", "repos[2].path"):
        assert sum(key in ln for ln in lines) == 1, (key, done.output)


def test_missing_config_file_exits_2(cli, tmp_path):
    """A config path that does not exist exits 2 naming it."""
    done = cli("validate", "-c", tmp_path / "nope.toml")
    assert done.returncode == 2
    assert "nope.toml" in done.output and "Traceback" not in done.output


def test_check_refuses_a_bad_config_and_touches_nothing(cli, write_config, tmp_path):
    """`check` with a bad config exits 2 before creating a checkout or a state directory."""
    path = write_config(config_text('github = "acme/demo"\npath = "co"\nevery = "often"'))
    done = cli("check", "-c", path)
    assert done.returncode == 2 and "repos[0].every" in done.output
    assert not (tmp_path / "co").exists() and not (tmp_path / "state").exists()


def test_validate_prints_each_repo_and_its_next_run(cli, write_config):
    """`validate` on a good config exits 0 and lists every repo with its schedule and a next run time."""
    path = write_config(config_text('name = "web"\ngithub = "acme/web"\npath = "web"\nevery = "10m"',
                                    'name = "docs"\ngithub = "acme/docs"\npath = "docs"\n'
                                    'schedule = "30 4 * * sun"\nmode = "reset"'))
    done = cli("validate", "-c", path)
    assert done.returncode == 0, done.output
    lines = done.output.splitlines()
    for name, sched in (("web", "every 10m"), ("docs", "cron '30 4 * * sun'")):
        at = next(i for i, ln in enumerate(lines) if ln.strip().startswith(f"{name}:"))
        plan = lines[at + 1]
        assert sched in plan and re.search(r"next run \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", plan), done.output
    assert re.search(r"docs:.*\n.*next run \d{4}-\d\d-\d\d 04:30:00", done.output)


def test_defaults_and_relative_paths(write_config, tmp_path):
    """Omitted keys get the SPEC defaults; state_dir and path are relative to the config file."""
    path = write_config(config_text('github = "acme/demo"\npath = "checkouts/demo"', head="[github]\n"))
    config = load_config(str(path), environ={})
    spec = config.repos[0]
    assert config.agent.state_dir == str(tmp_path / ".sync-agent")
    assert config.github.api_url == "https://api.github.com" and config.github.token is None
    assert (spec.name, spec.path, spec.every, spec.mode, spec.hook_timeout) == (
        "demo", str(tmp_path / "checkouts" / "demo"), 300.0, "ff-only", 300.0)


def test_token_comes_from_the_environment(write_config):
    """The token is read from the variable token_env names (GITHUB_TOKEN by default)."""
    path = write_config(GOOD_HEAD + 'token_env = "MY_TOKEN"\n' + GOOD_REPO)
    assert load_config(str(path), environ={"MY_TOKEN": "abc", "GITHUB_TOKEN": "other"}).github.token == "abc"
    plain = write_config(GOOD_HEAD + GOOD_REPO, name="plain.toml")
    assert load_config(str(plain), environ={"GITHUB_TOKEN": "other"}).github.token == "other"


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400),
                                           ("1h30m", 5400)])
def test_parse_duration_reads_intervals(text, seconds):
    """Intervals in s, m, h, d (and combinations) become seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "m", "-5m", "1.5h", "5M", None, 5])
def test_parse_duration_rejects_other_text(text):
    """Anything that is not such an interval is None, not a guess."""
    assert parse_duration(text) is None


def test_repo_webhook_secrets(write_config, tmp_path):
    """A repo may name its own webhook secret (secret_env or secret_file, as in [webhook]). When every repo
    has one, [webhook] needs none; otherwise it still does. A named variable that is unset is an error."""
    listen = '\n[webhook]\nlisten = "127.0.0.1:8787"\n'
    own = 'github = "acme/demo"\npath = "co"\nsecret_env = "DEMO_SECRET"'
    (tmp_path / "other.secret").write_text("from-a-file\n")
    other = 'name = "other"\ngithub = "acme/other"\npath = "co2"\nsecret_file = "other.secret"'
    path = write_config(config_text(own, other) + listen)
    config = load_config(str(path), environ={"DEMO_SECRET": "s3cret"})
    assert [r.secret for r in config.repos] == ["s3cret", "from-a-file"]
    assert config.webhook.secret is None and {"s3cret", "from-a-file"} <= set(config.secrets())
    assert "s3cret" not in repr(config.repos[0])

    def refused(text, environ):
        with pytest.raises(ConfigError) as e:
            load_config(str(write_config(text, name="bad.toml")), environ=environ)
        return e.value.problems

    # one repo without a secret of its own: the [webhook] table needs one again
    assert [p.split(": ", 2)[1] for p in refused(config_text(own, GOOD_REPO_LINES) + listen,
                                                  {"DEMO_SECRET": "x"})] == ["webhook.secret_env"]
    assert [p.split(": ", 2)[1] for p in refused(config_text(own) + listen, {})] == ["repos[0].secret_env"]
    both = own + '\nsecret_file = "other.secret"'
    assert [p.split(": ", 2)[1] for p in refused(config_text(both) + listen, {"DEMO_SECRET": "x"})] == [
        "repos[0].secret_file"]
    # a relay with no [webhook] table is fine when every repo verifies its own deliveries
    relayed = config_text(own) + '\n[relay]\nurl = "https://smee.io/abc"\n'
    assert load_config(str(write_config(relayed, name="relay.toml")), environ={"DEMO_SECRET": "x"}).relays
    assert [p.split(": ", 2)[1] for p in refused(config_text(GOOD_REPO_LINES) + '\n[relay]\nurl = "https://smee.io/a"\n',
                                                  {})] == ["relay"]
