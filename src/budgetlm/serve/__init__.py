"""A trained model behind a small HTTP API (FastAPI + uvicorn); the `budgetlm serve` command is
`budgetlm.commands.serve`.

Endpoints (OpenAI-compatible where OpenAI has them; docs/serve.md has the parameter table)
- GET  /v1/models            the served model, in OpenAI's list format (and /v1/models/{id})
- POST /v1/completions       prompt (a string or a list), max_tokens, temperature, top_p, n, stop,
                             seed, echo, logprobs, stream (server-sent events ending with
                             `data: [DONE]`), stream_options.include_usage, for causal LMs
- POST /v1/chat/completions  messages rendered by the run's chat template (serve/chat.py); a model
                             without one answers 400
- POST /v1/classify          {"input": "text" | ["text", ...]} -> label and probabilities, for classifiers
- GET  /health               liveness and what is loaded
- GET  /metrics              Prometheus (prometheus_client): requests, latency histograms, tokens, in-flight
- GET  /openapi.json, /docs  the schema FastAPI generates from the request/response models (schema.py)

Every OpenAI parameter is implemented, or accepted only at the value that changes nothing, or
answered with 400 naming it; so is any field OpenAI does not define (schema.unsupported).

Concurrency: the model is shared by all requests and **access is serialised by one lock, held for one
forward pass at a time** (one decoding step, or one classification batch). Each request keeps its own
sampling state (KV cache, RNG), so concurrent streams interleave step by step without corrupting each
other, and a long completion cannot starve a short one. At most --max-concurrent requests are
answered at once; more get 503 with Retry-After. A client that disconnects stops its generation at
the next step (streaming or not). The choices of one request (a list of prompts, n > 1) decode
together as one batch (generate.generate_batch); requests are not batched with each other.

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

from budgetlm.serve.app import create_app
from budgetlm.serve.chat import ChatTemplate, load_template
from budgetlm.serve.config import API_KEY_ENV, ServeConfig, check_config, is_loopback, resolve_api_key
from budgetlm.serve.decoding import split_at_stop, stop_holdback
from budgetlm.serve.gate import Gate
from budgetlm.serve.metrics import Metrics
from budgetlm.serve.server import bind_socket, make_server, serve_forever
from budgetlm.serve.services import ClassifierService, LMService, ModelService, Sampling, Token, load_service

__all__ = [
    "API_KEY_ENV", "ChatTemplate", "ClassifierService", "Gate", "LMService", "Metrics", "ModelService", "Sampling",
    "ServeConfig", "Token", "load_template",
    "bind_socket", "check_config", "create_app", "is_loopback", "load_service", "make_server",
    "resolve_api_key", "serve_forever", "split_at_stop", "stop_holdback",
]
