"""Request and response models of the HTTP API (pydantic). The limits live in the schema, so clients
(and schema fuzzers) see them in /openapi.json, and a request that breaks one answers 422.

Beyond the limits, every request is refused with 422 when a number is not finite (JSON `NaN`,
`Infinity`, or `1e999`, which Python's JSON reader accepts) or a text holds a lone UTF-16 surrogate
(`"\\ud800"` is valid JSON but not Unicode: no tokenizer can encode it, no response can carry it).
"""

# No `from __future__ import annotations`: pydantic and FastAPI must see the real classes of the
# request models, which are built inside `request_models` because their limits come from the config.
from types import SimpleNamespace
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"character {e.start} is a lone surrogate: not valid Unicode text") from None
    return text


Unicode = Annotated[str, AfterValidator(valid_unicode)]
STRICT = ConfigDict(extra="ignore", allow_inf_nan=False)  # OpenAI clients send fields we do not use (n, user...)


def request_models(max_prompt_chars: int, max_tokens_limit: int, max_batch: int) -> SimpleNamespace:
    """The request models for these limits: .completion and .classify."""
    StopString = Annotated[Unicode, Field(min_length=1, max_length=64)]
    Text = Annotated[Unicode, Field(max_length=max_prompt_chars)]

    class CompletionRequest(BaseModel):
        model_config = STRICT
        model: str | None = Field(None, description="ignored: the server holds one model")
        prompt: Unicode = Field(..., max_length=max_prompt_chars, description="text to continue")
        max_tokens: int = Field(16, ge=1, le=max_tokens_limit, description="tokens to generate")
        temperature: float = Field(1.0, ge=0.0, le=5.0, description="0 = greedy")
        top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
        stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = Field(
            None, description="up to 4 strings (1-64 characters) that end the completion")
        seed: int | None = Field(None, ge=0, le=2**63 - 1, description="for reproducible sampling")
        stream: bool = Field(False, description="send the text as server-sent events")

    class ClassifyRequest(BaseModel):
        model_config = STRICT
        input: Text | Annotated[list[Text], Field(min_length=1, max_length=max_batch)] = Field(
            ..., description="one text or a list of texts")

    return SimpleNamespace(completion=CompletionRequest, classify=ClassifyRequest)


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


class ClassifyResult(BaseModel):
    label: str
    probs: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class Health(BaseModel):
    status: str
    model: str
    kind: str


class ErrorDetail(BaseModel):
    detail: str


ERRORS = {
    400: {"model": ErrorDetail, "description": "valid JSON the model cannot answer (wrong endpoint for the model "
                                               "kind, prompt longer than the context)"},
    401: {"model": ErrorDetail, "description": "missing or wrong API key (when the server has one)"},
    408: {"model": ErrorDetail, "description": "request body not received within --read-timeout"},
    413: {"model": ErrorDetail, "description": "request body over --max-body-bytes"},
    503: {"model": ErrorDetail, "description": "--max-concurrent requests are being answered; retry after the "
                                               "Retry-After header's seconds"},
}
