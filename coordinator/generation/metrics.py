"""The coordinator's Prometheus metrics (names as vLLM's, with the specdec_ prefix).

Rates and ratios (acceptance rate, mean accepted length, tokens/s) are derived in PromQL
from these counters; see docs/operations.md.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from specdec.rpc.metrics import CountsByLabel

from .stats import Stats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ROUND_FIXED_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128,
                       0.256, 0.512, 1)
TOKEN_GAP_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
LENGTH_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096)


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry):
        r = self.registry = registry
        self.requests = Counter("specdec_requests", "Generate requests ended, by gRPC status",
                                ["status"], registry=r)
        self.running = Gauge("specdec_requests_running", "Generate requests in progress",
                             registry=r)
        self.ttft = Histogram("specdec_time_to_first_token_seconds",
                              "Seconds from request to first token", buckets=LATENCY_BUCKETS,
                              registry=r)
        self.itl = Histogram("specdec_inter_token_latency_seconds",
                             "Seconds between consecutive streamed tokens",
                             buckets=TOKEN_GAP_BUCKETS, registry=r)
        self.e2e = Histogram("specdec_e2e_request_latency_seconds",
                             "Seconds from request to its last message (successful requests)",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.generated = Histogram("specdec_request_generated_tokens",
                                   "Tokens generated per successful request",
                                   buckets=LENGTH_BUCKETS, registry=r)
        self.round_fixed = Histogram(
            "specdec_round_fixed_seconds",
            "Per round: its wall time minus the forward time the services reported for its "
            "calls (coordinator, gRPC, servicers, queueing and batching waits)",
            buckets=ROUND_FIXED_BUCKETS, registry=r)
        self.num_drafts = Counter("specdec_spec_decode_num_drafts",
                                  "Rounds with draft proposals", registry=r)
        self.num_draft_tokens = Counter("specdec_spec_decode_num_draft_tokens",
                                        "Draft tokens proposed", registry=r)
        self.num_accepted = Counter("specdec_spec_decode_num_accepted_tokens",
                                    "Draft tokens accepted by the target", registry=r)
        self.accepted_per_pos = Counter(
            "specdec_spec_decode_num_accepted_tokens_per_pos",
            "Draft tokens accepted, by position in the round (0 = first)", ["position"],
            registry=r)
        self.fallback_rounds = Counter(
            "specdec_draft_fallback_rounds", "Rounds run without the draft, by reason",
            ["reason"], registry=r)
        self.reopens = Counter("specdec_session_reopens",
                               "Sessions re-opened from the token history after a fault",
                               ["service"], registry=r)
        self.ahead_blocks = Counter(
            "specdec_draft_ahead_blocks",
            "Blocks drafted during a verify (--draft-ahead), by outcome: used (the next "
            "round's proposals) or discarded (rolled back after a rejection)", ["outcome"],
            registry=r)
        self.upstream_errors = Counter(
            "specdec_upstream_errors", "Failed calls or items of the draft/target services",
            ["service", "code"], registry=r)
        self.upstream_healthy = Gauge(
            "specdec_upstream_healthy",
            "1 when some replica of the service is in rotation (SERVING, same model)",
            ["service"], registry=r)
        self.upstream_replicas = Gauge(
            "specdec_upstream_replicas",
            "Replicas of the service by state (serving, draining, unavailable, mismatched)",
            ["service", "state"], registry=r)

    def track_adaptive(self, adaptive) -> None:
        """Rounds by the K the adaptive controller chose (adaptive.AdaptiveK.chosen)."""
        self.registry.register(CountsByLabel(
            "specdec_adaptive_k_rounds", "Rounds of adaptive-K requests, by the K chosen",
            "k", lambda: adaptive.chosen))

    def upstream_error(self, service: str, code: str) -> None:
        self.upstream_errors.labels(service, code).inc()

    def finished(self, status: str, stats: Stats | None) -> None:
        """A request ended with gRPC status `status`; `stats` is what it streamed (if any),
        counted even when it failed part-way (the rounds ran)."""
        self.requests.labels(status).inc()
        if stats is None:
            return
        self.num_drafts.inc(stats.rounds_with_proposals)
        self.num_draft_tokens.inc(stats.proposed)
        self.num_accepted.inc(stats.accepted)
        for pos, n in enumerate(stats.accepted_at):
            self.accepted_per_pos.labels(str(pos)).inc(n)
        for reason, rounds in stats.fallback_reasons.items():
            self.fallback_rounds.labels(reason).inc(rounds)
        self.reopens.labels("draft").inc(stats.draft_reopens)
        self.reopens.labels("target").inc(stats.target_reopens)
        self.ahead_blocks.labels("used").inc(stats.ahead_used)
        self.ahead_blocks.labels("discarded").inc(stats.ahead_discarded)
        if status == "OK":
            self.e2e.observe(stats.total_time_s)
            self.generated.observe(stats.generated_tokens)
