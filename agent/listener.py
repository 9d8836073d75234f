"""The agent's HTTP endpoints: /webhook, /healthz, /status, /metrics."""
from __future__ import annotations

import json
import logging
import time

from .httpserver import HttpServer, Limits, Response
from .metrics import CONTENT_TYPE
from .page import render_page

log = logging.getLogger("sync_agent.webhook")
ROUTES = {"/webhook": "POST", "/healthz": "GET", "/status": "GET", "/metrics": "GET", "/": "GET"}
TIMELINE = 60  # checks per repo drawn on the page


class Listener:
    """Routes requests to the agent; started and stopped with `sync-agent run`."""

    def __init__(self, agent, settings, status_fn):
        self.agent = agent
        self.settings = settings
        self.status_fn = status_fn
        self.app = agent.webhook_app
        self.server = HttpServer(settings.host, settings.port, self.handle,
                                 Limits(max_body=settings.max_body), early=self.early)

    def start(self):
        self.server.start()
        log.info("listening on http://%s:%d (POST /webhook, GET / /healthz /status /metrics)",
                 self.settings.host, self.server.port)
        return self

    def stop(self):
        self.server.stop()

    def early(self, req):
        """Answers known before the body is read: unknown path, wrong method."""
        want = ROUTES.get(req.path)
        if want is None:
            return _json(404, {"error": f"no such path {req.path[:60]!r}"})
        if req.method != want and not (want == "GET" and req.method == "HEAD"):
            return _json(405, {"error": f"use {want}"}, {"Allow": want})
        return None

    def handle(self, req) -> Response:
        if req.path == "/webhook":
            ans = self.app.handle(req.headers, req.body)
            self.agent.metrics.nudges.labels(ans.kind).inc()
            if ans.kind == "rejected":
                log.warning("webhook from %s rejected: %s %s", req.peer, ans.status, ans.doc.get("error"))
            else:
                log.debug("webhook from %s: %s %s", req.peer, ans.status, ans.doc)
            return _json(ans.status, ans.doc)
        if req.path == "/healthz":
            ok = self.agent.healthy()
            return _json(200 if ok else 503, {"ok": ok})
        if req.path == "/status":
            return _json(200, self.status_fn())
        if req.path == "/":
            report = self.status_fn()
            page = render_page(report, lambda name: self.agent.state.history(name, TIMELINE),
                               time.strftime("%Y-%m-%d %H:%M:%S %Z"))
            return Response(200, page, "text/html; charset=utf-8")
        if req.path == "/metrics":
            return Response(200, self.agent.metrics.render(), CONTENT_TYPE)
        return _json(404, {"error": "no such path"})


def _json(status, doc, headers=None):
    return Response(status, json.dumps(doc, indent=1).encode(), "application/json", headers or {})
