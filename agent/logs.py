"""Logging to stderr, as text or JSON lines, with every known secret replaced by ***."""
from __future__ import annotations

import json
import logging
import sys
import time

CHECK_FIELDS = ("repo", "trigger", "result", "old", "new", "seconds")


class _Redacting(logging.Formatter):
    def __init__(self, secrets, as_json):
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self.secrets = list(secrets)
        self.as_json = as_json

    def formatTime(self, record, datefmt=None):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"

    def format(self, record):
        if self.as_json:
            doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                   "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
            for k in CHECK_FIELDS:
                if hasattr(record, k):
                    doc[k] = getattr(record, k)
            if record.exc_info:
                doc["exception"] = self.formatException(record.exc_info)
            text = json.dumps(doc, ensure_ascii=False)
        else:
            text = super().format(record)
        for s in self.secrets:
            text = text.replace(s, "***")
        return text


def setup_logging(level="info", fmt="text", secrets=()):
    """Configure the root logger once; call again (reload) to change level or secrets."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_Redacting([s for s in secrets if s], fmt == "json"))
    root.addHandler(h)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Libraries' debug chatter (request dumps) stays out of our log whatever our level.
    for noisy in ("github", "urllib3", "apscheduler", "tzlocal"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # apprise may name parts of a notification URL (tokens); we log results ourselves.
    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
