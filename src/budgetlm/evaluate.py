"""`budgetlm eval`: loss, perplexity and exact bits per byte of a trained language model.

Causal models: every token after the first is predicted exactly once (non-overlapping windows of
the model's context; the last, shorter window covers the tail), so

    bits per byte = (sum of per-token NLL in nats) / ln 2 / (UTF-8 bytes of the evaluated text)

which is comparable across tokenizers (nanochat's `evaluate_bpb` makes the same choice). With
`--data DIR` the byte count is the manifest's for the val split; with `--text FILE...` each file is
tokenized with the run's tokenizer and its bytes are counted directly.

Masked models: masked-LM loss and accuracy at a fixed masking seed (the same positions every time).
A fine-tuned classifier run is handed to `budgetlm.finetune.evaluate_classifier`.
"""

from __future__ import annotations

import argparse
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
               max_tokens: int | None = None) -> dict[str, float]:
    """Sum of next-token NLL (nats) over tokens[1:n] with n = len(tokens) or max_tokens.

    Windows of seq_len predictions start every seq_len tokens, so each position is predicted once."""
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
                   collator, max_tokens: int | None = None, seed: int = EVAL_MASK_SEED) -> dict[str, float]:
    """Masked-LM loss and accuracy over non-overlapping windows, masked with a fixed seed."""
    n = len(tokens) if not max_tokens else min(len(tokens), max_tokens)
    starts = list(range(0, n - seq_len + 1, seq_len))
    if not starts:
        raise BudgetError(f"the evaluation data has {n} tokens, fewer than one window of {seq_len}")
    rng = np.random.default_rng(seed)
    total, correct, count = 0.0, 0, 0
    for i in range(0, len(starts), batch_size):
        windows = np.stack([np.asarray(tokens[s : s + seq_len]) for s in starts[i : i + batch_size]])
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
# the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from budgetlm.classify import model_arg

    model_arg(parser, "run directory (or checkpoint directory) to evaluate")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--data", help="prepared dataset folder: evaluate its val split")
    src.add_argument("--text", nargs="+", metavar="FILE", help="UTF-8 text files to evaluate")
    parser.add_argument("--split", default="val", choices=["val", "train"], help="split of --data to evaluate")
    parser.add_argument("--max-tokens", type=int, default=0, help="evaluate at most this many tokens (0 = all)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--which", default="latest", choices=["latest", "best"], help="checkpoint to load")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps | xla")
    parser.add_argument("--precision", default="fp32", help="auto | fp32 | bf16 | fp16 (fp32: exact numbers)")
    parser.add_argument("--quantize", default="none", choices=["none", "int8"],
                        help="fine-tuned classifiers: int8 dynamic quantization of linear layers (CPU)")


def _check_vocab(tok, meta: dict[str, Any]) -> None:
    have, want = tok.get_vocab_size(), meta["model_config"]["vocab_size"]
    if have != want:
        raise BudgetError(
            f"tokenizer vocabulary ({have}) does not match the checkpoint's ({want}): "
            "this data was prepared with a different tokenizer"
        )


def _text_tokens(paths: list[str], tok, eot: int | None) -> tuple[np.ndarray, int]:
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
            ids.append(eot)  # end of document, as `prepare` writes after each one
    return np.asarray(ids, dtype=np.int64), n_bytes


def evaluate_lm(model, meta: dict[str, Any], tokens, n_bytes: int | None, rt: runtime.Runtime,
                batch_size: int = 8, max_tokens: int | None = None, mask_ids: dict[str, int] | None = None,
                mask_rate: float = 0.25) -> dict[str, Any]:
    """The eval numbers for an LM checkpoint over a token array (bytes: of the full array's text)."""
    cfg = meta["model_config"]
    seq_len = int(cfg["max_seq_len"])
    if cfg.get("causal", True):
        r = causal_nll(model, tokens, seq_len, batch_size, rt, max_tokens)
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
    collator = MaskingCollator(MaskingConfig(rate=mask_rate), ids["mask"], int(cfg["vocab_size"]),
                               [v for k, v in ids.items() if k != "unk"])
    r = masked_metrics(model, tokens, seq_len, batch_size, rt, collator, max_tokens)
    return {"objective": "masked", "loss": r["loss"], "accuracy": r["accuracy"], "tokens": r["predicted"],
            "mask_rate": mask_rate, "mask_seed": EVAL_MASK_SEED}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm.data.tokenizer import load_tokenizer, special_ids
    from budgetlm.train.checkpoint import load_model, read_meta, resolve_checkpoint

    ckpt = resolve_checkpoint(args.model[0], args.which)
    meta0 = read_meta(ckpt)
    if meta0.get("model_kind") == "classifier":
        from budgetlm.finetune import evaluate_classifier

        return evaluate_classifier(args)
    if len(args.model) > 1:
        raise BudgetError("several --model runs make an ensemble of fine-tuned classifiers; "
                          f"{args.model[0]} is a language model: evaluate one at a time")
    args.model = args.model[0]
    if not args.data and not args.text:
        raise BudgetError("give --data DIR (its val split) or --text FILE... to evaluate")
    rt = runtime.init_runtime(args.device, args.precision, seed=0)
    model, meta = load_model(args.model, device=rt.device, which=args.which)
    mask_rate = float(meta.get("run_config", {}).get("mask_rate", 0.25) or 0.25)
    if args.data:
        from budgetlm.data.shards import open_tokens, read_manifest

        manifest = read_manifest(args.data)
        tok = load_tokenizer(Path(args.data) / "tokenizer.json")
        _check_vocab(tok, meta)
        tokens = open_tokens(args.data, args.split)
        n_bytes = int(manifest["splits"][args.split].get("bytes", 0)) or None
        source = f"{args.data} ({args.split})"
    else:
        if not meta.get("tokenizer_path"):
            raise BudgetError(f"checkpoint {ckpt} has no tokenizer.json: evaluate with --data instead")
        tok = load_tokenizer(meta["tokenizer_path"])
        _check_vocab(tok, meta)
        eot = special_ids(tok).get("eot")
        tokens, n_bytes = _text_tokens(args.text, tok, eot)
        source = ", ".join(args.text)
    ids = special_ids(tok)
    result = evaluate_lm(model, meta, tokens, n_bytes, rt, args.batch_size, args.max_tokens or None,
                         ids, mask_rate)
    result.update({"model": str(args.model), "checkpoint": meta["checkpoint_dir"], "data": source})
    rows = [[k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in result.items()
            if k in ("loss", "perplexity", "bits_per_byte", "accuracy", "tokens", "bytes")]
    ui.table(f"eval {args.model} on {source}", ["metric", "value"], rows)
    return result
