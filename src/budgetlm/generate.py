"""Sampling from a causal model: a small engine and the `budgetlm generate` command.

    for token in generate_tokens(model, prompt_ids, max_new_tokens=100, temperature=0.8,
                                 top_k=200, top_p=0.95, generator=g, stop_ids={eot}):
        ...

The engine keeps a KV cache, so each new token costs one forward pass over one position; every
`next()` runs exactly one forward pass (the prompt on the first call), which lets a server hold
its model lock per step. Temperature 0 is greedy decoding. The same seed gives the same tokens.
A stop token ends generation and is not yielded; fewer than `max_new_tokens` yielded therefore
means a stop token was hit ("stop"), otherwise the length limit ("length").

When the context fills up (`max_seq_len`), the cache is rebuilt from the most recent half of the
context, so generation can run past the trained length with the model always seeing positions it
was trained on (nanoGPT crops the context the same way, without a cache).

Several prompts decode together with `generate_batch` (left padding, one forward pass per step for
all rows; `generate_tokens` is its one-row case); `complete` and `complete_batch` wrap the engines
with the tokenizer for `budgetlm generate --prompt` and `--input`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from budgetlm.config import BudgetError


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> int:
    """One token id from logits (V,). temperature 0 = argmax; top_k 0 and top_p 1 = no truncation.

    Top-k keeps the k most likely tokens (Fan et al. 2018); top-p keeps the smallest set whose
    probability reaches p (nucleus sampling, Holtzman et al. 2020); both apply after temperature."""
    logits = logits.detach().float().cpu()  # sample on the CPU: one generator, same draws on any device
    if temperature < 1e-4:  # 0 = greedy; tinier ones would overflow logits / temperature to inf
        return int(logits.argmax())
    logits = logits / temperature
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if 0 < top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop = (sorted_p.cumsum(0) - sorted_p) >= top_p
        drop[0] = False  # even when a tiny top_p underflows float32 to 0: the most likely token always stays
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_tokens(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                    stop_ids: Iterable[int] = ()) -> Iterator[int]:
    """Yield up to max_new_tokens sampled ids after prompt_ids (see the module docstring)."""
    for step in generate_batch(model, [prompt_ids], max_new_tokens, temperature, top_k, top_p, [generator],
                               stop_ids):
        if step.tokens[0] is None:
            return
        yield step.tokens[0]


@dataclass
class BatchStep:
    """One decoding step of a batch: for each row, its new token (None once the row has ended)."""

    tokens: list[int | None]  # per row: the sampled id, or None (a stop token now or earlier)
    logprobs: list[torch.Tensor | None]  # per row: log-softmax (V,) of the logits it was sampled from, when asked


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, generators: list[torch.Generator | None] | None = None,
                   stop_ids: Iterable[int] = (), logprobs: bool = False) -> Iterator[BatchStep]:
    """Decode several prompts together, one forward pass for all rows per `next()` (the prompts on
    the first call); at most max_new_tokens steps, fewer once every row has hit a stop token.

    Prompts of different lengths are left-padded and the cache hides the padding and gives each row
    its own positions (models.transformer.KVCache), so under greedy decoding every row gets the
    tokens it would get alone; each row samples with its own generator (`generators[i]`), so a
    seeded row draws as it would alone too. Rows that end leave the batch. When the longest row
    fills the context window, every row is rebuilt from its own most recent half-window of tokens
    (a row shorter than the longest is therefore cropped earlier than it would be alone)."""
    if not prompts or not all(prompts):
        raise ValueError("generation needs at least one prompt token per row (e.g. the end-of-text token)")
    if not getattr(model.cfg, "causal", False):
        raise ValueError("generation needs a causal model")
    stop, window = set(int(s) for s in stop_ids), model.cfg.max_seq_len
    generators = generators or [None] * len(prompts)
    contexts = [list(p)[-window:] for p in prompts]
    active = list(range(len(prompts)))  # the rows still in the cache, in cache order
    longest = max(len(c) for c in contexts)
    cache = model.new_kv_cache(batch_size=len(prompts), max_len=min(window, longest + max_new_tokens))
    logits = prefill(model, contexts, cache)  # (B, V)
    for n in range(max_new_tokens):
        tokens, lps, keep = [None] * len(prompts), [None] * len(prompts), []
        logits = logits.detach().float().cpu()  # one device-to-host copy per step; rows sample on the CPU
        for i, row in enumerate(active):
            token = sample_next(logits[i], temperature, top_k, top_p, generators[row])
            if token in stop:
                continue
            tokens[row] = token
            if logprobs:
                lps[row] = torch.log_softmax(logits[i], dim=-1)
            contexts[row].append(token)
            keep.append(i)
        yield BatchStep(tokens, lps)
        if not keep or n == max_new_tokens - 1:
            return
        if len(keep) < len(active):
            cache.select(keep)
            active = [active[i] for i in keep]
        if cache.pos >= window:  # full: rebuild every row from its most recent half of the window
            cache.reset()
            logits = prefill(model, [contexts[r][-(window // 2):] for r in active], cache)
        else:
            idx = torch.tensor([[contexts[r][-1]] for r in active], device=model.embed.weight.device)
            logits = model.step(idx, cache)  # (b, V)


def prefill(model, contexts: list[list[int]], cache) -> torch.Tensor:
    """Left-pad the contexts into one (B, T) batch, run it into the cache; logits (B, V)."""
    device = model.embed.weight.device
    T = max(len(c) for c in contexts)
    if all(len(c) == T for c in contexts):  # no padding: the plain causal path
        return model.step(torch.tensor(contexts, device=device), cache)
    idx = torch.tensor([[0] * (T - len(c)) + c for c in contexts], device=device)  # the pad id is never seen
    mask = torch.tensor([[0] * (T - len(c)) + [1] * len(c) for c in contexts], device=device)
    return model.step(idx, cache, attention_mask=mask)


@torch.no_grad()
def generate_uncached(model, prompt_ids: list[int], max_new_tokens: int, stop_ids: Iterable[int] = ()) -> list[int]:
    """Greedy decoding by full forward passes, no cache: the reference the cache is tested against."""
    ids, out, stop = list(prompt_ids), [], set(stop_ids)
    device = model.embed.weight.device
    for _ in range(max_new_tokens):
        logits, _ = model(torch.tensor([ids[-model.cfg.max_seq_len:]], device=device))
        token = int(logits[0, -1].argmax())
        if token in stop:
            break
        out.append(token)
        ids.append(token)
    return out


class TextStream:
    """Turns a growing list of token ids into printable text increments.

    Byte-level tokens can split a UTF-8 character; text is only released once it decodes without
    a trailing replacement character."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.emitted = tokenizer, [], ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        new, self.emitted = text[len(self.emitted):], text
        return new

    def text(self) -> str:
        return self.tok.decode(self.ids)


