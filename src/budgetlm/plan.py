"""Plan a training run: memory, FLOPs, time, cost and model size for a device and a budget.

Pure arithmetic: no torch import (a test checks it), so `budgetlm plan` answers in milliseconds on
any machine. Every formula is in docs/planning.md with its source; the short version:

- parameters: exact, `budgetlm.models.presets.num_params` (tested equal to the real model's);
- model state: weights + gradients + optimizer state (+ autocast's low-precision weight copies),
  sharded across devices under FSDP (ZeRO-3: Rajbhandari et al. 2020);
- activations: counted per tensor that autograd saves in *our* model (derived from its forward and
  checked against `torch.autograd.graph.saved_tensors_hooks`, benchmarks/plan_accuracy.py), flash
  attention (no T^2 term, Dao et al. 2022), the gated MLP, activation checkpointing;
- FLOPs per token: 6N + 12 L C T (Kaplan et al. 2020; PaLM appendix B);
- time = FLOPs / (MFU x peak); MFU from `budgetlm bench` calibration or DEFAULT_MFU;
- size: minimise the Chinchilla loss L(N, D) = E + A/N^a + B/D^b with the Besiroglu et al. 2024 refit,
  D the tokens the budget buys and repeated data discounted (Muennighoff et al. 2023).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from budgetlm.catalog import Device
from budgetlm.config import BudgetError
from budgetlm.models.config import ModelConfig
from budgetlm.models.presets import model_config, num_params

GiB = 1024**3


# --------------------------------------------------------------------------------------------------
# precision and optimizer registries


@dataclass(frozen=True)
class PrecisionSpec:
    """Bytes and peak column of one training precision (PyTorch autocast: fp32 master weights)."""

    weight_bytes: int  # stored parameter (fp32: autocast keeps master weights in the parameters)
    grad_bytes: int  # gradient buffer (same dtype as the parameter)
    copy_bytes: int  # autocast's low-precision copy of each weight, alive from forward to backward
    act_bytes: int  # one activation element produced by a matmul under autocast
    peaks: tuple[str, ...]  # catalog columns to use for peak FLOP/s, first available wins


PRECISIONS: dict[str, PrecisionSpec] = {
    # fp32 runs matmuls in TF32 on GPUs that have it (runtime turns allow_tf32 on).
    "fp32": PrecisionSpec(4, 4, 0, 4, ("tf32", "fp32")),
    "bf16": PrecisionSpec(4, 4, 2, 2, ("bf16",)),
    "fp16": PrecisionSpec(4, 4, 2, 2, ("fp16",)),
}
# Faster formats first: the search tries them in this order.
PRECISION_ORDER = ("bf16", "fp16", "fp32")


OPTIMIZERS = ("adamw", "muon")


# --------------------------------------------------------------------------------------------------
# parameters


def param_groups(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts split the way the optimizers split them (budgetlm.train.optim):
    hidden 2-D matrices (Muon's), other matrices (embedding, output head) and vectors (norm gains),
    plus the number of parameter tensors of each kind."""
    C, L, F, V = cfg.n_embd, cfg.n_layer, cfg.ffn_dim, cfg.vocab_size
    hidden = L * (4 * C * C + 3 * C * F)  # fused qkv (3C x C), proj (C x C), w_in (2F x C), w_out (C x F)
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
        layer = 4 * cfg.n_embd**2 + 3 * cfg.n_embd * cfg.ffn_dim
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
    a = PRECISIONS[precision].act_bytes
    att = ATTENTION[attention]
    bt = B * T
    # one norm and the linear that reads it
    norm = NORM_FP32_SAVES[cfg.causal] * bt * C * 4 + NORM_STAT_SAVES[cfg.causal] * bt * 4 + bt * C * a
    rope_casts = 4 * T * (cfg.head_dim // 2) * a if a != 4 else 0  # cos/sin cast to the compute dtype, for q and k
    per_block = (
        2 * norm
        + ATTN_WIDTH_SAVES * bt * C * a
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
    frac = 1.0 if cfg.causal else (0.25 if pred_fraction is None else pred_fraction)
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
                     pred_fraction: float | None = None) -> dict[str, int]:
    """Peak bytes on one device. Besides what is saved for backward, the peak holds the gradient of
    the logits (fp32) and of the low-precision logits while the loss backward runs."""
    s = state_bytes(cfg, precision, optimizer, shards)
    act = activation_bytes(cfg, micro_batch, seq_len, precision, checkpointing, pred_fraction=pred_fraction)
    transient = act["logits"] + act["logits"] * PRECISIONS[precision].act_bytes // 4
    tensors = sum(s.values()) + act["layers"] + act["head"] + act["logits"] + transient
    out = {**s, "activations": act["layers"] + act["head"], "logits": act["logits"] + transient,
           "overhead": RUNTIME_OVERHEAD.get(device.kind, RUNTIME_OVERHEAD["gpu"]) + int(FRAGMENTATION * tensors)}
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------------------------------
# FLOPs, throughput, calibration


def flops_per_token(cfg: ModelConfig, seq_len: int, pred_fraction: float | None = None) -> float:
    """Training FLOPs per token: 6 x (matmul parameters) + 12 L C T for attention scores
    (PaLM appendix B; nanoGPT's estimate_mfu). For masked models the head runs only on predicted
    positions. The attention term assumes full attention; causal kernels skip about half of it."""
    C, L, F, V, T = cfg.n_embd, cfg.n_layer, cfg.ffn_dim, cfg.vocab_size, seq_len
    body = L * (4 * C * C + 3 * C * F)
    head = V * C
    if not cfg.causal:
        head += C * C
        head *= 0.25 if pred_fraction is None else pred_fraction
    return 6.0 * (body + head) + 12.0 * L * C * T


# Model FLOPs utilisation when nothing was measured (hardware-notes 2.5: 0.35-0.5 on datacenter
# GPUs, 0.3-0.5 on consumer GPUs, 0.2-0.3 for tiny models or fp32; nanochat ~0.5 on H100, llm.c ~0.6).
DEFAULT_MFU = {"gpu": 0.40, "tpu": 0.40, "cpu": 0.30}
TINY_WIDTH = 512  # below this width matmuls are too small to fill an accelerator
TINY_MFU_FACTOR = 0.6  # 0.4 -> 0.24, inside hardware-notes' 0.2-0.3 for tiny models
TRAINER_CHECKPOINTING = True  # budgetlm.train --activation-checkpointing recomputes each block in backward
RECOMPUTE_FACTOR = 8.0 / 6.0  # full recompute adds one forward pass (2N of 6N FLOPs per token)


def peak_flops(device: Device, precision: str) -> float | None:
    for col in PRECISIONS[precision].peaks:
        if device.peak_flops.get(col):
            return device.peak_flops[col]
    return None


def mfu_for(device: Device, precision: str, cfg: ModelConfig, seq_len: int,
            calibration: dict[str, Any] | None = None) -> tuple[float, str]:
    """(MFU, where it came from). From calibration points (`budgetlm bench`, or `train`'s own):
    the time per token is taken as affine in FLOPs per token, a fixed cost (kernel launches, the
    optimizer step, Python) plus FLOPs at a sustained rate, piecewise between the points and
    extended from the end segments. On a 2-core CPU, calibrated at depths 1 and 4, this predicted
    depths 2, 3 and 6 at sequence lengths 128 and 256 within 11% (17% in a noisier run), where
    interpolating the MFU in log FLOPs per token (the rule before 2026-12-02) missed depth 6 by 22%
    (docs/bench/planning.md).
    Points measured at `seq_len` are used alone when there are any (`train` calibrates at its own
    length); one point means a constant FLOP/s."""
    points = ((calibration or {}).get("precisions") or {}).get(precision) or []
    peak = peak_flops(device, precision)
    points = [p for p in points if p.get("achieved_flops")]
    points = [p for p in points if p.get("seq_len") == seq_len] or points
    if points and peak:
        # MFU is recomputed against this device's peak, so a calibration measures achieved FLOP/s
        # and stays valid whatever peak figure the catalog carries.
        x = flops_per_token(cfg, seq_len)
        pts = sorted((p["flops_per_token"], p["flops_per_token"] / p["achieved_flops"]) for p in points)
        achieved = pts[0][0] / pts[0][1]
        if len(pts) > 1:
            i = next((k for k in range(len(pts) - 1) if x <= pts[k + 1][0]), len(pts) - 2)
            (x0, t0), (x1, t1) = pts[i], pts[i + 1]
            t = t0 + (t1 - t0) * (x - x0) / ((x1 - x0) or 1.0)  # seconds per token
            if t1 >= t0 and t > 0:
                achieved = x / t
            else:  # more FLOPs per token never take less time per token: a segment tilted that way
                # is noise, and extending it could give no time at all; use the nearest point's FLOP/s
                nearest = min(pts, key=lambda q: abs(q[0] - x))
                achieved = nearest[0] / nearest[1]
        # (on a CPU the peak is an estimate and the MFU may exceed 1; only achieved FLOP/s matter)
        return achieved / peak, "calibration"
    mfu = DEFAULT_MFU.get(device.kind, DEFAULT_MFU["gpu"])
    if device.kind != "cpu" and cfg.n_embd < TINY_WIDTH:
        mfu *= TINY_MFU_FACTOR
    return mfu, "default"


# --------------------------------------------------------------------------------------------------
# the plan


@dataclass
class Plan:
    device: str  # catalog id (or the local device's name)
    num_devices: int  # data-parallel devices (FSDP shards the model state across them)
    objective: str  # causal | masked
    model: dict[str, Any]  # ModelConfig fields of the chosen model
    depth: int  # layers (n_layer)
    params: int  # exact parameter count
    tokens: int  # tokens trained
    data_tokens: int | None  # tokens in the data set (None = unknown: unlimited)
    epochs: float | None  # passes over the data
    seq_len: int  # tokens per sequence
    micro_batch: int  # sequences per device per forward/backward
    grad_accum: int  # micro-batches per optimizer step
    global_batch_tokens: int  # tokens per optimizer step over all devices
    precision: str  # fp32 | bf16 | fp16 (autocast)
    activation_checkpointing: bool  # recompute each block in backward
    optimizer: str  # adamw | muon
    memory: dict[str, int]  # peak bytes per device by kind, with total
    device_memory_bytes: int  # memory of one device
    fits: bool  # total <= device memory
    flops_per_token: float  # training FLOPs per token
    flops: float  # total training FLOPs
    peak_flops: float  # dense peak FLOP/s per device in this precision
    mfu: float  # model FLOPs utilisation assumed
    mfu_source: str  # calibration | default
    tokens_per_second: float  # predicted training throughput, all devices
    seconds: float  # predicted wall-clock training time
    cost_usd: float | None  # seconds x price x devices (None when the device has no price)
    storage: dict[str, float] = field(default_factory=dict)  # disk for shards/checkpoints, input bandwidth
    sizing: dict[str, Any] = field(default_factory=dict)  # compute-optimal reasoning (auto only)
    notes: list[str] = field(default_factory=list)  # warnings for the reader

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Choice:
    micro_batch: int
    grad_accum: int
    precision: str
    checkpointing: bool
    memory: dict[str, int]
    tokens_per_second: float
    mfu: float
    mfu_source: str
    peak: float


# Optimizer steps a run should take at least: short runs learn more from many small steps than from
# few large ones (the critical batch grows as the loss falls; McCandlish et al. 2018). On Tiny
# Shakespeare in 2 minutes 3 x 64 reached 2.156 bits/byte with 2,048-token steps (1,632 steps) and
# 2.181 with 4,096 (881 steps; docs/bench/planning.md). GPU runs of hours hit the 2^19 cap first.
MIN_STEPS = 2000


def _global_batch_tokens(tokens: float, seq_len: int, min_tokens: int = 0) -> int:
    """Tokens per optimizer step: at most 2^19 (about GPT-3 small's 0.5M) and small enough that
    the run takes at least ~MIN_STEPS optimizer steps, but not below `min_tokens` (a CPU step smaller than
    its calibrated micro-batch would run slower than calibrated); a power of two, at least one sequence."""
    target = min(2**19, max(seq_len, min_tokens, tokens / MIN_STEPS))
    return max(seq_len, 2 ** int(math.floor(math.log2(target))))


# A CPU gains nothing from matmuls bigger than a few thousand rows, so it need not pay the memory.
MAX_MICRO_TOKENS = {"cpu": 2048}


def configurations(cfg: ModelConfig, device: Device, seq_len: int, num_devices: int = 1,
                   optimizer: str = "adamw", tokens_hint: float = 1e9, precisions: tuple[str, ...] | None = None,
                   calibration: dict | None = None, pred_fraction: float | None = None,
                   max_micro_batch: int = 1024, allow_checkpointing: bool = True) -> list[Choice]:
    """Every (precision, checkpointing, micro-batch) that fits, fastest first.

    Bigger micro-batches fill the device better, so among equally fast options the largest micro-batch
    not above the global batch wins; checkpointing only when nothing fits without it."""
    gbt = _global_batch_tokens(tokens_hint, seq_len, MAX_MICRO_TOKENS.get(device.kind, 0))
    per_device_seqs = max(1, gbt // (seq_len * num_devices))
    cap = MAX_MICRO_TOKENS.get(device.kind)
    if cap:
        max_micro_batch = max(1, min(max_micro_batch, cap // seq_len))
    out: list[Choice] = []
    for precision in precisions or PRECISION_ORDER:
        peak = peak_flops(device, precision)
        if not peak:
            continue
        mfu, source = mfu_for(device, precision, cfg, seq_len, calibration)
        for ckpt in (False, True) if allow_checkpointing else (False,):
            mb = 1
            while mb <= min(max_micro_batch, per_device_seqs):
                mem = memory_breakdown(cfg, device, mb, seq_len, precision, ckpt, optimizer, num_devices, pred_fraction)
                if mem["total"] > device.memory_bytes:
                    break
                achieved = mfu * peak * num_devices / (RECOMPUTE_FACTOR if ckpt else 1.0)
                tps = achieved / flops_per_token(cfg, seq_len, pred_fraction)
                accum = max(1, math.ceil(per_device_seqs / mb))
                out.append(Choice(mb, accum, precision, ckpt, mem, tps, mfu, source, peak))
                mb *= 2
    out.sort(key=lambda c: (-round(c.tokens_per_second, 6), c.checkpointing, -c.micro_batch))
    return out


def _what_would_fit(cfg: ModelConfig, device: Device, seq_len: int, optimizer: str, num_devices: int,
                    pred_fraction: float | None) -> str:
    best = min(
        (memory_breakdown(cfg, device, 1, seq_len, p, True, optimizer, num_devices, pred_fraction)["total"], p)
        for p in PRECISION_ORDER if peak_flops(device, p)
    ) if any(peak_flops(device, p) for p in PRECISION_ORDER) else (0, None)
    need, p = best
    if p is None:
        return f"{device.id} has no peak FLOP/s in the catalog for fp32/bf16/fp16"
    shards = math.ceil(need / max(1, device.memory_bytes)) * num_devices
    return (f"even micro-batch 1 with {p} and activation checkpointing needs {need / GiB:.1f} GiB of "
            f"{device.memory_bytes / GiB:.1f} GiB; a smaller model, a shorter --seq-len, or about "
            f"{shards} devices with FSDP (--num-devices) would fit")


def _storage(cfg: ModelConfig, tokens_per_second: float, data_tokens: int | None, optimizer: str,
             keep_checkpoints: int = 2, disk_read_bytes_s: float | None = None) -> dict[str, float]:
    token_bytes = 2 if cfg.vocab_size <= 2**16 else 4  # uint16 shards while the vocabulary fits
    ckpt = num_params(cfg) * 4 + optimizer_bytes(cfg, optimizer)  # fp32 weights + optimizer state (resumable)
    out = {
        "token_bytes": token_bytes,
        "shards_bytes": (data_tokens or 0) * token_bytes,
        "checkpoint_bytes": ckpt,
        "checkpoints_kept": keep_checkpoints,
        "checkpoints_bytes": ckpt * keep_checkpoints,
        "input_bytes_per_second": tokens_per_second * token_bytes,
    }
    if disk_read_bytes_s:
        out["disk_read_bytes_per_second"] = disk_read_bytes_s
    return out


def estimate(cfg: ModelConfig, device: Device, tokens: float, seq_len: int, num_devices: int = 1,
             optimizer: str = "adamw", calibration: dict | None = None, data_tokens: int | None = None,
             pred_fraction: float | None = None, precisions: tuple[str, ...] | None = None,
             budget_s: float | None = None, allow_checkpointing: bool = True) -> Plan:
    """Plan a fixed model: the fastest configuration that fits, and time/cost for `tokens`.
    With budget_s, tokens become what the budget buys."""
    if seq_len > cfg.max_seq_len:
        cfg = replace(cfg, max_seq_len=seq_len)
    choices = configurations(cfg, device, seq_len, num_devices, optimizer, tokens or 1e12, precisions,
                             calibration, pred_fraction, allow_checkpointing=allow_checkpointing)
    if budget_s is not None and choices:
        # The global batch depends on the tokens the run will see, which the budget buys.
        tokens = choices[0].tokens_per_second * budget_s
        choices = configurations(cfg, device, seq_len, num_devices, optimizer, tokens, precisions,
                                 calibration, pred_fraction, allow_checkpointing=allow_checkpointing)
    notes: list[str] = []
    fpt = flops_per_token(cfg, seq_len, pred_fraction)
    if choices:
        c = choices[0]
        fits = True
    else:
        # Report the smallest configuration so the reader sees by how much it misses.
        precision = next((p for p in (precisions or PRECISION_ORDER) if peak_flops(device, p)), "fp32")
        mem = memory_breakdown(cfg, device, 1, seq_len, precision, True, optimizer, num_devices, pred_fraction)
        mfu, source = mfu_for(device, precision, cfg, seq_len, calibration)
        peak = peak_flops(device, precision) or 0.0
        c = Choice(1, 1, precision, True, mem, mfu * peak * num_devices / RECOMPUTE_FACTOR / fpt, mfu, source, peak)
        fits = False
        notes.append("does not fit: " + _what_would_fit(cfg, device, seq_len, optimizer, num_devices, pred_fraction))
    if budget_s is not None:
        tokens = c.tokens_per_second * budget_s
    seconds = tokens / c.tokens_per_second if c.tokens_per_second else float("inf")
    price = device.price_usd_per_hour
    epochs = tokens / data_tokens if data_tokens else None
    if fits and c.checkpointing and not TRAINER_CHECKPOINTING:
        notes.append("needs activation checkpointing, which `budgetlm train` does not implement yet: "
                     "use a shorter --seq-len or a smaller model to train it with budgetlm")
    if epochs and epochs > 4:
        notes.append(f"{epochs:.1f} epochs over the data: repeating beyond ~4 epochs adds little "
                     "(Muennighoff et al. 2023); more data would help more than more time")
    per_device_seqs = c.micro_batch * c.grad_accum
    return Plan(
        device=device.id, num_devices=num_devices, objective="causal" if cfg.causal else "masked",
        model=asdict(cfg), depth=cfg.n_layer, params=num_params(cfg), tokens=int(tokens),
        data_tokens=data_tokens, epochs=epochs, seq_len=seq_len, micro_batch=c.micro_batch,
        grad_accum=c.grad_accum, global_batch_tokens=per_device_seqs * seq_len * num_devices,
        precision=c.precision, activation_checkpointing=c.checkpointing, optimizer=optimizer,
        memory=c.memory, device_memory_bytes=device.memory_bytes, fits=fits, flops_per_token=fpt,
        flops=fpt * tokens, peak_flops=c.peak, mfu=c.mfu, mfu_source=c.mfu_source,
        tokens_per_second=c.tokens_per_second, seconds=seconds,
        cost_usd=None if price is None else seconds / 3600 * price * num_devices,
        storage=_storage(cfg, c.tokens_per_second, data_tokens, optimizer,
                         disk_read_bytes_s=(calibration or {}).get("disk_read_bytes_per_second")),
        notes=notes,
    )


# --------------------------------------------------------------------------------------------------
# compute-optimal sizing


@dataclass(frozen=True)
class ScalingLaw:
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimal_params(self, compute: float) -> float:
        """N_opt = G (C/6)^(b/(a+b)), G = (aA / (bB))^(1/(a+b)) (Hoffmann et al. 2022, eq. 4)."""
        a, b = self.alpha, self.beta
        g = (a * self.A / (b * self.B)) ** (1 / (a + b))
        return g * (compute / 6) ** (b / (a + b))


# Besiroglu et al. 2024 (arXiv:2404.10102), Table 1: the refit of Chinchilla's approach 3.
BESIROGLU = ScalingLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
TOKENS_PER_PARAM = 20  # Chinchilla's rule of thumb (Hoffmann et al. 2022, approaches 1-2)
REPEAT_HALF_LIFE = 15.4  # R*_D, Muennighoff et al. 2023 eq. 5: value of repeated epochs decays with it


def effective_tokens(tokens: float, unique: float | None) -> float:
    """Muennighoff et al. 2023: D' = U + U R* (1 - exp(-R / R*)), R = repetitions beyond the first."""
    if not unique or tokens <= unique:
        return tokens
    r = tokens / unique - 1
    return unique + unique * REPEAT_HALF_LIFE * (1 - math.exp(-r / REPEAT_HALF_LIFE))


def scaling_params(cfg: ModelConfig) -> int:
    """N for the scaling law: the non-embedding parameters. Kaplan et al. 2020 (sec. 3.1, fig. 6)
    found that loss follows these, while counting the (V x C) embedding bends the trend for small
    models, where it is a large share: 55% of the 2 x 64 model with a 2,048-token vocabulary. On Tiny
    Shakespeare at 2 minutes, total parameters chose 2 x 64 (0.24M, 2.26 bits/byte) where 2 x 96
    (0.42M) reached 2.22 (docs/bench/planning.md). At the scales the law was fitted on the two
    counts differ by a few per cent."""
    return num_params(cfg, embeddings=False)


# Shapes the planner considers: widths in steps of WIDTH_STEP channels (64 from 512 up, so that
# wide models keep 64-wide heads and GPU-friendly multiples of 64), from MIN_ASPECT to
# MAX_ASPECT channels per layer. Deep-and-thin beats wide-and-shallow at a fixed size for small
# models (MobileLLM, Liu et al. 2024, sec. 2.2.2), so the widest shape per layer stays below the
# depth dial's 64 (nanochat's aspect ratio, chosen for far larger models). On Tiny Shakespeare at 10
# minutes, 3 layers x 128 (aspect 43) beat the dial's 3 x 192 by 0.03 bits/byte, and at 2 minutes
# 3 x 64 (aspect 21) beat 3 x 96 by 0.02 (docs/bench/planning.md), hence the narrow end at 16.
WIDTH_STEP = 32
MIN_ASPECT = 16
MAX_ASPECT = 48


# The fewest layers the planner gives a model when one that deep fits. The law sees only N, but at
# 2 minutes on Tiny Shakespeare every 2-layer shape lost to a 3-layer one of similar or smaller N:
# 3 x 64 (N 160k) reached 2.156 bits/byte, 2 x 96 (222k) 2.178 and 2 x 64 (107k) 2.205
# (docs/bench/planning.md); MobileLLM (Liu et al. 2024) finds depth worth more than width at small sizes.
MIN_DEPTH = 3


def _narrowest(depth: int) -> int:
    return max(WIDTH_STEP, -(-MIN_ASPECT * depth // WIDTH_STEP) * WIDTH_STEP)  # rounded up to a step


def shapes(max_depth: int) -> list[tuple[int, int]]:
    """(depth, width) candidates, smallest first within each depth."""
    out = []
    for depth in range(1, max_depth + 1):
        lo = _narrowest(depth)
        out += [(depth, w) for w in range(lo, max(lo, MAX_ASPECT * depth) + 1, WIDTH_STEP)
                if w < 512 or w % 64 == 0]
    return out


def auto_plan(device: Device, budget_s: float, tokens_available: int | None, seq_len: int,
              objective: str = "causal", vocab_size: int = 8192, calibration: dict | None = None,
              num_devices: int = 1, optimizer: str = "adamw", max_depth: int = 48,
              precisions: tuple[str, ...] | None = None, pred_fraction: float | None = None,
              allow_checkpointing: bool = True) -> Plan:
    """Choose the compute-optimal model shape (depth x width, see `shapes`) for `budget_s` on this
    device. Returns the full plan; `plan.model` are ModelConfig kwargs for the trainer.

    Each shape that fits trains D tokens in the budget at its predicted throughput, which is
    C = 6 N D of the law's compute (N = non-embedding parameters, `scaling_params`). The shape
    chosen is the one nearest (in log N) to the law's optimum for its own C,
    N_opt(C) = G (C/6)^(b/(a+b)) (Hoffmann et al. 2022 eq. 4, Besiroglu et al. 2024 refit): the
    fixed point where the model is as big as its compute says it should be. Shapes of almost the
    same distance go to the deeper one (MobileLLM: deep and thin), and models get at least
    MIN_DEPTH layers when such a model fits.

    Why not the shape with the lowest predicted loss L(N, D)? It was the rule until 2026-12-01 and
    it chose too big for small budgets: real throughput falls slower than 1/N for small models
    (the output layer and attention cost the same whatever the depth), so L(N, D(N)) keeps
    rewarding size where the law was never fitted. On Tiny Shakespeare it chose 3 x 96 at 2 minutes
    (2.178 bits/byte) where the half-size 3 x 64 reached 2.156; the fixed point chooses 3 x 64
    (docs/bench/planning.md).

    The size is chosen for the tokens the budget trains, as if they were all fresh. Repeating a
    small corpus makes each token worth less (Muennighoff et al. 2023), but it makes excess
    parameters worth less still (their R*_N = 5.3 against R*_D = 15.4): with repeats the optimum
    moves to more epochs, not to a bigger model. The repeats are reported (plan.epochs,
    sizing.effective_tokens) and drive the trainer's dropout."""
    if budget_s <= 0:
        raise BudgetError("the budget must be positive")
    causal = objective == "causal"
    candidates = []
    too_big_from = max_depth + 1  # the shallowest depth whose narrowest shape does not fit
    for depth, width in shapes(max_depth):
        if depth >= too_big_from:
            break
        cfg = model_config(depth, vocab_size, causal=causal, max_seq_len=seq_len, width=width)
        p = estimate(cfg, device, 0, seq_len, num_devices, optimizer, calibration, tokens_available,
                     pred_fraction, precisions, budget_s=budget_s, allow_checkpointing=allow_checkpointing)
        if not p.fits:
            if width == _narrowest(depth):
                too_big_from = depth  # deeper models are bigger still
            continue
        n = scaling_params(cfg)
        n_opt = BESIROGLU.optimal_params(6 * n * max(p.tokens, 1.0))
        # distance rounded to 1% so that near-ties go to the deeper shape
        candidates.append((round(abs(math.log(n / n_opt)), 2), -depth, n, n_opt, cfg, p))
    if not candidates:
        cfg = model_config(1, vocab_size, causal=causal, max_seq_len=seq_len)
        raise BudgetError(f"no model fits on {device.id}: "
                          + _what_would_fit(cfg, device, seq_len, optimizer, num_devices, pred_fraction))
    candidates.sort(key=lambda c: c[:2])
    candidates = [c for c in candidates if c[4].n_layer >= MIN_DEPTH] or candidates  # shallower only if nothing deeper fits
    _, _, n, n_opt, cfg, plan = candidates[0]
    law_compute = 6 * n * plan.tokens
    n_20 = math.sqrt(law_compute / (6 * TOKENS_PER_PARAM))
    d_eff = effective_tokens(plan.tokens, tokens_available)
    plan.sizing = {
        "compute_flops": plan.tokens * plan.flops_per_token,
        "law_compute_flops": law_compute,
        "law": "Besiroglu et al. 2024 refit of Chinchilla approach 3",
        "rule": "shape nearest the law's N_opt(6 N D) (non-embedding N, D = tokens the budget trains)",
        "chosen_depth": cfg.n_layer,
        "chosen_width": cfg.n_embd,
        "predicted_loss": BESIROGLU.loss(n, max(plan.tokens, 1.0)),
        "scaling_params": n,
        "besiroglu_optimal_params": n_opt,
        "besiroglu_optimal_tokens": law_compute / (6 * n_opt),
        "tokens_per_param_rule": TOKENS_PER_PARAM,
        "rule_optimal_params": n_20,
        "rule_optimal_tokens": TOKENS_PER_PARAM * n_20,
        "effective_tokens": d_eff,
        "candidates": [{"depth": c.n_layer, "width": c.n_embd, "params": p.params, "scaling_params": cn,
                        "optimal_params": round(no), "tokens": p.tokens,
                        "predicted_loss": round(BESIROGLU.loss(cn, max(p.tokens, 1.0)), 4)}
                       for _, _, cn, no, c, p in candidates[:8]],
    }
    if tokens_available and plan.tokens > tokens_available:
        plan.notes.append(
            f"data-limited: {tokens_available:,} tokens of data for {plan.tokens:,} trained "
            f"({plan.epochs:.1f} epochs, worth {d_eff / tokens_available:.1f} epochs of fresh data)")
    return plan


def compare(cfg: ModelConfig, devices: list[Device], tokens: float, seq_len: int, num_devices: int = 1,
            optimizer: str = "adamw", pred_fraction: float | None = None,
            calibration_for: Any = None) -> list[Plan]:
    """The same job (model and tokens) on each device: fits, time, cost; fitting ones first, then
    by time (cost breaks ties)."""
    plans = []
    for d in devices:
        if not any(peak_flops(d, p) for p in PRECISION_ORDER):
            continue  # no compute figure to plan with (e.g. a memory-only catalog entry)
        cal = calibration_for(d) if calibration_for else None
        plans.append(estimate(cfg, d, tokens, seq_len, num_devices, optimizer, cal, None, pred_fraction))
    plans.sort(key=lambda p: (not p.fits, p.seconds, p.cost_usd if p.cost_usd is not None else math.inf))
    return plans
