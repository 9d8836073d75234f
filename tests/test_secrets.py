"""SPEC section 10: the token reaches GitHub and nowhere else a user or an attacker could read."""
import base64
import json

import gitfix
from conftest import agent_config, repo_entry
from waiting import wait_until

TOKEN = "ghp_SyncAgentTestToken_7Q2x9Lm4WzK8"
NEEDLES = (TOKEN.encode(), base64.b64encode(f"x-access-token:{TOKEN}".encode()))


def leaks(path):
    """Files under path (recursively) that contain the token, raw or as git's Basic credential."""
    return [str(p) for p in sorted(path.rglob("*")) if p.is_file() and any(n in p.read_bytes() for n in NEEDLES)]


def test_token_is_sent_to_github_and_never_shown_or_stored(tmp_path, forge, remote, write_config, agent_env,
                                                          daemon, cli):
    """With GITHUB_TOKEN set the forge gets it, but no log (debug), status, history, state or .git file holds it."""
    env = {**agent_env, "GITHUB_TOKEN": TOKEN}
    r = remote()
    path = tmp_path / "checkouts" / "demo"
    # The hook prints its environment and fails, so its output lands in the log and the state store.
    hook = 'env; echo "token: ${GITHUB_TOKEN:-none}"; exit 1'
    config = write_config(agent_config(forge, tmp_path, [repo_entry(r, path, every="1s", mode="reset",
                                                                    on_change=hook)], log_level="debug"))
    d = daemon(config, env=env)
    wait_until(lambda: gitfix.head(path) == r.head(), 15, what="the first clone")
    gitfix.dirty_edit(path, "README.md")
    r.pusher.force_push_rewrite()  # a reset with a backup ref and a stash
    wait_until(lambda: gitfix.head(path) == r.head(), 15, what="the reset")
    mark = d.mark()
    forge.remove_repo(r.full_name)  # errors, logged and stored
    d.wait_log(r"demo.* error: ", since=mark)
    forge.add_repo(r.full_name, r.bare)
    new = r.pusher.commit()
    wait_until(lambda: gitfix.head(path) == new, 20, what="recovery after the repository came back")
    d.wait_log(r"DEBUG .*demo.* up-to-date", timeout=15)  # an unchanged poll, logged at debug
    manual = cli("check", "-c", config, env=env)
    assert d.stop() == 0

    assert any(q["headers"].get("authorization") == f"token {TOKEN}" for q in forge.requests)
    log = d.log()
    assert "hook failed" in log and "error: " in log  # the log did cover the noisy paths
    outputs = {"daemon log": log, "check": manual.output}
    for args in (["status"], ["status", "--json"], ["history"], ["history", "--json"], ["validate"]):
        done = cli(*args, "-c", config, env=env)
        assert done.returncode == 0, done.output
        outputs[" ".join(args)] = done.output
    status = json.loads(outputs["status --json"])["repos"][0]
    assert status["backup"] and "hook failed" in status["hook"]
    for what, text in outputs.items():
        assert TOKEN not in text, f"the token shows in {what}"
    assert leaks(tmp_path / "state") == []
    git_dir = path / ".git"
    assert [p for p in leaks(git_dir) if "objects" not in p.relative_to(git_dir).parts] == []
