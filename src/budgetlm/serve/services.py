"""Models behind the HTTP layer: the `ModelService` interface, and the services for real runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

if TYPE_CHECKING:
    from budgetlm.serve.chat import ChatTemplate


@dataclass
class Sampling:
    """How the rows of one request are sampled."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling mass
    seeds: list[int | None] = field(default_factory=list)  # one per row; None = a fresh random one
    logprobs: int | None = None  # alternatives to report per token (0 = the chosen token only); None = no logprobs


@dataclass
class Token:
    """One generated token, as the HTTP layer sees it."""

    text: str  # what it adds to the completion ("" while a UTF-8 character is still incomplete)
    token: str = ""  # the token decoded on its own (logprobs name tokens by it)
    logprob: float | None = None  # its log-probability under the model (when logprobs were asked)
    top: list[tuple[str, float]] = field(default_factory=list)  # the most likely tokens there, best first


@dataclass
class PromptToken:
    """One token of a prompt, for `echo` with logprobs."""

    token: str  # the token decoded on its own
    logprob: float | None  # log-probability given the tokens before it (None for the first)
    top: list[tuple[str, float]] | None  # the most likely tokens at its place (None for the first)
    offset: int  # its first character in the prompt


class ModelService(Protocol):
    """What the HTTP layer needs from a model. `kind` is 'causal', 'classifier' or 'qa'."""

    name: str
    kind: str
    max_context: int  # tokens
    chat_template: ChatTemplate | None  # how chat messages become a prompt; None = no chat
    starts_empty: bool  # an empty prompt can be completed (the tokenizer has an end-of-text token to start from)

    def count_tokens(self, text: str) -> int: ...

    def completion_steps(self, prompts: list[str], max_tokens: int, sampling: Sampling) -> Iterator[list[Token | None]]:
        """Complete every prompt (each one a row, decoded together): each next() is one forward pass
        and yields one entry per row, its next token or None once the row has ended (end-of-text).
        The server may close the iterator early (stop strings, client gone): keep no state outside it."""
        ...

    def prompt_logprobs(self, prompt: str, top: int) -> list[PromptToken]:
        """The prompt's tokens with their log-probabilities (one forward pass)."""
        ...

    def classify(self, texts: list[str]) -> list[dict]:
        """[{'label': str, 'probs': {label: p}}] for each text (one batched forward pass)."""
        ...

    def answer(self, questions: list[str], contexts: list[str]) -> list[dict]:
        """[{'answer': str, 'score': float, 'start': int, 'end': int}] for each question (kind 'qa')."""
        ...


class LMService:
    """A causal budgetlm run: completions through `generate.generate_batch` (one KV cache per request;
    prompts encoded exactly as `budgetlm generate` does, so greedy answers match it)."""

    kind = "causal"

    def __init__(self, model, tokenizer, name: str, chat_template: ChatTemplate | None = None, meta=None):
        from budgetlm.generate import eot_id

        self.model, self.tok, self.name, self.chat_template = model, tokenizer, name, chat_template
        self.meta = meta  # a sequence-to-sequence run's prompt template is applied to each prompt
        self.max_context = int(model.cfg.max_seq_len)
        self.eot = eot_id(tokenizer)
        self.starts_empty = self.eot is not None

    def count_tokens(self, text: str) -> int:
        from budgetlm.generate import as_prompt

        return len(self.tok.encode(as_prompt(self.meta, text), add_special_tokens=False).ids)

    def token(self, token_id: int) -> str:
        return self.tok.decode([token_id], skip_special_tokens=False)

    def top(self, logprobs, n: int) -> list[tuple[str, float]]:
        import torch

        values, ids = torch.topk(logprobs, min(n, logprobs.numel()))
        return [(self.token(int(i)), float(v)) for v, i in zip(values, ids)]

    def completion_steps(self, prompts, max_tokens, sampling):
        import random

        import torch

        from budgetlm.generate import TextStream, as_prompt, generate_batch, prompt_ids

        ids = [prompt_ids(self.tok, as_prompt(self.meta, p)) for p in prompts]
        seeds = [s if s is not None else random.SystemRandom().randrange(2**31) for s in sampling.seeds]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        streams = [TextStream(self.tok) for _ in prompts]
        want = sampling.logprobs is not None
        for step in generate_batch(self.model, ids, max_tokens, sampling.temperature, 0, sampling.top_p, gens,
                                   stop_ids=[self.eot] if self.eot is not None else [], logprobs=want):
            row = []
            for stream, token, lp in zip(streams, step.tokens, step.logprobs):
                if token is None:
                    row.append(None)
                    continue
                # "" while a UTF-8 character is still incomplete
                t = Token(stream.push(token))
                if want:
                    t.token, t.logprob, t.top = self.token(token), float(lp[token]), self.top(lp, sampling.logprobs)
                row.append(t)
            yield row

    def prompt_logprobs(self, prompt: str, top: int) -> list[PromptToken]:
        import torch

        from budgetlm.generate import prompt_ids

        ids = prompt_ids(self.tok, prompt)
        offsets = [s for s, _ in self.tok.encode(prompt, add_special_tokens=False).offsets] if prompt else [0]
        with torch.no_grad():
            logits, _ = self.model(torch.tensor([ids], device=self.model.embed.weight.device))
        lp = torch.log_softmax(logits[0].float(), dim=-1).cpu()  # (T, V): row t predicts token t + 1
        out = [PromptToken(self.token(ids[0]), None, None, offsets[0])]
        for t in range(1, len(ids)):
            out.append(PromptToken(self.token(ids[t]), float(lp[t - 1, ids[t]]), self.top(lp[t - 1], top), offsets[t]))
        return out


