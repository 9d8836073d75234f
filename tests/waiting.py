"""Polling helper for tests that wait on another process or thread."""
import time


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    """Call pred until it returns something truthy and return that; AssertionError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