# --------------------------------------------------------------------------------------------------
# a whole completion (`budgetlm generate`, the Python API)


@dataclass
class Completion:
    text: str  # the generated text (without the prompt)
    tokens: int  # tokens generated
    prompt_tokens: int  # tokens of the prompt (the end-of-text token for an empty one)
    finish_reason: str  # stop (end-of-text token) | length (max_new_tokens reached)
    seed: int  # the sampling seed (given, or drawn and reported)
    seconds: float  # wall time of the generation (of its whole batch, from complete_batch)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float,
                   seed: int | None = None) -> None:
    if seed is not None and not 0 <= seed < 2**63:
        raise BudgetError(f"--seed must be in [0, 2^63), got {seed}")
    if max_new_tokens < 1:
        raise BudgetError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not temperature >= 0:
        raise BudgetError(f"--temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise BudgetError(f"--top-k must be >= 0, got {top_k}")
    if not 0 < top_p <= 1:
        raise BudgetError(f"--top-p must be in (0, 1], got {top_p}")


def check_prompt(prompt: str) -> None:
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 on the command line arrive as lone surrogates
        raise BudgetError("the prompt is not valid UTF-8 text") from None


def eot_id(tokenizer) -> int | None:
    """The end-of-text token: where an empty prompt starts, and where generation stops."""
    from budgetlm.data.tokenizer import SPECIAL_TOKENS

    return tokenizer.token_to_id(SPECIAL_TOKENS["eot"])


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A prompt's token ids as generation sees them: an empty prompt is the end-of-text token (the
    start of a document)."""
    ids = tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
    if not ids:
        eot = eot_id(tokenizer)
        if eot is None:
            raise BudgetError("empty prompt and the tokenizer has no end-of-text token to start from")
        ids = [eot]
    return ids


def complete(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 200,
             top_p: float = 1.0, seed: int | None = None, on_text: Callable[[str], None] | None = None) -> Completion:
    """Continue `prompt` with a causal model; `on_text` receives the text as it is produced."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
    check_prompt(prompt)
    eot, ids = eot_id(tokenizer), prompt_ids(tokenizer, prompt)
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    gen = torch.Generator().manual_seed(seed)
    stream = TextStream(tokenizer)
    t0 = time.perf_counter()
    for token in generate_tokens(model, ids, max_new_tokens, temperature, top_k, top_p, gen,
                                 stop_ids=[eot] if eot is not None else []):
        piece = stream.push(token)
        if piece and on_text is not None:
            on_text(piece)
    n = len(stream.ids)
    return Completion(stream.text(), n, len(ids), "length" if n == max_new_tokens else "stop", seed,
                      time.perf_counter() - t0)


