"""Loss, perplexity and exact bits per byte of a language model; masked-LM accuracy.

Causal models: every token after the first is predicted exactly once (non-overlapping windows of
the model's context; the last, shorter window covers the tail), so

    bits per byte = (sum of per-token NLL in nats) / ln 2 / (UTF-8 bytes of the evaluated text)

which is comparable across tokenizers (nanochat's `evaluate_bpb` makes the same choice). With
`--data DIR` the byte count is the manifest's for the val split; with `--text FILE...` each file is
tokenized with the run's tokenizer and its bytes are counted directly.

Masked models: masked-LM loss and accuracy at a fixed masking seed (the same positions every time).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from budgetlm import runtime, ui
from budgetlm.config import BudgetError

LN2 = math.log(2.0)
EVAL_MASK_SEED = 1234  # fixed masking seed: masked-LM numbers are comparable across runs


# --------------------------------------------------------------------------------------------------
# the arithmetic (used by `train` too)


def in_eval_mode(fn: Callable) -> Callable:
    """Decorate a measurement `fn(model, ...)`: it runs with dropout off, whatever mode the caller
    left the model in (inside the training loop or after it), and the model's mode is restored."""

    @functools.wraps(fn)
    def wrapper(model: torch.nn.Module, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return wrapper


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood in nats -> bits per UTF-8 byte."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs a positive byte count")
    return nll_nats / LN2 / n_bytes


@torch.no_grad()
@in_eval_mode
def causal_nll(model: torch.nn.Module, tokens, seq_len: int, batch_size: int, rt: runtime.Runtime,
               max_tokens: int | None = None, on_tokens: Callable[[int], None] | None = None) -> dict[str, float]:
    """Sum of next-token NLL (nats) over tokens[1:n] with n = len(tokens) or max_tokens.

    Windows of seq_len predictions start every seq_len tokens, so each position is predicted once.
    `on_tokens(k)` is told after each batch how many tokens it covered (progress)."""
    n = len(tokens) if not max_tokens else min(len(tokens), max_tokens)
    if n < 2:
        raise BudgetError("the evaluation text is too short: it needs at least 2 tokens")
    arr = np.asarray(tokens[:n], dtype=np.int64)
    starts = list(range(0, n - 1, seq_len))
    total, count = 0.0, 0
    full = [s for s in starts if s + seq_len + 1 <= n]
    tail = [s for s in starts if s + seq_len + 1 > n]
    for i in range(0, len(full), batch_size):
        chunk = np.stack([arr[s : s + seq_len + 1] for s in full[i : i + batch_size]])
        total += _sum_nll(model, chunk, rt)
        count += chunk.shape[0] * seq_len
        if on_tokens:
            on_tokens(chunk.shape[0] * seq_len)
    for s in tail:  # at most one window: the tail shorter than seq_len
        chunk = arr[s:n][None, :]
        total += _sum_nll(model, chunk, rt)
        count += chunk.shape[1] - 1
    return {"nll": total, "predicted": count, "loss": total / count}


