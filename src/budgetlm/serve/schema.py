"""Request and response models of the HTTP API (pydantic). The limits live in the schema, so clients
(and schema fuzzers) see them in /openapi.json, and a request that breaks one answers 422.

Beyond the limits, every request is refused with 422 when a number is not finite (JSON `NaN`,
`Infinity`, or `1e999`, which Python's JSON reader accepts) or a text holds a lone UTF-16 surrogate
(`"\\ud800"` is valid JSON but not Unicode: no tokenizer can encode it, no response can carry it).

OpenAI parameters: each one is implemented, or accepted only at the value that changes nothing
(`NEUTRAL`: clients often send the defaults), or answered with 400 naming it (`unsupported`); so is
any field OpenAI does not define. Nothing a client sends is silently ignored.
"""

# No `from __future__ import annotations`: pydantic and FastAPI must see the real classes of the
# request models, which are built inside `request_models` because their limits come from the config.
import json
from types import SimpleNamespace
from typing import Annotated, Any, Callable, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"character {e.start} is a lone surrogate: not valid Unicode text") from None
    return text


Unicode = Annotated[str, AfterValidator(valid_unicode)]
# extra="allow": fields the model does not declare are kept, so that `unsupported` can name them (400)
STRICT = ConfigDict(extra="allow", allow_inf_nan=False)
MAX_LOGPROBS = 5  # alternatives per token in /v1/completions (OpenAI's legacy limit)
MAX_TOP_LOGPROBS = 20  # alternatives per token in /v1/chat/completions (OpenAI's limit)
MAX_MESSAGES = 256  # messages per chat request


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = Field(False, description="send a last chunk (no choices) with the usage")


class ContentPart(BaseModel):
    model_config = STRICT
    type: str = Field(..., description='"text" (the only kind of part this server reads)')
    text: Unicode | None = None


def request_models(max_prompt_chars: int, max_tokens_limit: int, max_batch: int) -> SimpleNamespace:
    """The request models for these limits: .completion, .chat, .classify and .qa."""
    StopString = Annotated[Unicode, Field(min_length=1, max_length=64)]
    Text = Annotated[Unicode, Field(max_length=max_prompt_chars)]

    class Sampled(BaseModel):
        model_config = STRICT
        model: Unicode | None = Field(None, max_length=256, description="the served model's id (GET /v1/models); "
                                                                       "any other answers 404")
        temperature: float = Field(1.0, ge=0.0, le=5.0, description="0 = greedy")
        top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
        n: int = Field(1, ge=1, le=max_batch, description="completions per prompt (all prompts x n at most "
                                                          f"{max_batch})")
        stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = Field(
            None, description="up to 4 strings (1-64 characters) that end the completion")
        seed: int | None = Field(None, ge=0, le=2**63 - 1, description="for reproducible sampling; completion j of a "
                                                                        "prompt samples with seed + j")
        stream: bool = Field(False, description="send the text as server-sent events")
        stream_options: StreamOptions | None = Field(None, description="with stream only")
        user: Unicode | None = Field(None, max_length=256, description="an end-user id; no effect on the answer "
                                                                      "(as in OpenAI)")

        @model_validator(mode="before")
        @classmethod
        def null_is_default(cls, data):
            """OpenAI reads `null` as "the default" (its clients send it for parameters set to None)."""
            if not isinstance(data, dict):
                return data
            fields = cls.model_fields
            return {k: v for k, v in data.items()
                    if v is not None or k not in fields or fields[k].is_required() or fields[k].default is None}

    class CompletionRequest(Sampled):
        prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=max_batch)] = Field(
            ..., description="text to continue, or a list of texts (one choice per text, in order)")
        max_tokens: int = Field(16, ge=1, le=max_tokens_limit, description="tokens to generate")
        echo: bool = Field(False, description="the prompt is sent back before the completion")
        logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="report each token's log-probability "
                                                                             "and this many alternatives")

    class Message(BaseModel):
        model_config = STRICT
        role: Unicode = Field(..., max_length=32, description="system, developer, user or assistant")
        content: Text | Annotated[list[ContentPart], Field(max_length=MAX_MESSAGES)] | None = Field(
            ..., description="the text, or a list of text parts")

    class ChatRequest(Sampled):
        messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)] = Field(
            ..., description="the conversation so far, rendered by the model's chat template")
        max_tokens: int | None = Field(None, ge=1, le=max_tokens_limit, description="tokens to generate (default: "
                                                                                    "up to the context, at most --max-tokens-limit)")
        max_completion_tokens: int | None = Field(None, ge=1, le=max_tokens_limit, description="same as max_tokens")
        logprobs: bool = Field(False, description="report each token's log-probability")
        top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="alternatives per token "
                                                                                     "(with logprobs)")

    class ClassifyRequest(BaseModel):
        model_config = STRICT
        input: Text | Annotated[list[Text], Field(min_length=1, max_length=max_batch)] = Field(
            ..., description="one text or a list of texts")

    class QARequest(BaseModel):
        model_config = STRICT
        question: Text = Field(..., description="the question")
        context: Text = Field(..., description="the text that holds the answer (long contexts are read in windows)")

    return SimpleNamespace(completion=CompletionRequest, chat=ChatRequest, classify=ClassifyRequest, qa=QARequest)