def complete_batch(model, tokenizer, prompts: list[str], max_new_tokens: int = 200, temperature: float = 0.8,
                   top_k: int = 200, top_p: float = 1.0, seed: int | None = None,
                   batch_size: int = 16) -> list[Completion]:
    """Continue every prompt, `batch_size` prompts decoded together (`generate_batch`); the
    completions come back in the prompts' order. Prompts of similar token length share a batch (less
    padding). With `seed`, every prompt samples with that seed, so each completion is the one
    `complete(..., seed=seed)` gives for its prompt (token for token under greedy decoding); without
    one, each prompt draws its own seed. `seconds` is the wall time of the prompt's whole batch."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
    if batch_size < 1:
        raise BudgetError(f"--batch-size must be at least 1, got {batch_size}")
    for prompt in prompts:
        check_prompt(prompt)
    eot = eot_id(tokenizer)
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    seeds = [seed if seed is not None else random.SystemRandom().randrange(2**31) for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))
    out: list[Completion | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        generated: dict[int, list[int]] = {i: [] for i in chunk}
        t0 = time.perf_counter()
        for step in generate_batch(model, [ids[i] for i in chunk], max_new_tokens, temperature, top_k, top_p,
                                   [torch.Generator().manual_seed(seeds[i]) for i in chunk],
                                   stop_ids=[eot] if eot is not None else []):
            for i, token in zip(chunk, step.tokens):
                if token is not None:
                    generated[i].append(token)
        seconds = time.perf_counter() - t0
        for i in chunk:
            n = len(generated[i])
            out[i] = Completion(tokenizer.decode(generated[i]), n, len(ids[i]),
                                "length" if n == max_new_tokens else "stop", seeds[i], seconds)
    return out  # type: ignore[return-value]


def as_prompt(meta, text: str) -> str:
    """The prompt the model was trained with for `text`: a sequence-to-sequence run's template around
    a raw source (budgetlm.seq2seq), the text itself for any other run."""
    info = getattr(meta, "seq2seq", None)
    return text if info is None else info.template.replace("{source}", text)


def load_causal(run: str, device: str = "cpu", which: str = "latest"):
    """(model, tokenizer, meta) of a causal run, with one-line errors for anything else."""
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.runtime import detect_device_type
    from budgetlm.training.checkpoint import load_model

    model, meta = load_model(run, device=detect_device_type(device), which=which)
    if meta.is_classifier or not meta.causal:
        kind = "a classifier" if meta.is_classifier else "a masked model"
        raise BudgetError(f"{run} holds {kind}: `generate` needs a causal model (train --objective causal)")
    if not meta.tokenizer_path:
        raise BudgetError(f"{run} has no tokenizer.json next to its checkpoint")
    tok = load_tokenizer(meta.tokenizer_path)
    if tok.get_vocab_size() > model.cfg.vocab_size:
        raise BudgetError(f"the tokenizer has {tok.get_vocab_size()} tokens but the model only "
                          f"{model.cfg.vocab_size}: they do not belong together")
    return model, tok, meta
