"""A trained model behind a small HTTP API (FastAPI + uvicorn); the `budgetlm serve` command is
`budgetlm.commands.serve`.

Endpoints
- POST /v1/completions  the OpenAI-compatible subset: prompt, max_tokens, temperature, top_p, stop,
                        seed, stream (server-sent events ending with `data: [DONE]`), for causal LMs
- POST /v1/classify     {"input": "text" | ["text", ...]} -> label and probabilities, for classifiers
- GET  /health          liveness and what is loaded
- GET  /metrics         Prometheus text format (requests, latency, generated tokens, in-flight)
- GET  /openapi.json, /docs  the schema FastAPI generates from the request/response models (schema.py)

Concurrency: the model is shared by all requests and **access is serialised by one lock, held for one
forward pass at a time** (one decoding step, or one classification batch). Each request keeps its own
sampling state (KV cache, RNG), so concurrent streams interleave step by step without corrupting each
other, and a long completion cannot starve a short one. At most --max-concurrent requests are
answered at once; more get 503 with Retry-After. A client that disconnects stops its generation at
the next step (streaming or not). No cross-request batching: on a CPU the matmuls already use every
core, so batching buys little and costs latency.

Security: binds 127.0.0.1 by default. Binding any other address requires an API key (`--api-key` or
the BUDGETLM_API_KEY environment variable), checked before anything else on every request but
/health and the docs, as `Authorization: Bearer KEY` (or `X-API-Key: KEY`). Bodies, prompts,
max_tokens and batch sizes are capped; request heads and bodies have a deadline (server.py says what
is bounded and what is not); violations answer 4xx with a one-line message, and no input (NaN, a
lone surrogate) answers 5xx. uvicorn drains in-flight requests on SIGINT/SIGTERM (graceful shutdown,
bounded by --graceful-timeout).

The app is built around a `ModelService` (duck-typed, services.py), so tests run it with a fake model.
Nothing here imports FastAPI, uvicorn or torch until an app is built or a model loaded.
"""

from budgetlm.serve.app import create_app, split_at_stop, stop_holdback
from budgetlm.serve.config import API_KEY_ENV, ServeConfig, check_config, is_loopback, resolve_api_key
from budgetlm.serve.gate import Gate
from budgetlm.serve.metrics import Metrics
from budgetlm.serve.server import bind_socket, make_server, serve_forever
from budgetlm.serve.services import ClassifierService, LMService, ModelService, load_service

__all__ = [
    "API_KEY_ENV", "ClassifierService", "Gate", "LMService", "Metrics", "ModelService", "ServeConfig",
    "bind_socket", "check_config", "create_app", "is_loopback", "load_service", "make_server",
    "resolve_api_key", "serve_forever", "split_at_stop", "stop_holdback",
]
