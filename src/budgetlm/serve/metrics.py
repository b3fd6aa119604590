"""GET /metrics: request counters in the Prometheus text format, and the middleware that fills them."""

from __future__ import annotations

import threading
import time


class Metrics:
    """Counters for GET /metrics in the Prometheus text exposition format (version 0.0.4)."""

    PATHS = ("/v1/completions", "/v1/classify", "/health", "/metrics")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, int] = {}
        self.tokens_generated = 0
        self.texts_classified = 0
        self.in_flight = 0
        self.started = time.time()

    def observe(self, path: str, status: int, seconds: float) -> None:
        path = path if path in self.PATHS else "other"  # bounded label set, whatever clients send
        with self._lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
            self.latency_sum[path] = self.latency_sum.get(path, 0.0) + seconds
            self.latency_count[path] = self.latency_count.get(path, 0) + 1

    def add(self, field: str, n: int) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + n)

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP budgetlm_requests_total HTTP requests by path and status code.",
                "# TYPE budgetlm_requests_total counter",
            ]
            for (path, status), n in sorted(self.requests.items()):
                lines.append(f'budgetlm_requests_total{{path="{path}",status="{status}"}} {n}')
            lines += [
                "# HELP budgetlm_request_seconds Time to answer a request (until the last byte "
                "for streams).",
                "# TYPE budgetlm_request_seconds summary",
            ]
            for path in sorted(self.latency_sum):
                lines.append(f'budgetlm_request_seconds_sum{{path="{path}"}} {self.latency_sum[path]:.6f}')
                lines.append(f'budgetlm_request_seconds_count{{path="{path}"}} {self.latency_count[path]}')
            lines += [
                "# HELP budgetlm_generated_tokens_total Completion tokens produced.",
                "# TYPE budgetlm_generated_tokens_total counter",
                f"budgetlm_generated_tokens_total {self.tokens_generated}",
                "# HELP budgetlm_classified_texts_total Texts classified.",
                "# TYPE budgetlm_classified_texts_total counter",
                f"budgetlm_classified_texts_total {self.texts_classified}",
                "# HELP budgetlm_requests_in_flight Requests being answered now.",
                "# TYPE budgetlm_requests_in_flight gauge",
                f"budgetlm_requests_in_flight {self.in_flight}",
                "# HELP budgetlm_uptime_seconds Seconds since the server started.",
                "# TYPE budgetlm_uptime_seconds gauge",
                f"budgetlm_uptime_seconds {time.time() - self.started:.3f}",
            ]
        return "\n".join(lines) + "\n"


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

        self.metrics.add("in_flight", 1)
        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.add("in_flight", -1)
            self.metrics.observe(scope["path"], status, time.perf_counter() - t0)
