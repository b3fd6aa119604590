"""`budgetlm serve`: a trained model behind a small HTTP API (FastAPI + uvicorn).

Endpoints
- POST /v1/completions  the OpenAI-compatible subset: prompt, max_tokens, temperature, top_p, stop,
                        seed, stream (server-sent events ending with `data: [DONE]`), for causal LMs
- POST /v1/classify     {"input": "text" | ["text", ...]} -> label and probabilities, for classifiers
- GET  /health          liveness and what is loaded
- GET  /metrics         Prometheus text format (requests, latency, generated tokens, in-flight)
- GET  /openapi.json, /docs  the schema FastAPI generates from the request/response models below

Concurrency: the model is shared by all requests and **access is serialised by one lock, held for one
forward pass at a time** (one decoding step, or one classification batch). Each request keeps its own
sampling state (KV cache, RNG), so concurrent streams interleave step by step without corrupting each
other, and a long completion cannot starve a short one. No cross-request batching: on a CPU the
matmuls already use every core, so batching buys little and costs latency.

Security: binds 127.0.0.1 by default. Binding any other address requires an API key (`--api-key` or
the BUDGETLM_API_KEY environment variable), checked on every /v1 and /metrics request as
`Authorization: Bearer KEY` (or `X-API-Key: KEY`). Bodies, prompts, max_tokens and batch sizes are
capped; violations answer 4xx with a one-line message. uvicorn drains in-flight requests on
SIGINT/SIGTERM (graceful shutdown, bounded by --graceful-timeout).

The app is built around a `ModelService` (duck-typed, see below), so tests run it with a fake model.
"""

# No `from __future__ import annotations`: FastAPI must see the real classes of the request models,
# which are built inside create_app because their limits come from the config.
import argparse
import hmac
import ipaddress
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Iterator, Literal, Protocol

from budgetlm import ui
from budgetlm.config import BudgetError, add_dataclass_args, from_args

API_KEY_ENV = "BUDGETLM_API_KEY"


@dataclass
class ServeConfig:
    model: str = ""  # run directory of a trained causal LM or fine-tuned classifier
    host: str = "127.0.0.1"  # address to bind; anything but loopback requires an API key
    port: int = 8000  # TCP port to listen on
    api_key: str = ""  # required bearer token (default: $BUDGETLM_API_KEY; empty = none on loopback)
    quantize: Literal["none", "int8"] = "none"  # int8 = dynamic int8 quantization of linear layers (CPU)
    max_body_bytes: int = 1_000_000  # largest accepted request body in bytes (413 above)
    max_prompt_chars: int = 16_000  # longest accepted prompt / classify text in characters
    max_tokens_limit: int = 1024  # largest max_tokens a completion request may ask for
    max_batch: int = 64  # most texts one /v1/classify request may carry
    graceful_timeout: float = 10.0  # seconds to let in-flight requests finish on shutdown


class ModelService(Protocol):
    """What the HTTP layer needs from a model. `kind` is 'causal' or 'classifier'."""

    name: str
    kind: str
    max_context: int  # tokens

    def count_tokens(self, text: str) -> int: ...

    def completion_steps(
        self, prompt: str, max_tokens: int, temperature: float, top_p: float, seed: int | None
    ) -> Iterator[str]:
        """Yield the completion's text one decoding step at a time (one forward pass per next())."""
        ...

    def classify(self, texts: list[str]) -> list[dict]:
        """[{'label': str, 'probs': {label: p}}] for each text (one batched forward pass)."""
        ...


# --------------------------------------------------------------------------------------------------
# small pure helpers (tested directly)


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(cfg: ServeConfig) -> str:
    """The key to enforce; refuses a non-loopback bind without one."""
    key = cfg.api_key or os.environ.get(API_KEY_ENV, "")
    if not is_loopback(cfg.host) and not key:
        raise BudgetError(
            f"binding {cfg.host} exposes the model beyond this machine: set --api-key or "
            f"{API_KEY_ENV} (or bind 127.0.0.1)"
        )
    return key


