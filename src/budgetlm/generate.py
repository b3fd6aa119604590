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
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any, Iterable, Iterator

import torch

from budgetlm import ui
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
        drop[0] = False  # even when top_p underflows float32 to 0 (found by schemathesis via serve)
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_tokens(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                    top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                    stop_ids: Iterable[int] = ()) -> Iterator[int]:
    """Yield up to max_new_tokens sampled ids after prompt_ids (see the module docstring)."""
    if not prompt_ids:
        raise ValueError("generation needs at least one prompt token (e.g. the end-of-text token)")
    if not getattr(model.cfg, "causal", False):
        raise ValueError("generation needs a causal model")
    stop = set(int(s) for s in stop_ids)
    window = model.cfg.max_seq_len
    device = model.embed.weight.device
    cache = model.new_kv_cache(batch_size=1, max_len=window)
    context = list(prompt_ids)[-window:]
    logits = model.step(torch.tensor([context], device=device), cache)[0]  # (V,)
    for _ in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if token in stop:
            return
        yield token
        context.append(token)
        if cache.pos >= window:  # full: rebuild from the most recent half of the context
            cache.reset()
            context = context[-(window // 2):]
            logits = model.step(torch.tensor([context], device=device), cache)[0]
        else:
            logits = model.step(torch.tensor([[token]], device=device), cache)[0]


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
# command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="run directory of a trained causal model")
    parser.add_argument("--prompt", default="", help="text to continue (empty: start of a document)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="most tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k most likely tokens; 0 = all")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]; 1 = off")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--checkpoint", default="latest", choices=["latest", "best"],
                        help="which checkpoint of the run to load")


def _check_args(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise BudgetError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise BudgetError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise BudgetError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise BudgetError(f"--top-p must be in (0, 1], got {args.top_p}")


def load_generator_model(run: str, device: str = "cpu", which: str = "latest"):
    """(model, tokenizer, meta) for a causal run, with one-line errors for anything else."""
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.runtime import detect_device_type
    from budgetlm.train.checkpoint import load_model

    dev = detect_device_type(device) if device == "auto" else device
    model, meta = load_model(run, device=dev, which=which)
    if meta.get("model_kind", "lm") != "lm" or not getattr(model, "cfg", None) or not model.cfg.causal:
        kind = "a classifier" if meta.get("model_kind") == "classifier" else "a masked model"
        raise BudgetError(f"{run} holds {kind}: `generate` needs a causal model (train --objective causal)")
    if not meta.get("tokenizer_path"):
        raise BudgetError(f"{run} has no tokenizer.json next to its checkpoint")
    tok = load_tokenizer(meta["tokenizer_path"])
    if tok.get_vocab_size() > model.cfg.vocab_size:
        raise BudgetError(f"the tokenizer has {tok.get_vocab_size()} tokens but the model only "
                          f"{model.cfg.vocab_size}: they do not belong together")
    return model, tok, meta


def run(args: argparse.Namespace) -> dict[str, Any]:
    _check_args(args)
    from budgetlm.data.tokenizer import SPECIAL_TOKENS

    model, tok, meta = load_generator_model(args.model, args.device, args.checkpoint)
    eot = tok.token_to_id(SPECIAL_TOKENS["eot"])
    prompt_ids = tok.encode(args.prompt, add_special_tokens=False).ids if args.prompt else []
    if not prompt_ids:
        if eot is None:
            raise BudgetError("empty prompt and the tokenizer has no end-of-text token to start from")
        prompt_ids = [eot]
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    gen = torch.Generator().manual_seed(seed)
    out = ui.console().file
    if args.prompt:
        out.write(args.prompt)
        out.flush()
    stream = TextStream(tok)
    t0 = time.perf_counter()
    for token in generate_tokens(model, prompt_ids, args.max_new_tokens, args.temperature, args.top_k,
                                 args.top_p, gen, stop_ids=[eot] if eot is not None else []):
        piece = stream.push(token)
        if piece:
            out.write(piece)
            out.flush()
    elapsed = time.perf_counter() - t0
    out.write("\n")
    out.flush()
    n = len(stream.ids)
    return {
        "text": stream.text(),
        "prompt": args.prompt,
        "tokens": n,
        "prompt_tokens": len(prompt_ids),
        "finish_reason": "length" if n == args.max_new_tokens else "stop",
        "tokens_per_s": round(n / elapsed, 2) if elapsed > 0 else None,
        "seed": seed,
        "checkpoint": meta.get("checkpoint_dir"),
    }
