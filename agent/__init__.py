"""sync-agent: keep local git checkouts in step with branches on a forge."""

__version__ = "0.1.0"
