"""Models behind the HTTP layer: the `ModelService` interface, and the services for real runs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol


class ModelService(Protocol):
    """What the HTTP layer needs from a model. `kind` is 'causal' or 'classifier'."""

    name: str
    kind: str
    max_context: int  # tokens

    def count_tokens(self, text: str) -> int: ...

    def completion_steps(
        self, prompt: str, max_tokens: int, temperature: float, top_p: float, seed: int | None
    ) -> Iterator[str]:
        """Yield the completion's text one decoding step at a time (one forward pass per next()).
        The server may close the iterator early (stop string, client gone): keep no state outside it."""
        ...

    def classify(self, texts: list[str]) -> list[dict]:
        """[{'label': str, 'probs': {label: p}}] for each text (one batched forward pass)."""
        ...


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
    from budgetlm.training.checkpoint import load_meta

    name = Path(run).resolve().name
    if load_meta(run).is_classifier:
        from budgetlm.classify import load_classifier

        return ClassifierService(load_classifier(run, device=device, quantize=quantize), name)
    from budgetlm.generate import load_causal
    from budgetlm.quantize import maybe_quantize

    model, tok, _ = load_causal(run, device)  # one-line error for a masked LM
    return LMService(maybe_quantize(model, quantize), tok, name)
