"""The FastAPI app: the OpenAI-compatible endpoints and /v1/classify over a `ModelService`, with the
gate and the metrics around them."""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations, whose request
# models are built at run time (see schema.request_models).
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from budgetlm.serve.config import ServeConfig, check_config
from budgetlm.serve.decoding import (
    Decoding,
    Update,
    chat_logprobs,
    events,
    legacy_logprobs,
    split_at_stop,
    stop_holdback,
)
from budgetlm.serve.gate import Gate, error_body
from budgetlm.serve.metrics import CountRequests, Metrics
from budgetlm.serve.services import ModelService, Sampling

__all__ = ["create_app", "split_at_stop", "stop_holdback"]

CLIENT_GONE = 499  # nginx's "client closed request": recorded in /metrics, never seen by the client
ROLES = ("system", "developer", "user", "assistant")  # what a chat template may be asked to render


class ApiError(Exception):
    """A refusal of the OpenAI endpoints: status, a one-line message, the parameter at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


async def api_error(request, exc: ApiError):
    """A one-line refusal (`gate.error_body`). json.dumps escapes to ASCII: a client's text cannot
    break the encoding."""
    from fastapi.responses import Response

    kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
    body = error_body(exc.message, kind, exc.param, exc.code)
    return Response(json.dumps(body), status_code=exc.status, media_type="application/json")


async def invalid_request(request, exc):
    """422 naming each problem in `detail`, and the first in OpenAI's `error` object, as every other
    refusal. The input is not echoed back: it may be NaN, hold a lone surrogate (neither fits in a
    JSON response, so FastAPI's own handler fails with a 500) or be long."""
    from fastapi.responses import Response

    errors = []
    for e in exc.errors():
        msg = str(e.get("msg", ""))
        if e.get("type") == "json_invalid" and "error" in (e.get("ctx") or {}):
            msg += f": {e['ctx']['error']}"
        # pydantic names the members of a union in `loc` by their validators (memory addresses included)
        loc = [p for p in e.get("loc", ()) if isinstance(p, int) or (isinstance(p, str) and p.isidentifier())]
        errors.append({"loc": loc, "msg": msg, "type": str(e.get("type", ""))})
    field = [str(p) for p in errors[0]["loc"] if p != "body"] if errors else []
    message = "; ".join(".".join(str(p) for p in e["loc"] if p != "body") + f": {e['msg']}" for e in errors)
    body = error_body(message, param=".".join(field) or None, detail=errors)
    return Response(json.dumps(body, default=str), status_code=422, media_type="application/json")


def create_app(service: ModelService, cfg: ServeConfig | None = None, api_key: str = ""):
    """Build the FastAPI app around `service` (a loaded model or a test double)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    cfg = cfg or ServeConfig()
    check_config(cfg)
    app = FastAPI(title="budgetlm", description="OpenAI-compatible completions and chat, classification and "
                                                "question answering, from a budgetlm model.", version="1")
    app.state.metrics = Metrics()
    app.state.lock = threading.Lock()  # serialises model access: held for one forward pass at a time
    app.state.created = int(time.time())
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ApiError, api_error)
    app.add_middleware(Gate, api_key=api_key, max_body_bytes=cfg.max_body_bytes, read_timeout=cfg.read_timeout,
                       max_concurrent=cfg.max_concurrent)
    app.add_middleware(CountRequests, metrics=app.state.metrics)  # added last: outermost, counts every answer
    _add_info_routes(app, service)
    _add_completion_route(app, service, cfg)
    _add_chat_route(app, service, cfg)
    _add_classify_route(app, service, cfg)
    _add_qa_route(app, service, cfg)
    return app


# --------------------------------------------------------------------------------------------------
# checks shared by /v1/completions and /v1/chat/completions


@dataclass
class Job:
    """A completion request, checked: what to decode and how."""

    prompts: list[str]  # one per prompt (each decoded n times)
    max_tokens: int  # per choice
    stops: list[str]  # stop strings
    prompt_tokens: int  # tokens of all prompts (usage)
    sampling: Sampling


ROUTES = {"causal": "/v1/completions", "classifier": "/v1/classify", "qa": "/v1/qa"}  # the route of each kind


def check_request(service: ModelService, req, endpoint: str) -> None:
    from budgetlm.serve.schema import unsupported

    problem = unsupported(req, endpoint)
    if problem:
        raise ApiError(400, *problem)
    if req.model is not None and req.model != service.name:
        raise ApiError(404, f"model {json.dumps(req.model)} is not served here; GET /v1/models lists "
                            f"{json.dumps(service.name)}", "model", "model_not_found")
    if service.kind != "causal":
        raise ApiError(400, f"this server holds a {service.kind} model; use {ROUTES[service.kind]}")
    if req.stream_options is not None and not req.stream:
        raise ApiError(400, "stream_options is only allowed with stream: true", "stream_options")


def count_prompts(service: ModelService, cfg: ServeConfig, prompts: list[str], n: int, param: str) -> int:
    """Tokens of all prompts; 400 for too many choices or a prompt that fills the context."""
    if len(prompts) * n > cfg.max_batch:
        raise ApiError(400, f"{len(prompts)} prompt(s) x n={n} is {len(prompts) * n} completions; at most "
                            f"{cfg.max_batch} per request (--max-batch)", "n")
    total = 0
    for i, prompt in enumerate(prompts):
        k = service.count_tokens(prompt)
        if k == 0 and not getattr(service, "starts_empty", True):
            where = "the prompt" if len(prompts) == 1 else f"prompt {i}"
            raise ApiError(400, f"{where} is empty and this model's tokenizer has no end-of-text token to "
                                "start from", param)
        if k >= service.max_context:
            where = "the prompt" if len(prompts) == 1 else f"prompt {i}"
            raise ApiError(400, f"{where} is {k} tokens; the model's context is {service.max_context}", param)
        total += k
    return total


def sampling_of(req, prompts: int, logprobs: int | None) -> Sampling:
    """Choice j of each prompt samples with seed + j: the first one is what n=1 gives."""
    seeds = [None if req.seed is None else (req.seed + j) % 2**63 for _ in range(prompts) for j in range(req.n)]
    return Sampling(req.temperature, req.top_p, seeds, logprobs)


def stops_of(stop) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def usage(job: Job, decoding: Decoding):
    from budgetlm.serve import schema

    n = sum(r.tokens for r in decoding.rows)
    return schema.Usage(prompt_tokens=job.prompt_tokens, completion_tokens=n, total_tokens=job.prompt_tokens + n)


async def decode_all(decoding: Decoding, request) -> bool:
    """Run every choice to its end; False when the client left first (nobody will read the answer:
    stop computing it)."""
    try:
        while not decoding.finished:
            await decoding.advance()
            if await request.is_disconnected():
                return False
    finally:
        decoding.close()
    return True


async def respond(req, request, job: Job, decoding: Decoding, head: dict, first: Callable[[], list[dict]],
                  chunk: Callable[[Update], dict], whole: Callable[[], Any]):
    """What completions and chat answer: with `stream`, server-sent events (the `first` chunks, one
    `chunk` per update, a usage chunk when `stream_options.include_usage` asks); otherwise every choice
    decoded to its end and `whole()`, or CLIENT_GONE when the client left first."""
    from fastapi.responses import Response, StreamingResponse

    if req.stream:
        tail = None
        if req.stream_options is not None and req.stream_options.include_usage:
            def tail() -> dict:
                return {**head, "choices": [], "usage": usage(job, decoding).model_dump()}
        return StreamingResponse(events(decoding, first(), chunk, tail), media_type="text/event-stream")
    if not await decode_all(decoding, request):
        return Response(status_code=CLIENT_GONE)
    return whole()


# --------------------------------------------------------------------------------------------------
# routes


def _add_info_routes(app, service: ModelService) -> None:
    from fastapi.responses import Response

    from budgetlm.serve import schema

    metrics = app.state.metrics
    card = schema.ModelCard(id=service.name, created=app.state.created)

    @app.get("/health", response_model=schema.Health)
    def health() -> schema.Health:
        return schema.Health(status="ok", model=service.name, kind=service.kind)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}, 401: schema.ERRORS[401]})
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", response_model=schema.ModelList, responses={401: schema.ERRORS[401]})
    def models() -> schema.ModelList:
        return schema.ModelList(data=[card])

    @app.get("/v1/models/{model_id:path}", response_model=schema.ModelCard,
             responses={401: schema.ERRORS[401], 404: schema.ERRORS[404]})
    def model(model_id: str) -> schema.ModelCard:
        if model_id != service.name:
            raise ApiError(404, f"model {json.dumps(model_id)} is not served here", "model", "model_not_found")
        return card


def prepare_completion(service: ModelService, cfg: ServeConfig, req) -> Job:
    check_request(service, req, "completion")
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    n_prompt = count_prompts(service, cfg, prompts, req.n, "prompt")
    return Job(prompts, req.max_tokens, stops_of(req.stop), n_prompt, sampling_of(req, len(prompts), req.logprobs))


def _add_completion_route(app, service: ModelService, cfg: ServeConfig) -> None:
    from fastapi import Request
    
    from budgetlm.serve import schema

    models = schema.request_models(cfg.max_prompt_chars, cfg.max_tokens_limit, cfg.max_batch)
    CompletionRequest, metrics, lock = models.completion, app.state.metrics, app.state.lock

    @app.post("/v1/completions", response_model=schema.CompletionResponse,
              responses={200: {"content": {"text/event-stream": {}}}, **schema.ERRORS})
    async def completions(req: CompletionRequest, request: Request):
        import anyio

        job = await anyio.to_thread.run_sync(prepare_completion, service, cfg, req)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        decoding = Decoding(service, job.prompts, req.n, job.max_tokens, job.sampling, job.stops, lock, metrics,
                            "/v1/completions", echo=req.echo)
        if req.echo and req.logprobs is not None:
            await decoding.echo_logprobs()
        fmt = legacy_logprobs if req.logprobs is not None else None
        head = {"id": cid, "object": "text_completion", "created": created, "model": service.name}

        def chunk(u: Update) -> dict:
            lp = fmt(u.entries) if fmt and u.entries else None
            return {**head, "choices": [{"text": u.text, "index": u.index, "logprobs": lp, "finish_reason": u.finish}]}

        def first() -> list[dict]:  # an echoed prompt goes out before the first token
            return [chunk(Update(i, r.prefix, r.prefix_entries, None)) for i, r in enumerate(decoding.rows)
                    if r.prefix or r.prefix_entries]

        def whole() -> schema.CompletionResponse:
            return schema.CompletionResponse(
                id=cid, created=created, model=service.name, usage=usage(job, decoding),
                choices=[schema.Choice(text=r.prefix + r.text, index=i, finish_reason=r.finish,
                                       logprobs=fmt(decoding.all_entries(r)) if fmt else None)
                         for i, r in enumerate(decoding.rows)])

        return await respond(req, request, job, decoding, head, first, chunk, whole)


def chat_prompt(service: ModelService, cfg: ServeConfig, req) -> str:
    template = getattr(service, "chat_template", None)
    if template is None:
        raise ApiError(400, f"model {json.dumps(service.name)} has no chat template, so it cannot chat: it only "
                            "continues text (use /v1/completions), unless it is given one (serve --chat-template "
                            "FILE or a chat_template.json in the run, see docs/serve.md)", "messages")
    messages = []
    for i, m in enumerate(req.messages):
        if m.role not in ROLES:
            raise ApiError(400, f"messages[{i}].role {json.dumps(m.role)} is not supported (system, developer, user "
                                "or assistant)", f"messages[{i}].role")
        parts = m.content if isinstance(m.content, list) else [m.content or ""]
        texts = []
        for j, part in enumerate(parts):
            if isinstance(part, str):
                texts.append(part)
            elif part.type == "text" and part.text is not None:
                texts.append(part.text)
            else:
                raise ApiError(400, f"messages[{i}].content[{j}] is a {json.dumps(part.type)} part: only text parts "
                                    "(with \"text\") are supported", f"messages[{i}].content")
        messages.append((m.role, "".join(texts)))
    prompt = template.render(messages)
    if len(prompt) > cfg.max_prompt_chars:
        raise ApiError(400, f"the chat prompt is {len(prompt)} characters; at most {cfg.max_prompt_chars} "
                            "(--max-prompt-chars)", "messages")
    return prompt


def prepare_chat(service: ModelService, cfg: ServeConfig, req) -> Job:
    check_request(service, req, "chat")
    if req.top_logprobs is not None and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    if None not in (req.max_tokens, req.max_completion_tokens) and req.max_tokens != req.max_completion_tokens:
        raise ApiError(400, "max_tokens and max_completion_tokens differ: send one", "max_completion_tokens")
    prompt = chat_prompt(service, cfg, req)
    n_prompt = count_prompts(service, cfg, [prompt], req.n, "messages")
    # by default the answer may fill the context (as OpenAI's), within the server's limit
    max_tokens = req.max_completion_tokens or req.max_tokens or \
        max(1, min(cfg.max_tokens_limit, service.max_context - n_prompt))
    stops = stops_of(req.stop) + [s for s in service.chat_template.stop if s not in stops_of(req.stop)]
    return Job([prompt], max_tokens, stops, n_prompt,
               sampling_of(req, 1, (req.top_logprobs or 0) if req.logprobs else None))


def _add_chat_route(app, service: ModelService, cfg: ServeConfig) -> None:
    from fastapi import Request
    
    from budgetlm.serve import schema

    models = schema.request_models(cfg.max_prompt_chars, cfg.max_tokens_limit, cfg.max_batch)
    ChatRequest, metrics, lock = models.chat, app.state.metrics, app.state.lock

    @app.post("/v1/chat/completions", response_model=schema.ChatCompletionResponse,
              responses={200: {"content": {"text/event-stream": {}}}, **schema.ERRORS})
    async def chat(req: ChatRequest, request: Request):
        import anyio

        job = await anyio.to_thread.run_sync(prepare_chat, service, cfg, req)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        decoding = Decoding(service, job.prompts, req.n, job.max_tokens, job.sampling, job.stops, lock, metrics,
                            "/v1/chat/completions")
        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": service.name}

        def chunk(u: Update) -> dict:
            delta = {"content": u.text} if u.text or not u.finish else {}
            lp = chat_logprobs(u.entries) if req.logprobs and u.entries else None
            return {**head, "choices": [{"index": u.index, "delta": delta, "logprobs": lp, "finish_reason": u.finish}]}

        def first() -> list[dict]:  # each choice opens with the assistant's role
            return [{**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                          "finish_reason": None}]} for i in range(len(decoding.rows))]

        def whole() -> schema.ChatCompletionResponse:
            return schema.ChatCompletionResponse(
                id=cid, created=created, model=service.name, usage=usage(job, decoding),
                choices=[schema.ChatChoice(index=i, message=schema.ChatMessage(content=r.text),
                                           finish_reason=r.finish,
                                           logprobs=chat_logprobs(decoding.all_entries(r)) if req.logprobs else None)
                         for i, r in enumerate(decoding.rows)])

        return await respond(req, request, job, decoding, head, first, chunk, whole)


def _add_classify_route(app, service: ModelService, cfg: ServeConfig) -> None:
    from fastapi import HTTPException

    from budgetlm.serve import schema

    models = schema.request_models(cfg.max_prompt_chars, cfg.max_tokens_limit, cfg.max_batch)
    ClassifyRequest, metrics, lock = models.classify, app.state.metrics, app.state.lock

    @app.post("/v1/classify", response_model=schema.ClassifyResponse, responses=schema.ERRORS)
    def classify(req: ClassifyRequest) -> schema.ClassifyResponse:
        if req.model_extra:
            names = [schema.safe_name(k) for k in req.model_extra]
            raise ApiError(400, f"unsupported parameter(s): {', '.join(names[:5])} (this endpoint reads: input)",
                           names[0])
        if service.kind != "classifier":
            raise HTTPException(400, f"this server holds a {service.kind} model; use {ROUTES[service.kind]}")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        with lock:
            results = service.classify(texts)
        metrics.texts_classified.inc(len(texts))
        return schema.ClassifyResponse(model=service.name, results=[schema.ClassifyResult(**r) for r in results])


def _add_qa_route(app, service: ModelService, cfg: ServeConfig) -> None:
    from budgetlm.serve import schema

    QARequest, metrics, lock = schema.request_models(cfg.max_prompt_chars, cfg.max_tokens_limit, cfg.max_batch).qa, \
        app.state.metrics, app.state.lock

    @app.post("/v1/qa", response_model=schema.QAResponse, responses=schema.ERRORS)
    def qa(req: QARequest) -> schema.QAResponse:
        if req.model_extra:
            names = [schema.safe_name(k) for k in req.model_extra]
            raise ApiError(400, f"unsupported parameter(s): {', '.join(names[:5])} (this endpoint reads: question, "
                                "context)", names[0])
        if service.kind != "qa":
            raise ApiError(400, f"this server holds a {service.kind} model; use {ROUTES[service.kind]}")
        for name in ("question", "context"):
            if not getattr(req, name).strip():
                raise ApiError(400, f"{name} is empty", name)
        with lock:
            result = service.answer([req.question], [req.context])[0]
        metrics.texts_classified.inc()
        return schema.QAResponse(model=service.name, **result)