def _sum_nll(model: torch.nn.Module, windows: np.ndarray, rt: runtime.Runtime) -> float:
    w = torch.from_numpy(windows).to(rt.device)  # (B, T+1)
    with runtime.autocast(rt):
        logits, _ = model(w[:, :-1])  # (B, T, V)
    return float(F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum"))


@torch.no_grad()
@in_eval_mode
def masked_metrics(model: torch.nn.Module, tokens, seq_len: int, batch_size: int, rt: runtime.Runtime,
                   collator, max_tokens: int | None = None, seed: int = EVAL_MASK_SEED,
                   on_tokens: Callable[[int], None] | None = None) -> dict[str, float]:
    """Masked-LM loss and accuracy over non-overlapping windows, masked with a fixed seed."""
    n = len(tokens) if not max_tokens else min(len(tokens), max_tokens)
    starts = list(range(0, n - seq_len + 1, seq_len))
    if not starts:
        raise BudgetError(f"the evaluation data has {n} tokens, fewer than one window of {seq_len}")
    rng = np.random.default_rng(seed)
    total, correct, count = 0.0, 0, 0
    for i in range(0, len(starts), batch_size):
        windows = np.stack([np.asarray(tokens[s : s + seq_len]) for s in starts[i : i + batch_size]])
        if on_tokens:
            on_tokens(windows.size)
        batch = collator(windows, rng)
        idx = torch.from_numpy(batch["idx"]).to(rt.device)
        targets = torch.from_numpy(batch["targets"]).to(rt.device)
        with runtime.autocast(rt):
            logits, _ = model(idx, targets=targets)  # (N_masked, V): sparse prediction
        y = targets.flatten()
        y = y[y != -100]
        if y.numel() == 0:
            continue
        total += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        count += int(y.numel())
    if count == 0:
        raise BudgetError("no token was masked in the evaluation data")
    return {"loss": total / count, "accuracy": correct / count, "predicted": count}


# --------------------------------------------------------------------------------------------------
# a trained run on a dataset split or on text files


def _check_vocab(tok, vocab_size: int, exact: bool = True) -> None:
    """A run's tokenizer has exactly the model's vocabulary; a Hugging Face folder's may have fewer
    tokens than its embedding table (`exact=False`), never more."""
    have = tok.get_vocab_size()
    if have > vocab_size or (exact and have != vocab_size):
        hint = "this data was prepared with a different tokenizer" if exact else \
            "the data's tokenizer has tokens the model never saw (prepare adds budgetlm's special tokens); " \
            "evaluate the folder with --text FILE..., or train on the data first (train --init-from)"
        raise BudgetError(f"tokenizer vocabulary ({have}) does not match the checkpoint's ({vocab_size}): {hint}")


def text_tokens(paths: list[str], tok, eot: int | None) -> tuple[np.ndarray, int]:
    """Token ids of UTF-8 text files (an end-of-text token after each, as `prepare` writes) and
    their byte count."""
    ids: list[int] = []
    n_bytes = 0
    for p in paths:
        try:
            text = Path(p).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BudgetError(f"cannot read {p} as UTF-8 text: {e}") from None
        n_bytes += len(text.encode("utf-8"))
        ids.extend(tok.encode(text, add_special_tokens=False).ids)
        if eot is not None:
            ids.append(eot)
    return np.asarray(ids, dtype=np.int64), n_bytes


def evaluate_lm(model, model_config: dict[str, Any], tokens, n_bytes: int | None, rt: runtime.Runtime,
                batch_size: int = 8, max_tokens: int | None = None, mask_ids: dict[str, int] | None = None,
                mask_rate: float = 0.25, on_tokens: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The eval numbers for a language model over a token array (bytes: of the full array's text)."""
    seq_len = int(model_config["max_seq_len"])
    if model_config.get("causal", True):
        r = causal_nll(model, tokens, seq_len, batch_size, rt, max_tokens, on_tokens)
        out = {"objective": "causal", "loss": r["loss"], "perplexity": math.exp(min(r["loss"], 700.0)),
               "tokens": r["predicted"] + 1}
        if n_bytes:
            n_used = min(len(tokens), max_tokens) if max_tokens else len(tokens)
            exact = n_used == len(tokens)
            # A truncated evaluation is credited the matching share of the bytes (estimate).
            b = n_bytes if exact else int(round(n_bytes * n_used / len(tokens)))
            out.update({"bits_per_byte": bits_per_byte(r["nll"], b), "bytes": b, "bytes_exact": exact})
        return out
    from budgetlm.data.loader import MaskingCollator, MaskingConfig

    ids = mask_ids or {}
    collator = MaskingCollator(MaskingConfig(rate=mask_rate), ids["mask"], int(model_config["vocab_size"]),
                               [v for k, v in ids.items() if k != "unk"])
    r = masked_metrics(model, tokens, seq_len, batch_size, rt, collator, max_tokens, on_tokens=on_tokens)
    return {"objective": "masked", "loss": r["loss"], "accuracy": r["accuracy"], "tokens": r["predicted"],
            "mask_rate": mask_rate, "mask_seed": EVAL_MASK_SEED}


def evaluate_run(model, meta, tok, device: str, data: str | None = None, texts: list[str] | None = None,
                 split: str = "val", batch_size: int = 8, max_tokens: int = 0, precision: str = "fp32") -> dict[str, Any]:
    """Evaluate a loaded language model (`train.checkpoint.load_model`) on a prepared dataset's split
    or on text files, with exact bits per byte for causal models."""
    from budgetlm.data.shards import Dataset, check_ids
    from budgetlm.data.tokenizer import SPECIAL_TOKENS, special_ids

    if bool(data) == bool(texts):
        raise BudgetError("give either --data DIR (its val split) or --text FILE... to evaluate")
    if batch_size < 1 or max_tokens < 0:
        raise BudgetError(f"--batch-size must be at least 1 and --max-tokens at least 0, got {batch_size} and {max_tokens}")
    rt = runtime.init_runtime(device, precision, seed=0)
    runtime.set_attention_precision(model, runtime.attention_fp32(rt))
    vocab = int(meta.model_config["vocab_size"])
    exact = getattr(meta, "origin", "budgetlm") != "hf"
    if data:
        ds = Dataset.open(data)
        tok = ds.tokenizer()
        _check_vocab(tok, vocab, exact)
        tokens, n_bytes, source = ds.tokens(split), ds.split_bytes(split) or None, f"{data} ({split})"
        check_ids(tokens, vocab, f"the {split} split of {data}")
    else:
        if tok is None:
            raise BudgetError(f"checkpoint {meta.path} has no tokenizer.json: evaluate with --data instead")
        _check_vocab(tok, vocab, exact)
        # a Hugging Face tokenizer may lack budgetlm's end-of-text token: files are then joined as they are
        tokens, n_bytes = text_tokens(texts, tok, tok.token_to_id(SPECIAL_TOKENS["eot"]))
        source = ", ".join(texts)
    mask_rate = float(meta.run_config.get("mask_rate", 0.25) or 0.25)
    causal = meta.model_config.get("causal", True)
    n = min(len(tokens), max_tokens) if max_tokens else len(tokens)
    with ui.progress("evaluating", total=n, unit="tokens") as bar:  # a bar on a terminal, lines in a log
        result = evaluate_lm(model, meta.model_config, tokens, n_bytes, rt, batch_size, max_tokens or None,
                             None if causal else special_ids(tok), mask_rate,  # only masking needs the special ids
                             on_tokens=lambda k: bar.advance(0, k))
    return {**result, "checkpoint": meta.path, "data": source}
