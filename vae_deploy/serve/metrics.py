"""The server's Prometheus metrics, in a registry of their own (two apps in one process, as in tests, must
not share counters)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PREFIX = "vae_deploy_serve"


class Metrics:
    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(f"{PREFIX}_sessions_open", "Sessions open now.", registry=r)
        self.sessions_total = Counter(f"{PREFIX}_sessions", "Sessions opened.", ["mode"], registry=r)
        self.chunks = Counter(f"{PREFIX}_chunks", "Chunks answered.", ["mode"], registry=r)
        self.frames = Counter(f"{PREFIX}_frames", "Frames encoded (frames in) or decoded (frames out).",
                              ["mode"], registry=r)
        self.refusals = Counter(f"{PREFIX}_refusals", "Sessions refused or closed by a limit or an error.",
                                ["reason"], registry=r)
        buckets = sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, max_batch})
        self.batch_size = Histogram(f"{PREFIX}_batch_size", "Chunks per round of one graph.", ["graph"],
                                    buckets=buckets, registry=r)
        self.round_seconds = Histogram(f"{PREFIX}_round_seconds", "Time of one round's graph calls.",
                                       ["graph"], registry=r)
        self.chunk_seconds = Histogram(f"{PREFIX}_chunk_seconds",
                                       "A chunk's time in the server, from its message to its answer "
                                       "(waiting for a round included).", ["mode"], registry=r)

    def on_round(self, graph: str, size: int, seconds: float) -> None:
        self.batch_size.labels(graph).observe(size)
        self.round_seconds.labels(graph).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