# --------------------------------------------------------------------------------------------------
# parameters not implemented

# OpenAI parameters this server does not implement, accepted only at the value that changes nothing:
# name -> (the accepted value, as the error message says it; the test for it). `v in (None, 0)` is
# False for NaN, so a NaN penalty is refused too.
NEUTRAL: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "best_of": ("1", lambda v: v in (None, 1)),
    "suffix": ('""', lambda v: v in (None, "")),
    "logit_bias": ("{}", lambda v: v in (None, {})),
    "presence_penalty": ("0", lambda v: v in (None, 0)),
    "frequency_penalty": ("0", lambda v: v in (None, 0)),
    "response_format": ('{"type": "text"}', lambda v: v in (None, {"type": "text"})),
    "tools": ("[]", lambda v: v in (None, [])),
    "tool_choice": ('"none"', lambda v: v in (None, "none")),
    "functions": ("[]", lambda v: v in (None, [])),
    "function_call": ('"none"', lambda v: v in (None, "none")),
    "store": ("false", lambda v: v in (None, False)),
}
NEUTRAL_FOR = {  # endpoint -> the NEUTRAL parameters OpenAI defines for it
    "completion": ("best_of", "suffix", "logit_bias", "presence_penalty", "frequency_penalty"),
    "chat": ("logit_bias", "presence_penalty", "frequency_penalty", "response_format", "tools", "tool_choice",
             "functions", "function_call", "store"),
}


def safe_name(key: str) -> str:
    """A client's field name, safe to put in a message: ASCII-escaped, at most 64 characters."""
    return json.dumps(key[:64])[1:-1]


def _extras(prefix: str, model: BaseModel | None) -> list[str]:
    return [prefix + safe_name(k) for k in (model.model_extra or {})] if model is not None else []


def unsupported(req: BaseModel, endpoint: str) -> tuple[str, str] | None:
    """(message, first parameter named) for what a request asks that this server does not do, or None."""
    problems: list[str] = []
    neutral = NEUTRAL_FOR.get(endpoint, ())
    for key, value in (req.model_extra or {}).items():
        if key in neutral:
            if not NEUTRAL[key][1](value):
                problems.append(f"{key} (only {NEUTRAL[key][0]} is accepted)")
        else:
            problems.append(safe_name(key))
    problems += _extras("stream_options.", getattr(req, "stream_options", None))
    for i, m in enumerate(getattr(req, "messages", None) or []):
        problems += _extras(f"messages[{i}].", m)
        for j, part in enumerate(m.content if isinstance(m.content, list) else []):
            problems += _extras(f"messages[{i}].content[{j}].", part)
    if not problems:
        return None
    shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
    known = ", ".join(k for k in type(req).model_fields)
    return (f"unsupported parameter{'s' if len(problems) > 1 else ''}: {shown} (this server implements: {known})",
            problems[0].split(" ")[0])


# --------------------------------------------------------------------------------------------------
# answers


class Logprobs(BaseModel):
    """OpenAI's legacy completions format: one entry per token in each list."""

    tokens: list[str]
    token_logprobs: list[float | None]  # None for the first token of an echoed prompt
    top_logprobs: list[dict[str, float] | None]  # the alternatives asked, and the chosen token
    text_offset: list[int]  # each token's first character in the choice's text


class Choice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None = None
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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "budgetlm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ClassifyResult(BaseModel):
    label: str
    probs: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class QAResponse(BaseModel):
    model: str
    answer: str  # the span of the context, "" when no span was found
    score: float | None  # start logit + end logit of the span ([CLS]'s for no answer)
    start: int  # its first character in the context
    end: int  # one past its last character
    no_answer: bool = False  # a run trained with unanswerable questions (SQuAD v2.0) found none here


class Health(BaseModel):
    status: str
    model: str
    kind: str


class ErrorInfo(BaseModel):
    """OpenAI's error object, which OpenAI's client libraries read."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorDetail(BaseModel):
    detail: str
    error: ErrorInfo | None = None  # OpenAI's error object (every refusal carries one)


ERRORS = {
    400: {"model": ErrorDetail, "description": "valid JSON the server does not answer: a parameter it does not "
                                               "implement (named), the wrong endpoint for the model kind, a "
                                               "prompt longer than the context, chat without a chat template"},
    401: {"model": ErrorDetail, "description": "missing or wrong API key (when the server has one)"},
    404: {"model": ErrorDetail, "description": "`model` names a model this server does not hold"},
    408: {"model": ErrorDetail, "description": "request body not received within --read-timeout"},
    413: {"model": ErrorDetail, "description": "request body over --max-body-bytes"},
    503: {"model": ErrorDetail, "description": "--max-concurrent requests are being answered; retry after the "
                                               "Retry-After header's seconds"},
}
