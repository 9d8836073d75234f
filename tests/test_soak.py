"""The short soak: bench/soak.py for under a minute, every invariant checked (the long one is in bench/)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_short_soak_keeps_every_promise():
    """20 repos under pushes, force-pushes, deletions, local edits, untracked collisions, local commits, forge
    faults and webhook floods for 45 s: nothing local is lost, unblocked repos follow, resources stay flat, no
    secret leaks."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "45", "--repos", "20",
                           "--seed", "7"], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ok: every invariant held" in done.stdout