def split_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut `text` at the earliest stop string. Returns (text, stopped)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def stop_holdback(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` could still begin a stop string (not safe to emit)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


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


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, before any parsing.

    Checks Content-Length first, then counts the bytes actually received (chunked uploads), buffering
    at most `limit` bytes and replaying them to the app."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                return await self._too_large(send)
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        body = json.dumps({"detail": f"request body exceeds {self.limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------------
# the app


def create_app(service: ModelService, cfg: ServeConfig | None = None, api_key: str = ""):
    """Build the FastAPI app around `service` (a loaded model or a test double)."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import PlainTextResponse, StreamingResponse
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field

    # limits live in the schema, so clients (and schema fuzzers) see them and violations answer 422
    StopString = Annotated[str, Field(min_length=1, max_length=64)]
    Text = Annotated[str, Field(max_length=cfg.max_prompt_chars)]

    cfg = cfg or ServeConfig()
    lock = threading.Lock()  # serialises model access: held for one forward pass at a time
    metrics = Metrics()

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (n, user...)
        model: str | None = Field(None, description="ignored: the server holds one model")
        prompt: str = Field(..., max_length=cfg.max_prompt_chars, description="text to continue")
        max_tokens: int = Field(16, ge=1, le=cfg.max_tokens_limit, description="tokens to generate")
        temperature: float = Field(1.0, ge=0.0, le=5.0, description="0 = greedy")
        top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
        stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = Field(
            None, description="up to 4 strings (1-64 characters) that end the completion")
        seed: int | None = Field(None, ge=0, le=2**63 - 1, description="for reproducible sampling")
        stream: bool = Field(False, description="send the text as server-sent events")

    class Choice(BaseModel):
        text: str
        index: int
        logprobs: None = None
        finish_reason: Literal["stop", "length"] | None

    class Usage(BaseModel):
        prompt_tokens: int
        completion_tokens: int
        total_tokens: int

    class CompletionResponse(BaseModel):
        id: str
        object: Literal["text_completion"] = "text_completion"
        created: int
        model: str
        choices: list[Choice]
        usage: Usage | None = None

    class ClassifyRequest(BaseModel):
        input: Text | Annotated[list[Text], Field(min_length=1, max_length=cfg.max_batch)] = Field(
            ..., description="one text or a list of texts")

    class ClassifyResult(BaseModel):
        label: str
        probs: dict[str, float]

    class ClassifyResponse(BaseModel):
        model: str
        results: list[ClassifyResult]

    class ErrorDetail(BaseModel):
        detail: str

    errors = {
        400: {"model": ErrorDetail, "description": "valid JSON the model cannot answer (wrong endpoint for "
              "the model kind, prompt longer than the context)"},
        401: {"model": ErrorDetail, "description": "missing or wrong API key (when the server has one)"},
        413: {"model": ErrorDetail, "description": "request body over --max-body-bytes"},
    }

    class Health(BaseModel):
        status: str
        model: str
        kind: str

    def check_key(request: Request) -> None:
        if not api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong API key")

    app = FastAPI(
        title="budgetlm",
        description="Completions and classification from a budgetlm model.",
        version="1",
    )
    app.state.metrics = metrics
    app.state.lock = lock

    @app.middleware("http")
    async def count(request: Request, call_next):
        t0 = time.perf_counter()
        metrics.add("in_flight", 1)
        try:
            response = await call_next(request)
        except Exception:
            metrics.add("in_flight", -1)
            metrics.observe(request.url.path, 500, time.perf_counter() - t0)
            raise
        metrics.add("in_flight", -1)
        metrics.observe(request.url.path, response.status_code, time.perf_counter() - t0)
        return response

    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", model=service.name, kind=service.kind)

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(check_key)],
             responses={401: errors[401]})
    def prometheus() -> str:
        return metrics.render()

    def steps(req: CompletionRequest) -> Iterator[str]:
        """One forward pass per item, under the lock; the request's own state lives in the iterator."""
        it = service.completion_steps(req.prompt, req.max_tokens, req.temperature, req.top_p, req.seed)
        while True:
            with lock:
                piece = next(it, None)
            if piece is None:
                return
            metrics.add("tokens_generated", 1)
            yield piece

    def prepare(req: CompletionRequest) -> tuple[list[str], int]:
        if service.kind != "causal":
            raise HTTPException(400, f"this server holds a {service.kind}; use /v1/classify")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        n_prompt = service.count_tokens(req.prompt)
        if n_prompt >= service.max_context:
            raise HTTPException(
                400, f"prompt is {n_prompt} tokens; the model's context is {service.max_context}"
            )
        return stops, n_prompt

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        dependencies=[Depends(check_key)],
        responses={200: {"content": {"text/event-stream": {}}}, **errors},
    )
    def completions(req: CompletionRequest):
        stops, n_prompt = prepare(req)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:

            def events() -> Iterator[str]:
                text, sent, n, finish = "", 0, 0, "length"
                for piece in steps(req):
                    n += 1
                    text += piece
                    text, stopped = split_at_stop(text, stops)
                    safe = len(text) if stopped else len(text) - stop_holdback(text, stops)
                    if safe > sent:
                        yield _sse(cid, created, service.name, text[sent:safe], None)
                        sent = safe
                    if stopped:
                        finish = "stop"
                        break
                if n < req.max_tokens and finish == "length":
                    finish = "stop"  # the model ended the text itself (end-of-text token)
                if len(text) > sent:
                    yield _sse(cid, created, service.name, text[sent:], None)
                yield _sse(cid, created, service.name, "", finish)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        text, n, finish = "", 0, "length"
        for piece in steps(req):
            n += 1
            text, stopped = split_at_stop(text + piece, stops)
            if stopped:
                finish = "stop"
                break
        if n < req.max_tokens and finish == "length":
            finish = "stop"
        return CompletionResponse(
            id=cid,
            created=created,
            model=service.name,
            choices=[Choice(text=text, index=0, finish_reason=finish)],
            usage=Usage(prompt_tokens=n_prompt, completion_tokens=n, total_tokens=n_prompt + n),
        )

    @app.post("/v1/classify", response_model=ClassifyResponse, dependencies=[Depends(check_key)],
              responses=errors)
    def classify(req: ClassifyRequest) -> ClassifyResponse:
        if service.kind != "classifier":
            raise HTTPException(400, f"this server holds a {service.kind} model; use /v1/completions")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        with lock:
            results = service.classify(texts)
        metrics.add("texts_classified", len(texts))
        return ClassifyResponse(model=service.name, results=[ClassifyResult(**r) for r in results])

    return app


def _sse(cid: str, created: int, model: str, text: str, finish: str | None) -> str:
    chunk = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


# --------------------------------------------------------------------------------------------------
# real models behind the ModelService interface


class LMService:
    """A causal budgetlm run: completions through `generate.generate_tokens` (KV cache per request;
    prompt encoded exactly as `budgetlm generate` does, so greedy answers match it)."""

    kind = "causal"

    def __init__(self, model, tokenizer, name: str):
        from budgetlm.data.tokenizer import SPECIAL_TOKENS

        self.model, self.tok, self.name = model, tokenizer, name
        self.max_context = int(model.cfg.max_seq_len)
        self.eot = tokenizer.token_to_id(SPECIAL_TOKENS["eot"])

    def count_tokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def completion_steps(self, prompt, max_tokens, temperature, top_p, seed):
        import random

        import torch

        from budgetlm.generate import TextStream, generate_tokens

        ids = self.tok.encode(prompt, add_special_tokens=False).ids if prompt else []
        ids = ids or [self.eot]
        seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        gen = torch.Generator().manual_seed(seed)
        stops = [self.eot] if self.eot is not None else []
        it = generate_tokens(self.model, ids, max_tokens, temperature, 0, top_p, gen, stop_ids=stops)
        stream = TextStream(self.tok)
        while True:
            token = next(it, None)  # one forward pass (the prompt on the first call)
            if token is None:
                return
            yield stream.push(token)  # "" while a UTF-8 character is still incomplete


class ClassifierService:
    """A fine-tuned classifier run (`budgetlm finetune`)."""

    kind = "classifier"

    def __init__(self, loaded, name: str):
        self.clf, self.name = loaded, name
        self.max_context = int(loaded.meta.classifier.max_len)

    def count_tokens(self, text: str) -> int:
        return len(self.clf.encoder([text])[0][0])

    def completion_steps(self, prompt, max_tokens, temperature, top_p, seed):  # pragma: no cover
        raise RuntimeError("a classifier does not generate text")

    def classify(self, texts: list[str]) -> list[dict]:
        probs = self.clf.predict(texts)
        return [
            {"label": self.clf.labels[int(row.argmax())],
             "probs": {n: float(p) for n, p in zip(self.clf.labels, row)}}
            for row in probs
        ]


def load_service(run: str, quantize: str = "none", device: str = "cpu") -> ModelService:
    """The right service for what the run holds: a causal LM or a fine-tuned classifier."""
    from pathlib import Path

    from budgetlm.train.checkpoint import load_meta

    name = Path(run).resolve().name
    if load_meta(run).is_classifier:
        from budgetlm.classify import load_classifier

        return ClassifierService(load_classifier(run, device=device, quantize=quantize), name)
    from budgetlm.generate import load_causal
    from budgetlm.quantize import maybe_quantize

    model, tok, _ = load_causal(run, device)  # one-line error for a masked LM
    return LMService(maybe_quantize(model, quantize), tok, name)


# --------------------------------------------------------------------------------------------------
# command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, ServeConfig)


def run(args: argparse.Namespace) -> dict | None:
    cfg = from_args(ServeConfig, args)
    if not cfg.model:
        raise BudgetError("--model RUN is required (a trained or fine-tuned run directory)")
    if not 0 < cfg.port < 65536:
        raise BudgetError(f"--port {cfg.port} is not a TCP port")
    key = resolve_api_key(cfg)
    service = load_service(cfg.model, quantize=cfg.quantize)
    app = create_app(service, cfg, api_key=key)
    import uvicorn

    ui.info(
        f"serving {service.kind} model [bold]{service.name}[/] on http://{cfg.host}:{cfg.port} "
        f"(docs at /docs; model access serialised by one lock; Ctrl-C stops gracefully)"
    )
    if key:
        ui.info("API key required: send 'Authorization: Bearer <key>'")
    # uvicorn catches SIGINT/SIGTERM, drains in-flight requests, then re-raises the signal against the
    # handlers that were installed before it. No-op handlers here turn that into a normal return, so a
    # graceful shutdown exits 0 instead of dying of the re-raised signal.
    import signal

    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level="warning",
            timeout_graceful_shutdown=cfg.graceful_timeout,
        )
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    ui.info("server stopped")
    return None
