"""The status page at GET / and the check history (SPEC sections 4, 7 and 9): a real `sync-agent run` daemon
with a listener and two pre-cloned repos on the fake GitHub, moved by webhook nudges; the page as a browser
(headless Chromium) draws it; `sync-agent history`; and, directly, render_page's escaping and State.prune.
"""
import json
import re
import shutil
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

import gitfix
from hooksend import Client, free_port, push_body
from waiting import wait_until

from agent.model import ERROR, UPDATED, Outcome, RepoSpec
from agent.page import render_page
from agent.state import State

SECRET = "page-Secret-6Tn1-never-in-logs"
CHROMIUM = "/usr/bin/chromium"
EXTERNAL = re.compile(r"""(?:\b(?:src|href|action|poster|data)\s*=\s*["']?\s*|url\(\s*["']?\s*|@import\s+["']?\s*)"""
                      r"""(?:https?:)?//""", re.I)


@dataclass
class Paged:
    """A running daemon with a listener; `alpha` was pushed and nudged twice, `beta` once."""

    daemon: object
    client: Client
    config_path: Path
    env: dict
    run_cli: object
    heads: dict  # name -> the head after the pushes

    def cli(self, *args):
        return self.run_cli(*args, "-c", self.config_path, env=self.env)


@pytest.fixture
def paged(tmp_path, forge, remote, write_config, daemon, agent_env, cli):
    """A daemon following alpha and beta, after its first checks and three nudged pushes have been recorded."""
    remotes = {n: remote(n) for n in ("alpha", "beta")}
    paths = {n: tmp_path / "checkouts" / n for n in remotes}
    for n, r in remotes.items():
        paths[n].parent.mkdir(exist_ok=True)
        gitfix.clone(r.bare, paths[n])
    port = free_port()
    config = write_config({
        "agent": {"state_dir": str(tmp_path / "state")},
        "github": {"api_url": forge.base_url},
        "webhook": {"listen": f"127.0.0.1:{port}", "secret_env": "HOOK_SECRET"},
        "repos": [{"name": n, "github": r.full_name, "branch": "main", "path": str(paths[n]), "every": "1h"}
                  for n, r in remotes.items()]})
    env = dict(agent_env, HOOK_SECRET=SECRET)
    d = daemon(config, env=env)
    client = Client(port)

    def status():
        try:
            return {r["name"]: r for r in client.get("/status").json()["repos"]}
        except OSError:
            return None

    wait_until(lambda: (s := status()) and all(r["last_result"] for r in s.values()), 15, 0.05,
               "the first checks")
    for n in ("alpha", "beta", "alpha"):
        old = gitfix.head(paths[n])
        new = remotes[n].pusher.commit()
        assert client.deliver(push_body(remotes[n].full_name, before=old, after=new), secret=SECRET).status == 202
        wait_until(lambda: status()[n]["local_sha"] == new, 10, what=f"{n} at the pushed commit")
    return Paged(d, client, config, env, cli, {n: gitfix.head(p) for n, p in paths.items()})


def test_status_page_is_self_contained_html_naming_repos_and_heads(paged):
    """GET / is an HTML page naming both repos with their current short shas and an inline SVG timeline, and
    loads nothing from elsewhere."""
    r = paged.client.get("/")
    assert r.status == 200, r.text
    assert r.headers["content-type"].startswith("text/html"), r.headers
    page = r.text
    assert page.lstrip().lower().startswith("<!doctype html>")
    for name, head in paged.heads.items():
        assert f">{name}<" in page
        card = page.split(f">{name}<", 1)[1].split('<div class="card">', 1)[0]
        local = re.search(r"<td>local</td><td><code>([0-9a-f]+)</code>", card).group(1)
        assert head.startswith(local) and len(local) >= 7  # the head now, not the one before the pushes
        assert re.search(rf">updated [0-9a-f]{{7}}\.\.{head[:7]}<", card)  # the last result: updated old..new
    assert page.count("<svg") == 2 and "<rect" in page
    assert "updated" in page and "webhook" in page  # the timeline's tooltips say what each check was
    assert not EXTERNAL.search(page), EXTERNAL.search(page).group(0)
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=", page, re.I)
    assert SECRET not in page


