"""The command line as SPEC section 4 describes it: options, names, exit statuses, history."""
import json
import os
import re
import subprocess
import sys


import gitfix
from conftest import ROOT, agent_command, agent_config, repo_entry
from observe import line


def two_repos(tmp_path, forge, remote, write_config, **repo_keys):
    """A config following `web` and `docs`; returns (config path, {name: (Remote, checkout path)})."""
    repos = {n: (remote(n), tmp_path / "checkouts" / n) for n in ("web", "docs")}
    entries = [repo_entry(r, path, **repo_keys) for r, path in repos.values()]
    return write_config(agent_config(forge, tmp_path, entries)), repos


def test_config_option_before_or_after_the_command(cli, tmp_path, forge, remote, write_config):
    """`-c CONFIG` works before the command as well as after it."""
    config, _ = two_repos(tmp_path, forge, remote, write_config)
    before, after = cli("-c", config, "validate"), cli("validate", "--config", config)
    assert before.returncode == after.returncode == 0
    plan = lambda out: re.sub(r"next run .*", "", out)  # noqa: E731 - the interval's jitter moves it
    assert plan(before.output) == plan(after.output) and "web:" in before.output


def test_default_config_is_config_toml_in_the_current_directory(cli, tmp_path, forge, remote, write_config):
    """Without -c the agent reads ./config.toml."""
    write_config(agent_config(forge, tmp_path, [repo_entry(remote(), tmp_path / "co")]))
    done = cli("validate", cwd=tmp_path)
    assert done.returncode == 0 and str(tmp_path / "config.toml") in done.output


def test_check_named_repo_only(cli, tmp_path, forge, remote, write_config):
    """`check NAME` checks that repo alone; the others are not touched or asked about."""
    config, repos = two_repos(tmp_path, forge, remote, write_config)
    done = cli("check", "docs", "-c", config)
    assert done.returncode == 0, done.output
    assert line(done, "docs").startswith("docs: cloned ") and "web:" not in done.output
    assert gitfix.head(repos["docs"][1]) == repos["docs"][0].head()
    assert not repos["web"][1].exists()
    assert {r["repo"] for r in forge.requests} == {"acme/docs"}


def test_check_unknown_name_exits_2(cli, tmp_path, forge, remote, write_config):
    """`check NAME` with a name not in the config exits 2, names it, and checks nothing."""
    config, repos = two_repos(tmp_path, forge, remote, write_config)
    done = cli("check", "nope", "-c", config)
    assert done.returncode == 2 and "'nope'" in done.output and "Traceback" not in done.output
    assert forge.count() == 0 and not repos["web"][1].exists()


def test_check_exits_1_when_any_repo_fails_and_reports_each(cli, tmp_path, forge, remote, write_config):
    """With one repo fine and one failing, `check` prints a line for each and exits 1."""
    config, repos = two_repos(tmp_path, forge, remote, write_config)
    forge.remove_repo(repos["web"][0].full_name)
    done = cli("check", "-c", config)
    assert done.returncode == 1
    assert line(done, "web").startswith("web: error: ") and line(done, "docs").startswith("docs: cloned ")
    assert gitfix.head(repos["docs"][1]) == repos["docs"][0].head()


def test_failures_in_a_row_are_counted_then_cleared(sync_case, forge):
    """`status` counts errors in a row and since when; a good check clears them."""
    case = sync_case()
    forge.remove_repo(case.remote.full_name)
    for _ in range(2):
        assert case.check().returncode == 1
    row = json.loads(case.status("--json").output)["repos"][0]
    assert row["failures_in_a_row"] == 2 and row["failing_since"] and "not found" in row["last_error"]
    assert "failures in a row: 2" in case.status().output

    forge.add_repo(case.remote.full_name, case.remote.bare)
    assert case.check().returncode == 0
    row = json.loads(case.status("--json").output)["repos"][0]
    assert (row["failures_in_a_row"], row["failing_since"], row["last_error"]) == (0, None, None)
    assert row["last_result"].startswith("up-to-date")


def test_history_lists_checks_newest_first(sync_case, cli):
    """`history` shows each check with its trigger and result, newest first; --limit and --json work."""
    case = sync_case(checkout=False)
    case.check()
    new = case.remote.pusher.commit()
    case.check()
    done = cli("history", "-c", case.config_path)
    assert done.returncode == 0
    rows = [ln for ln in done.output.splitlines() if " demo " in ln]
    assert len(rows) == 2 and "updated" in rows[0] and "cloned" in rows[1] and "manual" in rows[0]
    as_json = json.loads(cli("history", "demo", "--json", "--limit", "1", "-c", case.config_path).output)
    assert len(as_json) == 1
    assert (as_json[0]["repo"], as_json[0]["trigger"], as_json[0]["result"], as_json[0]["new_sha"]) == (
        "demo", "manual", "updated", new)


def test_python_dash_m_agent_is_the_same_program(agent_env):
    """`python -m agent` answers like the `sync-agent` command."""
    env = dict(agent_env)
    script = subprocess.run(agent_command(env) + ["--version"], env=env, capture_output=True, text=True)
    module = subprocess.run([*_python_m(env), "--version"], env=env, capture_output=True, text=True)
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout and script.stdout.startswith("sync-agent ")


def _python_m(env):
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "agent"]


def test_output_into_a_closed_pipe_is_not_a_traceback(tmp_path, forge, remote, write_config, agent_env):
    """When the reader of its output goes away (`| head`), the command ends without a traceback."""
    config = write_config(agent_config(forge, tmp_path, [repo_entry(remote(), tmp_path / "co")]))
    env = dict(agent_env)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the program writes anything
    try:
        done = subprocess.run(agent_command(env) + ["validate", "-c", str(config)], env=env, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr, done.stderr
