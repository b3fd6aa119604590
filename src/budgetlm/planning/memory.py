"""Memory of a training run: exact parameters, model state (weights, gradients, optimizer state,
autocast copies) and the activations autograd keeps, per device. No torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from budgetlm.catalog import Device
from budgetlm.config import BudgetError
from budgetlm.models.config import ModelConfig
from budgetlm.models.presets import num_params

GiB = 1024**3


# --------------------------------------------------------------------------------------------------
# precision and optimizer registries


@dataclass(frozen=True)
class PrecisionSpec:
    """Bytes of one training precision (PyTorch autocast: fp32 master weights). Its peak FLOP/s is
    the catalog's (`catalog.Device.training_peak`)."""

    weight_bytes: int  # stored parameter (fp32: autocast keeps master weights in the parameters)
    grad_bytes: int  # gradient buffer (same dtype as the parameter)
    copy_bytes: int  # autocast's low-precision copy of each weight, alive from forward to backward
    act_bytes: int  # one activation element produced by a matmul under autocast


PRECISIONS: dict[str, PrecisionSpec] = {
    "fp32": PrecisionSpec(4, 4, 0, 4),
    "bf16": PrecisionSpec(4, 4, 2, 2),
    "fp16": PrecisionSpec(4, 4, 2, 2),
}
# Faster formats first: the search tries them in this order.
PRECISION_ORDER = ("bf16", "fp16", "fp32")


OPTIMIZERS = ("adamw", "muon")
# Masked models predict only the masked positions (Cramming's sparse prediction); when no rate is
# given, the share `budgetlm train` masks by default.
DEFAULT_PRED_FRACTION = 0.25


# --------------------------------------------------------------------------------------------------
# parameters