def png_pixels(data):
    """(width, height, set of distinct pixels) of an 8-bit, non-interlaced PNG: chunks, zlib, row filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, bytearray(), None
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    assert ihdr is not None, "no IHDR chunk"
    width, height, depth, colour, _, _, interlace = ihdr
    assert depth == 8 and interlace == 0 and colour in (0, 2, 4, 6), ihdr
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1), "IDAT is not height x (1 + width x bytes per pixel)"
    prev, pixels, i = bytearray(stride), set(), 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += stride + 1
        for x in range(stride) if kind else ():
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + ((a + b) >> 1)) & 255
            elif kind == 4:
                c = prev[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels.update(bytes(line[x:x + 3 if bpp >= 3 else 1]) for x in range(0, stride, bpp))
        prev = line
    return width, height, pixels


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM}: the page is not rendered")
def test_status_page_renders_in_headless_chromium(paged, tmp_path):
    """Headless Chromium draws the page: a 1200x900 screenshot with text, cards and the timeline's bars."""
    shot = tmp_path / "page.png"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={shot}", "--window-size=1200,900",
         f"http://127.0.0.1:{paged.client.port}/"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert shot.is_file() and shot.stat().st_size > 0, f"no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}"
    width, height, pixels = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 900)
    assert len(pixels) > 10, f"only {len(pixels)} distinct colours: a blank page?"
    assert bytes.fromhex("f1f3f5") in pixels, "no timeline background drawn"
    assert bytes.fromhex("37b24d") in pixels, "no bar of an `updated` check drawn"


def test_history_lists_checks_with_trigger_and_result(paged):
    """`sync-agent history --json` lists the checks with result and trigger (webhook among them); NAME and
    --limit narrow it."""
    done = paged.cli("history", "--json")
    assert done.returncode == 0, done.output
    rows = json.loads(done.stdout)
    assert {(r["repo"], r["trigger"], r["result"]) for r in rows} >= {
        ("alpha", "webhook", "updated"), ("beta", "webhook", "updated"), ("alpha", "schedule", "up-to-date"),
        ("beta", "schedule", "up-to-date")}
    assert [r["new_sha"] for r in rows if r["repo"] == "alpha"][0] == paged.heads["alpha"]
    assert all(r["at"] and r["seconds"] >= 0 for r in rows)

    limited = paged.cli("history", "alpha", "--limit", "2", "--json")
    assert limited.returncode == 0, limited.output
    two = json.loads(limited.stdout)
    assert len(two) == 2 and {r["repo"] for r in two} == {"alpha"}
    assert [r["trigger"] for r in two] == ["webhook", "webhook"]

    text = paged.cli("history", "alpha", "--limit", "2")
    assert text.returncode == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == 2 and all(" alpha " in ln and "webhook" in ln and "updated" in ln for ln in lines)
    assert paged.heads["alpha"][:7] in lines[0]

    unknown = paged.cli("history", "gamma")
    assert unknown.returncode == 2 and "gamma" in unknown.output


# ---------------------------------------------------------------------------------------------
# the pure parts
# ---------------------------------------------------------------------------------------------
def test_render_page_escapes_values():
    """Text from errors, paths and history (here `<script>`) appears escaped, never as markup."""
    evil = '<script>alert("x")</script>'
    report = {"repos": [{"name": "demo", "branch": "main", "source": "github:acme/demo", "path": f"/srv/{evil}",
                         "local_sha": "a" * 40, "remote_sha": "b" * 40, "last_check": "2024-01-01T00:00:00Z",
                         "last_result": f"error: {evil}", "last_error": f"fetch failed: {evil}",
                         "failures_in_a_row": 2, "failing_since": "2024-01-01T00:00:00Z", "next_run": None,
                         "backup": None, "hook": None}]}
    history = [{"at": "2024-01-01T00:00:00Z", "trigger": "webhook", "result": "error", "seconds": 0.2, "count": 3,
                "detail": evil}]
    page = render_page(report, lambda name: history, f"now {evil}").decode()
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;") >= 4  # path, result, error, tooltip, time
    assert "aaaaaaa" in page and "bbbbbbb" in page and "<svg" in page
    assert not EXTERNAL.search(page)


def test_state_prune_removes_old_history_only(tmp_path):
    """prune(30) drops checks recorded more than 30 days ago and keeps the recent ones."""
    state = State(str(tmp_path / "state"))
    spec = RepoSpec(name="demo", path=str(tmp_path / "co"), source="github", slug="acme/demo", branch="main")
    now = time.time()
    shas = ["%040x" % i for i in range(5)]
    for days, (old, new) in zip((90, 45, 31, 29, 0), zip(shas, shas[1:] + ["f" * 40])):
        state.record(spec, "main", Outcome(UPDATED, old, new, new), "schedule", now - days * 86400)
    state.record(spec, "main", Outcome(ERROR, shas[0], shas[0], detail="network"), "webhook", now - 60 * 86400)
    assert len(state.history("demo", 100)) == 6

    assert state.prune(30) == 4
    left = state.history("demo", 100)
    assert [(r["result"], r["new_sha"]) for r in left] == [("updated", "f" * 40), ("updated", shas[4])]
    assert state.prune(30) == 0
    assert state.repo("demo")["last_check"]  # the repo's own row is kept
    state.close()
