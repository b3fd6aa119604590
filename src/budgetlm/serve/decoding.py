"""One request's completions (its choices), advanced one decoding step at a time, and the OpenAI
formats of what they produce (streamed chunks, logprobs)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from budgetlm.serve.metrics import Metrics
from budgetlm.serve.services import ModelService, PromptToken, Sampling, Token


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


@dataclass
class Entry:
    """One token's log-probabilities, as an answer reports them."""

    token: str  # the token decoded on its own
    logprob: float | None  # None for the first token of an echoed prompt
    top: list[tuple[str, float]] | None  # the most likely tokens at its place, best first
    offset: int  # its first character in the choice's text (an echoed prompt included)


@dataclass
class Row:
    """One choice: its text so far, what of it was sent, and how it ended."""

    prefix: str = ""  # echo: the prompt, sent before the completion
    prefix_entries: list[Entry] = field(default_factory=list)  # echo with logprobs: the prompt's tokens
    text: str = ""  # the completion so far, cut at a stop string
    sent: int = 0  # characters of `text` released (never inside a possible stop string)
    tokens: int = 0  # tokens generated
    entries: list[Entry] = field(default_factory=list)  # logprobs of the generated tokens
    released: int = 0  # entries released
    finish: str | None = None  # "stop" or "length" once ended
    cut: bool = False  # ended by a stop string: entries past the cut are dropped


@dataclass
class Update:
    """What one choice has newly released: the `index` of the choice, its text, its tokens' logprobs."""

    index: int
    text: str
    entries: list[Entry]
    finish: str | None


class Decoding:
    """A request's rows (each prompt n times, in order), decoded together in a worker thread one step
    at a time (the event loop stays free to notice a client leaving), the model held under the
    server's lock for each step only. Text is cut at stop strings; what `advance` releases never ends
    inside a possible stop string."""

    def __init__(self, service: ModelService, prompts: list[str], n: int, max_tokens: int, sampling: Sampling,
                 stops: list[str], lock: threading.Lock, metrics: Metrics, path: str, echo: bool = False):
        self.service, self.max_tokens, self.stops, self.lock, self.metrics = service, max_tokens, stops, lock, metrics
        self.prompts, self.path, self.t0 = [p for p in prompts for _ in range(n)], path, time.perf_counter()
        self.rows = [Row(prefix=p if echo else "") for p in self.prompts]
        self.logprobs = sampling.logprobs
        self.it = service.completion_steps(self.prompts, max_tokens, sampling)

    @property
    def finished(self) -> bool:
        return all(r.finish is not None for r in self.rows)

    async def echo_logprobs(self) -> None:
        """Log-probabilities of the echoed prompts (one forward pass per distinct prompt)."""
        import anyio

        def score(prompt: str) -> list[PromptToken]:
            with self.lock:
                return self.service.prompt_logprobs(prompt, self.logprobs or 0)

        scored: dict[str, list[PromptToken]] = {}
        for row, prompt in zip(self.rows, self.prompts):
            if prompt not in scored:
                scored[prompt] = await anyio.to_thread.run_sync(score, prompt)
            row.prefix_entries = [Entry(t.token, t.logprob, t.top, t.offset) for t in scored[prompt]]

    def _next(self) -> list[Token | None] | None:
        with self.lock:  # one forward pass at a time across all requests
            return next(self.it, None)

    async def advance(self) -> list[Update]:
        """One step for every row still going; the updates of the rows that released something."""
        import anyio

        step = await anyio.to_thread.run_sync(self._next)
        if self.t0 is not None:
            self.metrics.first_token.labels(self.metrics.label(self.path)).observe(time.perf_counter() - self.t0)
            self.t0 = None
        updates = []
        for i, row in enumerate(self.rows):
            if row.finish is not None:
                continue
            token = step[i] if step is not None else None
            if token is None:  # the model ended the text (end-of-text token), or the service stopped
                row.finish = "length" if row.tokens >= self.max_tokens else "stop"
            else:
                self._add(row, token)
            update = self._release(i, row)
            if update.text or update.entries or update.finish:
                updates.append(update)
        return updates

    def _add(self, row: Row, token: Token) -> None:
        row.tokens += 1
        self.metrics.tokens_generated.inc()
        if self.logprobs is not None:
            row.entries.append(Entry(token.token, token.logprob, token.top, len(row.prefix) + len(row.text)))
        row.text, row.cut = split_at_stop(row.text + token.text, self.stops)
        if row.cut:
            row.finish = "stop"
        elif row.tokens >= self.max_tokens:
            row.finish = "length"

    def _release(self, i: int, row: Row) -> Update:
        upto = len(row.text) if row.finish else len(row.text) - stop_holdback(row.text, self.stops)
        text = row.text[row.sent:upto] if upto > row.sent else ""
        row.sent = max(row.sent, upto)
        end = len(row.prefix) + row.sent
        n = len(row.entries) if row.finish and not row.cut else \
            sum(1 for e in row.entries if e.offset < end)  # offsets only grow
        entries, row.released = row.entries[row.released:n], max(row.released, n)
        return Update(i, text, entries, row.finish)

    def close(self) -> None:
        """Stop early (client gone, all rows ended): the service's generator and its KV cache go now."""
        self.it.close()

    def all_entries(self, row: Row) -> list[Entry]:
        return row.prefix_entries + row.entries[:row.released]


# --------------------------------------------------------------------------------------------------
# OpenAI formats


def legacy_logprobs(entries: list[Entry]) -> dict:
    """/v1/completions `logprobs`: the alternatives asked, plus the chosen token (as OpenAI does)."""
    tops: list[dict[str, float] | None] = []
    for e in entries:
        if e.top is None:
            tops.append(None)
            continue
        top: dict[str, float] = {}
        for tok, lp in e.top:
            top.setdefault(tok, lp)  # two ids can decode alike: keep the likelier
        if e.logprob is not None:
            top.setdefault(e.token, e.logprob)
        tops.append(top)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops, "text_offset": [e.offset for e in entries]}


def chat_logprobs(entries: list[Entry]) -> dict:
    """/v1/chat/completions `logprobs`: each token with its UTF-8 bytes and its alternatives."""
    def one(tok: str, lp: float | None) -> dict:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top or []]}
                        for e in entries], "refusal": None}


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def events(decoding: Decoding, first: list[dict], chunk: Callable[[Update], dict],
                 usage: Callable[[], dict] | None) -> AsyncIterator[str]:
    """Server-sent events: `first`, a chunk per update, the usage chunk when asked, `[DONE]`. When the
    client leaves, Starlette cancels the response, this generator is closed, and so is the decoding:
    no step runs for a reader that is gone."""
    try:
        for obj in first:
            yield sse(obj)
        while not decoding.finished:
            for update in await decoding.advance():
                yield sse(chunk(update))
        if usage is not None:
            yield sse(usage())
        yield "data: [DONE]\n\n"
    finally:
        decoding.close()