def param_groups(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts split the way the optimizers split them (budgetlm.training.optim):
    hidden 2-D matrices (Muon's), other matrices (embedding, output head) and vectors (norm gains),
    plus the number of parameter tensors of each kind."""
    C, L, F, V, A = cfg.n_embd, cfg.n_layer, cfg.ffn_dim, cfg.vocab_size, cfg.attn_dim
    hidden = L * (4 * C * A + 3 * C * F)  # fused qkv (3A x C), proj (C x A), w_in (2F x C), w_out (C x F)
    hidden_tensors = 4 * L
    other = V * C * (1 if cfg.tie_embeddings else 2)
    other_tensors = 1 if cfg.tie_embeddings else 2
    norms = 2 * L + 1  # attn_norm and mlp_norm per block, final norm
    if not cfg.causal:
        # ModernBERT: embedding norm added, layer 0 has no attention norm; prediction head dense + norm
        hidden += C * C
        hidden_tensors += 1
    vector_tensors = norms + (1 if not cfg.causal else 0)
    vectors = vector_tensors * C
    total = hidden + other + vectors
    assert total == num_params(cfg), "param_groups disagrees with presets.num_params"
    return {
        "total": total, "hidden": hidden, "other": other + vectors,
        "tensors": hidden_tensors + other_tensors + vector_tensors,
        "hidden_tensors": hidden_tensors,
    }


def optimizer_bytes(cfg: ModelConfig, optimizer: str) -> int:
    g = param_groups(cfg)
    other_tensors = g["tensors"] - g["hidden_tensors"]
    if optimizer == "adamw":
        return 8 * g["total"] + 4 * g["tensors"]
    if optimizer == "muon":
        return 4 * g["hidden"] + 8 * g["other"] + 4 * other_tensors
    raise BudgetError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


def state_bytes(cfg: ModelConfig, precision: str, optimizer: str = "adamw", shards: int = 1) -> dict[str, int]:
    """Weights, gradients, optimizer state and autocast weight copies, per device (FSDP shards
    everything but the copies, which FSDP gathers one layer at a time: counted as two layers)."""
    p = PRECISIONS[precision]
    n = num_params(cfg)
    weights = n * p.weight_bytes
    grads = n * p.grad_bytes
    opt = optimizer_bytes(cfg, optimizer)
    g = param_groups(cfg)
    # autocast casts every matmul weight (hidden matrices and the V x C output projection) once per
    # forward and keeps the copy for backward; the embedding lookup and the norms stay fp32
    copies = (g["hidden"] + cfg.vocab_size * cfg.n_embd) * p.copy_bytes
    if shards > 1:
        layer = 4 * cfg.n_embd * cfg.attn_dim + 3 * cfg.n_embd * cfg.ffn_dim
        gathered = 2 * layer * p.weight_bytes  # FSDP all-gathers the current (and prefetched) block
        weights, grads, opt = -(-weights // shards) + gathered, -(-grads // shards), -(-opt // shards)
        copies = 2 * layer * p.copy_bytes
    return {"weights": weights, "gradients": grads, "optimizer": opt, "weight_copies": copies}


# --------------------------------------------------------------------------------------------------
# activations


@dataclass(frozen=True)
class AttentionSpec:
    """What one attention implementation saves beyond q, k, v and its output (elements per (B, H))."""

    lse_per_token: int  # fp32 log-sum-exp values per query (flash kernels)
    scores_per_token_pair: int  # elements per query-key pair kept for backward (0 with flash)


ATTENTION: dict[str, AttentionSpec] = {
    # SDPA's flash / memory-efficient kernels (CUDA and CPU) keep one fp32 log-sum-exp per query
    # and recompute the T x T scores in backward (Dao et al. 2022).
    "flash": AttentionSpec(lse_per_token=1, scores_per_token_pair=0),
    # The math path keeps the softmax probabilities (Korthikanti et al. 2022: 2as^2b bytes in 16 bit).
    "math": AttentionSpec(lse_per_token=0, scores_per_token_pair=1),
}

# What autograd keeps, counted from budgetlm.models.transformer's forward (and checked tensor by
# tensor with saved_tensors_hooks, tests/test_plan.py). The residual stream is fp32 (parameters are
# fp32 and autocast's outputs are promoted when added to it), and norms run in fp32:
#   RMSNorm keeps its input and input * rstd (fp32) plus rstd; LayerNorm keeps its input, mean, rstd;
#   the linear after a norm keeps its own input (the norm output, cast to the compute dtype);
#   attention keeps the fused qkv output (alive through v), rotated q and k, and its output (also the
#   projection's input: the reshape is a view), all in the compute dtype;
#   the gated MLP keeps w_in's output (2F: both halves stay alive), act(a) (F) and act(a) * b (F).
NORM_FP32_SAVES = {True: 2, False: 1}  # causal (RMSNorm) / masked (LayerNorm): fp32 C-wide tensors
NORM_STAT_SAVES = {True: 1, False: 2}  # fp32 per-token statistics: rstd / mean and rstd
ATTN_WIDTH_SAVES = 6
MLP_FFN_SAVES = 4


def activation_bytes(cfg: ModelConfig, micro_batch: int, seq_len: int, precision: str = "fp32",
                     checkpointing: bool = False, attention: str = "flash",
                     pred_fraction: float | None = None) -> dict[str, int]:
    """Bytes autograd keeps from forward to backward for one micro-batch, split into the blocks
    ("layers"), the embedding/final norm/head part ("head") and the fp32 logits ("logits").
    Autocast's weight copies are model state (`state_bytes`), not counted here.

    pred_fraction: share of positions that reach the output projection (1 for causal; the masking
    rate for masked models, which predict only masked positions: Cramming's sparse prediction)."""
    B, T, C, F, H, L = micro_batch, seq_len, cfg.n_embd, cfg.ffn_dim, cfg.n_head, cfg.n_layer
    A = cfg.attn_dim  # attention's inner width: C unless heads were pruned
    a = PRECISIONS[precision].act_bytes
    att = ATTENTION[attention]
    bt = B * T
    # one norm and the linear that reads it
    norm = NORM_FP32_SAVES[cfg.causal] * bt * C * 4 + NORM_STAT_SAVES[cfg.causal] * bt * 4 + bt * C * a
    rope_casts = 4 * T * (cfg.head_dim // 2) * a if a != 4 else 0  # cos/sin cast to the compute dtype, for q and k
    per_block = (
        2 * norm
        + ATTN_WIDTH_SAVES * bt * A * a
        + MLP_FFN_SAVES * bt * F * a
        + att.lse_per_token * B * H * T * 4
        + att.scores_per_token_pair * B * H * T * T * a
        + rope_casts
    )
    layers = L * per_block
    if not cfg.causal:  # layer 0 has no attention norm: its qkv reads the embedding norm (counted in head)
        layers -= norm
    if checkpointing:
        # Only each block's (fp32) input survives; one block is recomputed at a time in backward.
        layers = L * bt * C * 4 + per_block
    frac = 1.0 if cfg.causal else (DEFAULT_PRED_FRACTION if pred_fraction is None else pred_fraction)
    m = math.ceil(bt * frac)  # positions that reach the output projection
    if cfg.causal:
        head = norm + 2 * bt * 8  # final norm + lm_head input; int64 ids (embedding) and targets
    else:
        # embedding norm + layer 0's qkv input; final norm (its output feeds only an index op);
        # on the m predicted positions: dense input, decoder input, the head norm's fp32 input and
        # stats, and in fp32 also GELU's input (under CPU autocast the hooks see no separate copy of
        # it: measured, tests/test_plan.py); int64 ids, kept targets and the bool position mask
        per_pos = 2 * a + 4 + (4 if a == 4 else 0)
        head = (norm + (bt * C * 4 + 2 * bt * 4)
                + per_pos * m * C + 2 * m * 4
                + bt * 8 + m * 8 + bt)
    logits = m * cfg.vocab_size * 4  # log-softmax output, fp32 (cross-entropy runs in fp32)
    return {"layers": int(layers), "head": int(head + 4), "logits": int(logits)}


# --------------------------------------------------------------------------------------------------
# memory plan


RUNTIME_OVERHEAD = {  # bytes the framework itself holds on the device (not counted by PyTorch)
    "gpu": int(0.75 * GiB),  # CUDA context and kernels: 0.3-2 GiB in practice (hardware-notes 2.2)
    "tpu": int(0.5 * GiB),  # XLA runtime and compiled programs (rough; unverified)
    "cpu": int(0.5 * GiB),  # the Python process with torch loaded (RSS measured about 0.4 GiB)
}
FRAGMENTATION = 0.10  # allocator slack on top of what tensors need (hardware-notes 4.2: 5-10%)


def memory_breakdown(cfg: ModelConfig, device: Device, micro_batch: int, seq_len: int, precision: str,
                     checkpointing: bool, optimizer: str = "adamw", shards: int = 1,
                     pred_fraction: float | None = None, state: dict[str, int] | None = None) -> dict[str, int]:
    """Peak bytes on one device. Besides what is saved for backward, the peak holds the gradient of
    the logits (fp32) and of the low-precision logits while the loss backward runs. `state`: this
    model's `state_bytes` when the caller has them already (they do not depend on the batch)."""
    s = state if state is not None else state_bytes(cfg, precision, optimizer, shards)
    act = activation_bytes(cfg, micro_batch, seq_len, precision, checkpointing, pred_fraction=pred_fraction)
    transient = act["logits"] + act["logits"] * PRECISIONS[precision].act_bytes // 4
    tensors = sum(s.values()) + act["layers"] + act["head"] + act["logits"] + transient
    out = {**s, "activations": act["layers"] + act["head"], "logits": act["logits"] + transient,
           "overhead": RUNTIME_OVERHEAD.get(device.kind, RUNTIME_OVERHEAD["gpu"]) + int(FRAGMENTATION * tensors)}
    out["total"] = sum(out.values())
    return out
