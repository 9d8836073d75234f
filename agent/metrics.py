"""Prometheus metrics for GET /metrics (prometheus_client, a registry of our own, no globals)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, sources_fn, notifier_fn=lambda: None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.checks = Counter("sync_agent_checks", "Checks by repo, trigger and result",
                              ["repo", "trigger", "result"], registry=r)
        self.duration = Histogram("sync_agent_check_duration_seconds", "How long checks took", ["repo"],
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                                  registry=r)
        self.nudges = Counter("sync_agent_nudges", "Webhook deliveries by what became of them",
                              ["outcome"], registry=r)
        self.hook_failures = Counter("sync_agent_hook_failures", "on_change hooks that failed", ["repo"],
                                     registry=r)
        for outcome in ("nudged", "ignored", "duplicate", "rejected"):
            self.nudges.labels(outcome)
        r.register(_ForgeCollector(sources_fn, notifier_fn))

    def observe_check(self, spec, out, trigger):
        self.checks.labels(spec.name, trigger, out.result).inc()
        self.duration.labels(spec.name).observe(out.seconds)
        if out.hook is not None and not out.hook.ok:
            self.hook_failures.labels(spec.name).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ForgeCollector:
    """Reads the forge adapters' and the notifier's own counters at scrape time."""

    def __init__(self, sources_fn, notifier_fn):
        self.sources_fn = sources_fn
        self.notifier_fn = notifier_fn

    def describe(self):
        return []

    def collect(self):
        req = CounterMetricFamily("sync_agent_forge_responses", "Forge API answers by HTTP status",
                                  labels=["forge", "status"])
        left = GaugeMetricFamily("sync_agent_rate_limit_remaining", "Requests left in the forge's quota",
                                 labels=["forge"])
        for src in self.sources_fn().values():
            responses = getattr(src, "responses", None)
            if responses is None:
                continue
            for status, n in sorted(responses.items(), key=lambda kv: str(kv[0])):
                req.add_metric([src.kind, str(status)], n)
            if getattr(src, "rate_remaining", None) is not None:
                left.add_metric([src.kind], src.rate_remaining)
        yield req
        yield left
        sent = CounterMetricFamily("sync_agent_notifications", "Notifications by result", labels=["result"])
        n = self.notifier_fn()
        for key in ("sent", "failed", "dropped"):
            sent.add_metric([key], getattr(n, key, 0) if n is not None else 0)
        yield sent
