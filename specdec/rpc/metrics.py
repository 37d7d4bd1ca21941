"""Prometheus metrics: the model services' set, and the /metrics endpoint every process serves.

Each server owns its own CollectorRegistry (passed down, never a module-level global), so
several servers in one process (tests) keep separate counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

# Forward-pass latencies from ~1 ms (tiny models, GPUs) to tens of seconds (long CPU prefills).
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class MetricsServer:
    port: int
    _httpd: object

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> MetricsServer | None:
    """Serve GET /metrics for `registry` on a daemon thread. port -1 = off (returns None),
    0 = any free port (see .port)."""
    if port < 0:
        return None
    httpd, _ = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd.server_port, httpd)


class ServiceMetrics:
    """What a draft or target service exposes."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.sessions_active = Gauge("specdec_sessions_active", "Sessions alive now",
                                     registry=registry)
        self.sessions_opened = Counter(
            "specdec_sessions_opened", "Sessions opened (prefilled) on this replica",
            registry=registry)
        self.kv_cache_reserved_bytes = Gauge(
            "specdec_kv_cache_reserved_bytes",
            "KV cache bytes the live sessions reserved (their max_tokens)", registry=registry)
        self.forward_seconds = Histogram(
            "specdec_forward_seconds", "Duration of one batched model call, by operation",
            ["op"], buckets=FORWARD_BUCKETS, registry=registry)
        self.batch_sessions = Histogram(
            "specdec_batch_sessions", "Sessions in one batched model call, by operation",
            ["op"], buckets=BATCH_BUCKETS, registry=registry)

    def track_sessions(self, engine) -> None:
        """Read session gauges from `engine` at scrape time."""
        self.sessions_active.set_function(lambda: len(engine.sessions))
        self.kv_cache_reserved_bytes.set_function(lambda: engine.reserved_bytes)


class CountsByLabel:
    """A counter family read at scrape time from a dict {label value: count} that some
    transport-free object keeps (e.g. the draft engine's proposals by source)."""

    def __init__(self, name: str, documentation: str, label: str, counts):
        self.name, self.documentation, self.label = name, documentation, label
        self.counts = counts  # () -> dict

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in sorted(self.counts().items()):
            family.add_metric([str(value)], count)
        yield family


def track_draft(registry: CollectorRegistry, engine) -> None:
    """The draft engine's own counts, read at scrape time."""
    registry.register(CountsByLabel("specdec_draft_proposed_tokens",
                                    "Tokens the draft proposed, by source (model, ngram)",
                                    "source", lambda: engine.proposed))
    registry.register(CountsByLabel("specdec_draft_early_stops",
                                    "Proposals ended early by --min-confidence, by reason",
                                    "reason", lambda: {"min_confidence": engine.early_stops}))
