"""One model on one device: FLOPs per token, MFU, the fastest configuration that fits, time and
cost (`estimate`), and the typed `Plan` it returns. No torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from budgetlm.calibration import one_setting
from budgetlm.catalog import Device
from budgetlm.config import BudgetError
from budgetlm.models.config import ModelConfig
from budgetlm.models.presets import num_params
from budgetlm.planning.memory import (DEFAULT_PRED_FRACTION, GiB, PRECISION_ORDER, memory_breakdown,
                                  optimizer_bytes, state_bytes)
from budgetlm.planning.published import mfu_class

# --------------------------------------------------------------------------------------------------
# FLOPs, throughput, calibration


def flops_per_token(cfg: ModelConfig, seq_len: int, pred_fraction: float | None = None) -> float:
    """Training FLOPs per token (forward and backward), the one formula that the plan, training's
    MFU and calibration all use: 6 x (matmul parameters) + 12 L A T for the attention scores (A,
    attention's inner width, is C unless heads were pruned)
    (Kaplan et al. 2020; PaLM appendix B; nanoGPT's estimate_mfu). The output projection counts
    once even when tied: it is a matmul either way. A masked model runs its head (dense layer and
    output projection) only on the predicted positions, `pred_fraction` of them (its mask rate;
    None: DEFAULT_PRED_FRACTION); causal models ignore it. The attention term assumes full
    attention; causal kernels skip about half of it."""
    C, L, F, V, T, A = cfg.n_embd, cfg.n_layer, cfg.ffn_dim, cfg.vocab_size, seq_len, cfg.attn_dim
    body = L * (4 * C * A + 3 * C * F)  # A = C unless heads were pruned (budgetlm.prune)
    head = V * C
    if not cfg.causal:
        head += C * C
        head *= DEFAULT_PRED_FRACTION if pred_fraction is None else pred_fraction
    return 6.0 * (body + head) + 12.0 * L * A * T


# Model FLOPs utilisation when nothing was measured. NVIDIA GPUs: the fit on published runs
# (planning/published.py, benchmarks/plan_backtest.py), log MFU = intercept + geforce [GeForce card]
# + log2_width log2(width / 1024), for plain PyTorch kernels, which budgetlm uses; a test keeps these
# equal to a fresh fit. Other accelerators have no published runs here: hardware-notes 2.5's
# 0.35-0.5 for datacenter parts, 0.40, unverified; CPUs 0.30 until calibrated.
FITTED_MFU = {"intercept": -1.1407, "geforce": 0.6959, "log2_width": 0.0872}
DEFAULT_MFU = {"gpu": 0.40, "tpu": 0.40, "cpu": 0.30}
TINY_WIDTH = 512  # below this width matmuls are too small to fill an accelerator (no published run is this narrow)
TINY_MFU_FACTOR = 0.6  # hardware-notes 2.5: 0.2-0.3 for tiny models, where 0.35-0.5 is usual
TRAINER_CHECKPOINTING = True  # budgetlm.training --activation-checkpointing recomputes each block in backward
RECOMPUTE_FACTOR = 8.0 / 6.0  # full recompute adds one forward pass (2N of 6N FLOPs per token)


def peak_flops(device: Device, precision: str) -> float | None:
    """The device's dense peak FLOP/s for training in `precision` (the catalog's figure, or the
    measured one `calibration.local` put in), None when it has none."""
    return device.training_peak(precision)


def mfu_for(device: Device, precision: str, cfg: ModelConfig, seq_len: int,
            calibration: dict[str, Any] | None = None, pred_fraction: float | None = None) -> tuple[float, str]:
    """(MFU, where it came from). From calibration points (`budgetlm bench`, or `train`'s own):
    the time per token is taken as affine in FLOPs per token, a fixed cost (kernel launches, the
    optimizer step, Python) plus FLOPs at a sustained rate, piecewise between the points and
    extended from the end segments. On a 2-core CPU, calibrated at depths 1 and 4, this predicted
    depths 2, 3 and 6 at sequence lengths 128 and 256 within 11% (17% in a noisier run), where
    interpolating the MFU in log FLOPs per token missed depth 6 by 22% (docs/bench/planning.md).
    The points are of one setting (`calibration.one_setting`: `train` calibrates at its own length,
    and passes only the compiled points when it compiles); one point means a constant FLOP/s."""
    points = ((calibration or {}).get("precisions") or {}).get(precision) or []
    peak = peak_flops(device, precision)
    points = one_setting([p for p in points if p.get("achieved_flops")], seq_len)
    if points and peak:
        # MFU is recomputed against this device's peak, so a calibration measures achieved FLOP/s
        # and stays valid whatever peak figure the catalog carries.
        x = flops_per_token(cfg, seq_len, pred_fraction)
        pts = sorted((p["flops_per_token"], p["flops_per_token"] / p["achieved_flops"]) for p in points)
        achieved = pts[0][0] / pts[0][1]
        if len(pts) > 1:
            i = next((k for k in range(len(pts) - 1) if x <= pts[k + 1][0]), len(pts) - 2)
            (x0, t0), (x1, t1) = pts[i], pts[i + 1]
            t = t0 + (t1 - t0) * (x - x0) / ((x1 - x0) or 1.0)  # seconds per token
            if x < pts[0][0]:
                # below the smallest point a steep first segment (two noisy points close in FLOPs)
                # would extend to almost no time per token; a smaller model amortises the fixed cost
                # over fewer FLOPs, so it never sustains more FLOP/s than the smallest point measured
                t = max(t, x * pts[0][1] / pts[0][0])
            if t1 >= t0 and t > 0:
                achieved = x / t
            else:  # more FLOPs per token never take less time per token: a segment tilted that way
                # is noise, and extending it could give no time at all; use the nearest point's FLOP/s
                nearest = min(pts, key=lambda q: abs(q[0] - x))
                achieved = nearest[0] / nearest[1]
        # (a CPU's ISA-estimated peak can be exceeded, so MFU may pass 1; only achieved FLOP/s matter)
        return achieved / peak, "calibration"
    return default_mfu(device, cfg), "default"


def optimizer_seconds(precision: str, cfg: ModelConfig, calibration: dict[str, Any] | None) -> float:
    """Seconds of one optimizer step (gradient clipping and the update) of `cfg`, scaled by
    parameters from the calibration point nearest in size that timed it; 0 when none did."""
    points = ((calibration or {}).get("precisions") or {}).get(precision) or []
    points = [p for p in points if p.get("optimizer_seconds") and p.get("params")]
    if not points:
        return 0.0
    n = num_params(cfg)
    near = min(points, key=lambda p: abs(math.log(p["params"] / n)))
    return near["optimizer_seconds"] * n / near["params"]


def accumulated_speed(single: float, micro_tokens: float, accum: int, optimizer_s: float) -> float:
    """Tokens/s of optimizer steps of `accum` micro-batches, from `single`, the tokens/s of steps of
    one micro-batch each (what calibration times): accumulation pays the optimizer step once per
    `accum` micro-batches. `optimizer_s` is held below half a single step (a guard against a
    calibration timed at another micro-batch)."""
    step = micro_tokens / single
    opt = min(optimizer_s, 0.5 * step)
    return accum * micro_tokens / (accum * (step - opt) + opt)


def single_step_speed(accumulated: float, micro_tokens: float, accum: int, optimizer_s: float) -> float:
    """The inverse of `accumulated_speed`: what a run with accumulation measured, as tokens/s of
    steps of one micro-batch each (the form calibration points keep)."""
    step = accum * micro_tokens / accumulated
    opt = min(optimizer_s, 0.5 * step / accum)
    return micro_tokens / ((step - opt) / accum + opt)


def default_mfu(device: Device, cfg: ModelConfig) -> float:
    """The MFU assumed before anything was measured (FITTED_MFU on NVIDIA GPUs, DEFAULT_MFU elsewhere)."""
    if device.kind == "gpu" and device.id.startswith("nvidia-"):
        f = FITTED_MFU
        mfu = math.exp(f["intercept"] + f["geforce"] * (mfu_class(device.id) == "geforce")
                       + f["log2_width"] * math.log2(cfg.n_embd / 1024))
    else:
        mfu = DEFAULT_MFU.get(device.kind, DEFAULT_MFU["gpu"])
    if device.kind != "cpu" and cfg.n_embd < TINY_WIDTH:
        mfu *= TINY_MFU_FACTOR
    return mfu


# --------------------------------------------------------------------------------------------------
# what to plan, and the plan


# Context length when none is given, shared by `plan` and `train` so both size the same run: 256
# causal tokens (a 2-minute Tiny Shakespeare run at 128 or 512 ended level or worse at the same
# tokens per step, docs/bench/training.md), 128 masked (Cramming, Geiping & Goldstein 2022).
DEFAULT_SEQ_LEN = {"causal": 256, "masked": 128}


@dataclass
class PlanConfig:
    """What to plan: `budgetlm plan`'s flags and `budgetlm.plan(...)`'s keywords."""

    device: str = "local"  # catalog id (see `budgetlm hardware --catalog`) or local (this machine)
    budget: str | None = None  # wall-clock budget: 90s, 10m, 2h, 1d (required)
    num_devices: int = 1  # data-parallel devices; model state is sharded across them (FSDP)
    objective: Literal["causal", "masked"] = "causal"  # causal (next-token) or masked (BERT-style) language model
    seq_len: int = 0  # tokens per training sequence (0 = auto: 256 causal, 128 masked, as `train`)
    data: str | None = None  # prepared dataset folder, for its token count and vocabulary (default: none)
    tokens: float | None = None  # tokens of training data available, instead of --data (default: unlimited)
    model: str = "auto"  # auto (compute-optimal for the budget), a depth, or a preset: tiny, mini, small, medium, base, large, xl
    n_embd: int = 0  # model width in channels for a depth or preset (0 = 64 x depth)
    vocab_size: int | None = None  # tokenizer vocabulary in tokens (default: from --data, else 8192)
    optimizer: Literal["auto", "adamw", "muon"] = "auto"  # optimizer whose state is counted (auto: muon on one device, as `train`; adamw on several, which FSDP needs)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # training precision (auto: the fastest the device supports)
    mask_rate: float = 0.25  # masked objective: share of positions predicted (sparse prediction)
    catalog_file: str | None = None  # your own devices/prices (JSON) on top of the catalog (default: $BUDGETLM_CATALOG)
    calibration: str | None = None  # calibration file (default: $BUDGETLM_HOME/calibration.json)
    market: Literal["default", "cloud", "bare-metal", "marketplace"] = "default"  # whose prices: default = your file's, else on-demand cloud, else the device's only market

    def check(self) -> None:
        """One-line BudgetError for values no plan can use."""
        if not self.budget:
            raise BudgetError("--budget is required (e.g. 10m, 2h, 1d)")
        if self.num_devices < 1:
            raise BudgetError(f"--num-devices must be at least 1, got {self.num_devices}")
        if self.seq_len < 0:
            raise BudgetError(f"--seq-len must be positive (or 0: auto), got {self.seq_len}")
        if not 0 < self.mask_rate <= 1:
            raise BudgetError(f"--mask-rate must be in (0, 1], got {self.mask_rate}")
        if self.data and self.tokens is not None:
            raise BudgetError("give --data or --tokens, not both")
        if self.tokens is not None and self.tokens <= 0:
            raise BudgetError(f"--tokens must be positive, got {self.tokens:g}")
        if self.n_embd < 0 or self.n_embd % 2:
            raise BudgetError(f"--n-embd must be a positive even width (or 0: 64 x depth), got {self.n_embd}")
        if self.vocab_size is not None and not 1 <= self.vocab_size <= 2**32:
            raise BudgetError(f"--vocab-size must be in [1, 2^32], got {self.vocab_size}")
        for name in ("seq_len", "num_devices"):
            if getattr(self, name) > 2**31:
                raise BudgetError(f"--{name.replace('_', '-')} {getattr(self, name)} is beyond any plan (at most 2^31)")
        if self.n_embd and self.model == "auto":
            raise BudgetError("--n-embd needs a depth or a preset as --model (auto chooses the width itself)")

    @property
    def optimizer_for(self) -> str:
        """The optimizer `train` runs this plan with: several devices shard the model state (FSDP),
        where Muon cannot orthogonalise its split matrices, so auto is AdamW there."""
        if self.optimizer != "auto":
            return self.optimizer
        return "adamw" if self.num_devices > 1 else "muon"

    @property
    def pred_fraction(self) -> float | None:
        """Share of positions that reach the output layer: None (all) for causal models."""
        return None if self.objective == "causal" else self.mask_rate


@dataclass
class Plan:
    device: str  # catalog id (or the local device's name)
    num_devices: int  # data-parallel devices (FSDP shards the model state across them)
    objective: str  # causal | masked
    model: ModelConfig  # the model planned (to_json writes its fields, and "depth" = n_layer)
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
    peak_source: str  # where peak_flops comes from: catalog datasheet, measured matmul, or ISA estimate
    mfu: float  # model FLOPs utilisation assumed
    mfu_source: str  # calibration | default
    tokens_per_second: float  # predicted training throughput, all devices
    seconds: float  # predicted wall-clock training time
    cost_usd: float | None  # seconds x price x devices rented (None when the device has no price)
    price: dict[str, Any] | None = None  # the quote costed: usd_per_hour, market, source, as_of, min_devices
    storage: dict[str, float] = field(default_factory=dict)  # disk for shards/checkpoints, input bandwidth
    sizing: dict[str, Any] = field(default_factory=dict)  # compute-optimal reasoning (auto only)
    notes: list[str] = field(default_factory=list)  # warnings for the reader
    optimizer_seconds: float = 0.0  # one optimizer step (clipping, update), from calibration; 0: not measured

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the model as its ModelConfig fields, followed by "depth" (its n_layer)."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            out[k] = v
            if k == "model":
                out["depth"] = self.model.n_layer
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """The inverse of `to_json` (keys it does not know are ignored)."""
        names = {f.name for f in fields(cls)}
        model = ModelConfig(**{k: v for k, v in data["model"].items() if k in {f.name for f in fields(ModelConfig)}})
        return cls(**{k: v for k, v in data.items() if k in names and k != "model"}, model=model)


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
    optimizer_seconds: float = 0.0


# Optimizer steps a run should take at least: short runs learn more from many small steps than from
# few large ones (the critical batch grows as the loss falls; McCandlish et al. 2018), the more so when
# they repeat their data: ~1,000 steps per pass over the data, between 1,000 and 8,000. On Tiny
# Shakespeare, seen ~47 times in 10 minutes, 5 x 96 (dropout 0.2) reached 2.0465 bits/byte with
# ~8,000 steps of 2,048 tokens, 2.0586 with ~4,000 of 4,096, 2.0751 with ~2,000 of 8,192 and 2.0656
# with ~16,000 of 1,024 (at 18% fewer tokens/s) at equal tokens; seen 12 times in 2 minutes, 3 x 64
# reached 2.16-2.18 with ~2,000 steps of 2,048 tokens, 2.186 with 4,096-token steps and 2.203 with
# 8,192. On Gutenberg, seen 0.8 times in 8 minutes, 3 x 96
# reached 1.586 / 1.587 with ~1,230 steps of 8,192 tokens against 1.595-1.599 with ~2,400 of 4,096
# (docs/bench/training.md). Between one and two passes the batch is the data's size / 1,000 whatever
# the tokens, so a plan a little off its speed does not flip the batch at one pass. A CPU step stays
# at least its calibrated micro-batch, and GPU runs of hours hit the 2^19 cap first.
MIN_STEPS_FRESH = 1000  # a run that sees its data at most once (or data of unknown size)
MIN_STEPS = 8000  # a run that sees its data eight times or more


def min_steps(tokens: float, data_tokens: int | None) -> int:
    """The fewest optimizer steps a run of `tokens` should take over `data_tokens` of data (None:
    unknown, taken as unlimited): MIN_STEPS_FRESH per pass, between MIN_STEPS_FRESH and MIN_STEPS."""
    passes = tokens / data_tokens if data_tokens else 1.0
    return round(min(max(MIN_STEPS_FRESH * passes, MIN_STEPS_FRESH), MIN_STEPS))


def _global_batch_tokens(tokens: float, seq_len: int, min_tokens: int = 0, steps: int = MIN_STEPS) -> int:
    """Tokens per optimizer step: at most 2^19 (about GPT-3 small's 0.5M) and small enough that
    the run takes at least ~`steps` optimizer steps, but not below `min_tokens` (a CPU step smaller than
    its calibrated micro-batch would run slower than calibrated); a power of two, at least one sequence."""
    target = min(2**19, max(seq_len, min_tokens, tokens / steps))
    return max(seq_len, 2 ** int(math.floor(math.log2(target))))


# A CPU gains nothing from matmuls bigger than a few thousand rows, so it need not pay the memory.
MAX_MICRO_TOKENS = {"cpu": 2048}


def configurations(cfg: ModelConfig, device: Device, seq_len: int, num_devices: int = 1,
                   optimizer: str = "adamw", tokens_hint: float = 1e9, precisions: tuple[str, ...] | None = None,
                   calibration: dict | None = None, pred_fraction: float | None = None,
                   max_micro_batch: int = 1024, allow_checkpointing: bool = True,
                   steps: int = MIN_STEPS) -> list[Choice]:
    """The best configuration of each precision that fits, fastest first: the largest power-of-two
    micro-batch that fits, not above the per-device batch (a bigger micro-batch fills the device
    better), with activation checkpointing only when nothing fits without it (it is always slower).
    Memory grows with the micro-batch, so the largest that fits is found by bisection. The global
    batch makes `tokens_hint` tokens take at least ~`steps` optimizer steps (`min_steps`)."""
    gbt = _global_batch_tokens(tokens_hint, seq_len, MAX_MICRO_TOKENS.get(device.kind, 0), steps)
    per_device_seqs = max(1, gbt // (seq_len * num_devices))
    cap = MAX_MICRO_TOKENS.get(device.kind)
    if cap:
        max_micro_batch = max(1, min(max_micro_batch, cap // seq_len))
    top = int(math.log2(max(1, min(max_micro_batch, per_device_seqs))))  # micro-batches 2**0 .. 2**top
    fpt = flops_per_token(cfg, seq_len, pred_fraction)
    out: list[Choice] = []
    for precision in precisions or PRECISION_ORDER:
        peak = peak_flops(device, precision)
        if not peak:
            continue
        mfu, source = mfu_for(device, precision, cfg, seq_len, calibration, pred_fraction)
        opt_s = optimizer_seconds(precision, cfg, calibration)
        state = state_bytes(cfg, precision, optimizer, num_devices)
        for ckpt in (False, True) if allow_checkpointing else (False,):
            def mem_at(e: int) -> dict[str, int]:
                return memory_breakdown(cfg, device, 2**e, seq_len, precision, ckpt, optimizer, num_devices,
                                        pred_fraction, state)
            if mem_at(0)["total"] > device.memory_bytes:
                continue
            lo, hi = 0, top  # invariant: 2**lo fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if mem_at(mid)["total"] <= device.memory_bytes else (lo, mid - 1)
            mb, accum = 2**lo, max(1, math.ceil(per_device_seqs / 2**lo))
            single = mfu * peak * num_devices / (RECOMPUTE_FACTOR if ckpt else 1.0) / fpt
            tps = accumulated_speed(single, mb * seq_len * num_devices, accum, opt_s)
            out.append(Choice(mb, accum, precision, ckpt, mem_at(lo), tps, mfu * tps / single, source, peak, opt_s))
            break  # without checkpointing fits: checkpointing would only be slower
    out.sort(key=lambda c: (-round(c.tokens_per_second, 6), c.checkpointing, -c.micro_batch))
    return out


def what_would_fit(cfg: ModelConfig, device: Device, seq_len: int, optimizer: str, num_devices: int,
                   pred_fraction: float | None) -> str:
    """One line for a model that does not fit: what it needs at least, and what would fit."""
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
    hint = tokens or 1e12
    choices = configurations(cfg, device, seq_len, num_devices, optimizer, hint, precisions, calibration,
                             pred_fraction, allow_checkpointing=allow_checkpointing, steps=min_steps(hint, data_tokens))
    if budget_s is not None and choices:
        # The global batch depends on the tokens the run will see, which the budget buys.
        tokens = choices[0].tokens_per_second * budget_s
        choices = configurations(cfg, device, seq_len, num_devices, optimizer, tokens, precisions,
                                 calibration, pred_fraction, allow_checkpointing=allow_checkpointing,
                                 steps=min_steps(tokens, data_tokens))
    notes: list[str] = []
    if device.kind == "tpu":
        notes.append("TPU: budgetlm's torch_xla path is unverified on a TPU, and its MFU is the assumed "
                     f"{DEFAULT_MFU['tpu']:.2f}, neither measured nor fitted")
    fpt = flops_per_token(cfg, seq_len, pred_fraction)
    if choices:
        c = choices[0]
        fits = True
    else:
        # Report the smallest configuration so the reader sees by how much it misses.
        precision = next((p for p in (precisions or PRECISION_ORDER) if peak_flops(device, p)), "fp32")
        mem = memory_breakdown(cfg, device, 1, seq_len, precision, True, optimizer, num_devices, pred_fraction)
        mfu, source = mfu_for(device, precision, cfg, seq_len, calibration, pred_fraction)
        peak = peak_flops(device, precision) or 0.0
        c = Choice(1, 1, precision, True, mem, mfu * peak * num_devices / RECOMPUTE_FACTOR / fpt, mfu, source, peak)
        fits = False
        notes.append("does not fit: " + what_would_fit(cfg, device, seq_len, optimizer, num_devices, pred_fraction))
    if budget_s is not None:
        tokens = c.tokens_per_second * budget_s
    seconds = tokens / c.tokens_per_second if c.tokens_per_second else float("inf")
    quote = device.price
    rented = max(num_devices, quote.min_devices) if quote else num_devices
    if quote and rented > num_devices:
        notes.append(f"{device.id} rents in slices of {quote.min_devices}: the cost counts {rented} devices")
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
        model=cfg, params=num_params(cfg), tokens=int(tokens),
        data_tokens=data_tokens, epochs=epochs, seq_len=seq_len, micro_batch=c.micro_batch,
        grad_accum=c.grad_accum, global_batch_tokens=per_device_seqs * seq_len * num_devices,
        precision=c.precision, activation_checkpointing=c.checkpointing, optimizer=optimizer,
        memory=c.memory, device_memory_bytes=device.memory_bytes, fits=fits, flops_per_token=fpt,
        flops=fpt * tokens, peak_flops=c.peak, peak_source=device.peak_note(c.precision), mfu=c.mfu,
        mfu_source=c.mfu_source,
        tokens_per_second=c.tokens_per_second, seconds=seconds, optimizer_seconds=c.optimizer_seconds,
        cost_usd=None if quote is None else seconds / 3600 * quote.usd_per_hour * rented,
        price=None if quote is None else asdict(quote),
        storage=_storage(cfg, c.tokens_per_second, data_tokens, optimizer,
                         disk_read_bytes_s=(calibration or {}).get("disk_read_bytes_per_second")),
        notes=notes,
    )
