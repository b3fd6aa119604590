"""The FastAPI app: endpoints over a `ModelService`, with the gate and the metrics around them."""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, whose request
# models are built at run time (see schema.request_models).
import json
import threading
import time
import uuid
from typing import AsyncIterator

from budgetlm.serve.config import ServeConfig, check_config
from budgetlm.serve.gate import Gate
from budgetlm.serve.metrics import CountRequests, Metrics
from budgetlm.serve.services import ModelService

CLIENT_GONE = 499  # nginx's "client closed request": recorded in /metrics, never seen by the client


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


class Decoding:
    """One completion, advanced one decoding step at a time in a worker thread (the event loop stays
    free to notice a client leaving), the model held under the server's lock for each step only.
    Text is cut at stop strings; what `advance` returns never ends inside a possible stop string."""

    def __init__(self, service: ModelService, req, stops: list[str], lock: threading.Lock, metrics: Metrics):
        self.it = service.completion_steps(req.prompt, req.max_tokens, req.temperature, req.top_p, req.seed)
        self.max_tokens, self.stops, self.lock, self.metrics = req.max_tokens, stops, lock, metrics
        self.text, self.sent, self.tokens = "", 0, 0
        self.finish: str | None = None  # "stop" or "length" once finished

    def _next(self) -> str | None:
        with self.lock:  # one forward pass at a time across all requests
            return next(self.it, None)

    async def advance(self) -> str:
        """One step; returns the text that became safe to send (maybe ""), sets `finish` at the end."""
        import anyio

        piece = await anyio.to_thread.run_sync(self._next)
        if piece is None:  # max_tokens reached, or the model ended the text itself (end-of-text token)
            self.finish = "length" if self.tokens >= self.max_tokens else "stop"
            return self._take(len(self.text))
        self.tokens += 1
        self.metrics.add("tokens_generated", 1)
        self.text, stopped = split_at_stop(self.text + piece, self.stops)
        if stopped:
            self.finish = "stop"
            return self._take(len(self.text))
        return self._take(len(self.text) - stop_holdback(self.text, self.stops))

    def _take(self, upto: int) -> str:
        out = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return out

    def close(self) -> None:
        """Stop early (stop string, client gone): the service's generator and its KV cache go now."""
        self.it.close()


def _sse(cid: str, created: int, model: str, text: str, finish: str | None) -> str:
    chunk = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n"


async def invalid_request(request, exc):
    """422 naming each problem. The input is not echoed back: it may be NaN, hold a lone surrogate
    (neither fits in a JSON response, so FastAPI's own handler fails with a 500) or be long."""
    from fastapi.responses import Response

    errors = []
    for e in exc.errors():
        msg = str(e.get("msg", ""))
        if e.get("type") == "json_invalid" and "error" in (e.get("ctx") or {}):
            msg += f": {e['ctx']['error']}"
        # pydantic names the members of a union in `loc` by their validators (memory addresses included)
        loc = [p for p in e.get("loc", ()) if isinstance(p, int) or (isinstance(p, str) and p.isidentifier())]
        errors.append({"loc": loc, "msg": msg, "type": str(e.get("type", ""))})
    return Response(json.dumps({"detail": errors}, default=str), status_code=422, media_type="application/json")


def create_app(service: ModelService, cfg: ServeConfig | None = None, api_key: str = ""):
    """Build the FastAPI app around `service` (a loaded model or a test double)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    cfg = cfg or ServeConfig()
    check_config(cfg)
    app = FastAPI(title="budgetlm", description="Completions and classification from a budgetlm model.", version="1")
    app.state.metrics = Metrics()
    app.state.lock = threading.Lock()  # serialises model access: held for one forward pass at a time
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_middleware(Gate, api_key=api_key, max_body_bytes=cfg.max_body_bytes, read_timeout=cfg.read_timeout,
                       max_concurrent=cfg.max_concurrent)
    app.add_middleware(CountRequests, metrics=app.state.metrics)  # added last: outermost, counts every answer
    _add_routes(app, service, cfg)
    return app


def _add_routes(app, service: ModelService, cfg: ServeConfig) -> None:
    from fastapi import HTTPException, Request
    from fastapi.responses import PlainTextResponse, Response, StreamingResponse

    from budgetlm.serve import schema

    models = schema.request_models(cfg.max_prompt_chars, cfg.max_tokens_limit, cfg.max_batch)
    metrics, lock = app.state.metrics, app.state.lock
    CompletionRequest, ClassifyRequest = models.completion, models.classify

    @app.get("/health", response_model=schema.Health)
    def health() -> schema.Health:
        return schema.Health(status="ok", model=service.name, kind=service.kind)

    @app.get("/metrics", response_class=PlainTextResponse, responses={401: schema.ERRORS[401]})
    def prometheus() -> str:
        return metrics.render()

    def prepare(req) -> tuple[list[str], int]:
        if service.kind != "causal":
            raise HTTPException(400, f"this server holds a {service.kind}; use /v1/classify")
        n_prompt = service.count_tokens(req.prompt)
        if n_prompt >= service.max_context:
            raise HTTPException(400, f"prompt is {n_prompt} tokens; the model's context is {service.max_context}")
        return [req.stop] if isinstance(req.stop, str) else list(req.stop or []), n_prompt

    @app.post("/v1/completions", response_model=schema.CompletionResponse,
              responses={200: {"content": {"text/event-stream": {}}}, **schema.ERRORS})
    async def completions(req: CompletionRequest, request: Request):
        import anyio

        stops, n_prompt = await anyio.to_thread.run_sync(prepare, req)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        decoding = Decoding(service, req, stops, lock, metrics)
        if req.stream:
            return StreamingResponse(_events(decoding, cid, created, service.name), media_type="text/event-stream")
        try:
            while decoding.finish is None:
                await decoding.advance()
                if await request.is_disconnected():  # nobody will read the answer: stop computing it
                    return Response(status_code=CLIENT_GONE)
        finally:
            decoding.close()
        n = decoding.tokens
        return schema.CompletionResponse(
            id=cid, created=created, model=service.name,
            choices=[schema.Choice(text=decoding.text, index=0, finish_reason=decoding.finish)],
            usage=schema.Usage(prompt_tokens=n_prompt, completion_tokens=n, total_tokens=n_prompt + n),
        )

    @app.post("/v1/classify", response_model=schema.ClassifyResponse, responses=schema.ERRORS)
    def classify(req: ClassifyRequest) -> schema.ClassifyResponse:
        if service.kind != "classifier":
            raise HTTPException(400, f"this server holds a {service.kind} model; use /v1/completions")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        with lock:
            results = service.classify(texts)
        metrics.add("texts_classified", len(texts))
        return schema.ClassifyResponse(model=service.name, results=[schema.ClassifyResult(**r) for r in results])


async def _events(decoding: Decoding, cid: str, created: int, model: str) -> AsyncIterator[str]:
    """Server-sent events. When the client leaves, Starlette cancels the response, this generator is
    closed, and so is the decoding: no step runs for a reader that is gone."""
    try:
        while decoding.finish is None:
            piece = await decoding.advance()
            if piece:
                yield _sse(cid, created, model, piece, None)
        yield _sse(cid, created, model, "", decoding.finish)
        yield "data: [DONE]\n\n"
    finally:
        decoding.close()