class ClassifierService:
    """A fine-tuned classifier run (`budgetlm finetune`)."""

    kind = "classifier"
    chat_template = None

    def __init__(self, loaded, name: str):
        self.clf, self.name = loaded, name
        self.max_context = int(loaded.meta.classifier.max_len)

    def count_tokens(self, text: str) -> int:
        return len(self.clf.encoder([text])[0][0])

    def completion_steps(self, prompts, max_tokens, sampling):  # pragma: no cover
        raise RuntimeError("a classifier does not generate text")

    def prompt_logprobs(self, prompt, top):  # pragma: no cover
        raise RuntimeError("a classifier does not generate text")

    def classify(self, texts: list[str]) -> list[dict]:
        probs = self.clf.predict(texts)
        return [
            {"label": self.clf.labels[int(row.argmax())],
             "probs": {n: float(p) for n, p in zip(self.clf.labels, row)}}
            for row in probs
        ]


class QAService:
    """A question-answering run (`budgetlm finetune --task qa`)."""

    kind = "qa"
    chat_template = None
    starts_empty = False

    def __init__(self, loaded, name: str):
        self.qa, self.name = loaded, name
        self.max_context = int(loaded.info.max_len)

    def count_tokens(self, text: str) -> int:
        return len(self.qa.tokenizer.encode(text, add_special_tokens=False).ids)

    def completion_steps(self, prompts, max_tokens, sampling):  # pragma: no cover
        raise RuntimeError("a question-answering model does not generate text")

    def prompt_logprobs(self, prompt, top):  # pragma: no cover
        raise RuntimeError("a question-answering model does not generate text")

    def classify(self, texts):  # pragma: no cover
        raise RuntimeError("a question-answering model does not classify")

    def answer(self, questions: list[str], contexts: list[str]) -> list[dict]:
        return self.qa.answer(questions, contexts)


def load_service(run: str, quantize: str = "none", device: str = "cpu", chat_template: str = "") -> ModelService:
    """The right service for what the run holds: a causal LM, a fine-tuned classifier or a
    question-answering run. A causal
    run's chat template is the file `chat_template` when given, else the run's own (serve/chat.py)."""
    from budgetlm.training.checkpoint import load_meta

    name = Path(run).resolve().name
    meta = load_meta(run)
    if meta.is_classifier:
        from budgetlm.classify import load_classifier

        return ClassifierService(load_classifier(run, device=device, quantize=quantize), name)
    if meta.qa is not None:
        from budgetlm.qa import load_qa
        from budgetlm.quantize import maybe_quantize

        loaded = load_qa(run, device=device)
        loaded.model = maybe_quantize(loaded.model, quantize)
        return QAService(loaded, name)
    from budgetlm.generate import load_causal
    from budgetlm.quantize import maybe_quantize
    from budgetlm.serve.chat import find_template, load_template

    model, tok, meta = load_causal(run, device)  # one-line error for a masked LM
    template = load_template(chat_template) if chat_template else find_template(meta)
    return LMService(maybe_quantize(model, quantize), tok, name, template, meta)
