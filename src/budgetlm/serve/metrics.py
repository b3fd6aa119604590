"""GET /metrics: counters and latency histograms through `prometheus_client` (one registry per app,
so several apps in one process, as in the tests, keep their own), and the middleware that fills them."""

from __future__ import annotations

import time

# seconds: from a cached health check to a long completion on a CPU
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The server's Prometheus metrics (text exposition format, `render`)."""

    PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/classify", "/health", "/metrics")

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("budgetlm_requests", "HTTP requests by path and status code.", ["path", "status"],
                                registry=r)
        self.latency = Histogram("budgetlm_request_seconds", "Time to answer a request (until the last byte for "
                                 "streams).", ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_token = Histogram("budgetlm_first_token_seconds", "Time from a completion request's decoding "
                                     "start to its first decoding step (the prompt's forward pass included).",
                                     ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens_generated = Counter("budgetlm_generated_tokens", "Completion tokens produced.", registry=r)
        self.texts_classified = Counter("budgetlm_classified_texts", "Texts classified.", registry=r)
        self.in_flight = Gauge("budgetlm_requests_in_flight", "Requests being answered now.", registry=r)
        started = time.time()
        uptime = Gauge("budgetlm_uptime_seconds", "Seconds since the server started.", registry=r)
        uptime.set_function(lambda: time.time() - started)

    def label(self, path: str) -> str:
        """A bounded label set, whatever paths clients send."""
        if path.startswith("/v1/models/"):
            return "/v1/models/{model}"
        return path if path in self.PATHS else "other"

    def observe(self, path: str, status: int, seconds: float) -> None:
        path = self.label(path)
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the text exposition format."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountRequests:
    """ASGI middleware, outermost: every answer is counted, refusals of the inner layers included
    (401, 408, 413, 503), and a stream's latency runs until its last byte."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), 500  # an exception before any answer counts as 500

        async def counted(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe(scope["path"], status, time.perf_counter() - t0)
