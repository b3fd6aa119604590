"""Optimizer registry: `adamw` and `muon` (Muon for hidden matrices, AdamW for the rest).

Both are built by `build_optimizer(name, model, OptimConfig)`. Every param group carries its peak
learning rate in `group["base_lr"]`; the training loop sets `group["lr"] = base_lr * schedule(progress)`.

- adamw: fused kernel where the device has one; weight decay only on matrices (ndim >= 2), never on
  norms' gains or biases (as nanoGPT's `configure_optimizers`).
- muon: `torch.optim.Muon` (Jordan et al. 2024, as used by modded-nanogpt and nanochat) on the 2-D
  weights of the hidden layers, AdamW on embeddings, output heads and 1-D parameters. Muon orthogonalises
  each update with Newton-Schulz iterations; it is meant only for hidden matrices (its docs say so).
  `adjust_lr_fn="match_rms_adamw"` (Liu et al. 2025, "Muon is Scalable for LLM Training") scales its
  update to AdamW's RMS so that one peak LR serves both groups.
  torch's Muon always orthogonalises in bfloat16, one matrix at a time; `Muon` below runs the same
  iterations in `OptimConfig.muon_precision`, because on CPUs without bf16 matrix units a bf16 matmul
  runs at a few percent of fp32 and the optimizer step would cost more than the forward and backward
  passes, and on all the matrices of one shape at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from budgetlm.runtime import DTYPES


@dataclass
class OptimConfig:
    lr: float = 3e-3  # peak learning rate (both groups; muon scales its update to AdamW's RMS)
    weight_decay: float = 0.1  # decoupled weight decay on matrices only
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay (0.95 is the usual LM choice: GPT-3, nanoGPT)
    eps: float = 1e-8  # AdamW epsilon
    momentum: float = 0.95  # muon: Nesterov momentum of the hidden-matrix updates
    muon_precision: str = "bf16"  # muon: dtype of the Newton-Schulz iterations (bf16 | fp32); fp32 where bf16 matmul is slow


def _is_head_or_embedding(name: str, module_types: dict[str, type]) -> bool:
    owner = name.rsplit(".", 1)[0] if "." in name else ""
    if issubclass(module_types.get(owner, nn.Module), nn.Embedding):
        return True
    # Output projections map to vocabulary/label space; Muon's orthogonalisation is not meant for them.
    return "head" in owner.split(".")[-1] or "embed" in owner


def split_params(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Group trainable parameters: 'hidden' 2-D matrices, other 'decay' matrices, 'no_decay' vectors.
    Shared (tied) parameters appear once."""
    module_types = {n: type(m) for n, m in model.named_modules()}
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"hidden": [], "decay": [], "no_decay": []}
    for name, p in model.named_parameters():  # named_parameters() de-duplicates tied weights
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            groups["no_decay"].append((name, p))
        elif p.ndim == 2 and not _is_head_or_embedding(name, module_types):
            groups["hidden"].append((name, p))
        else:
            groups["decay"].append((name, p))
    return groups


def _adamw(params: list[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    device = next((g["params"][0].device for g in params if g["params"]), torch.device("cpu"))
    # Fused AdamW: one kernel for the whole update (CUDA, and CPU since torch 2.4).
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, **kwargs)


def build_adamw(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    g = split_params(model)
    decay = [p for _, p in g["hidden"] + g["decay"]]
    no_decay = [p for _, p in g["no_decay"]]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": no_decay, "weight_decay": 0.0, "base_lr": cfg.lr},
    ]
    return _adamw([x for x in groups if x["params"]], cfg)


class CombinedOptimizer:
    """Several optimizers stepped together, seen by the loop (and GradScaler) as one."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict:
        return {k: v for o in self.optimizers for k, v in o.state.items()}

    def step(self, closure=None) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state_dict["optimizers"]):
            o.load_state_dict(s)


def orthogonalise(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (Jordan et al. 2024; torch.optim.Muon's coefficients)
    towards U V^T of g = U S V^T, computed in `dtype`; g is one matrix (A, B) or a stack (L, A, B)."""
    a, b, c = coefficients
    x = g.to(dtype)
    single = x.ndim == 2
    if single:
        x = x.unsqueeze(0)
    wide = x.size(-2) > x.size(-1)
    if wide:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.mT if wide else x
    return x[0] if single else x


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` with the Newton-Schulz iterations in `ns_dtype`, batched over the matrices
    of one shape.

    torch's step orthogonalises one matrix at a time; at the widths CPU budgets plan (64-128) each of
    those small matmuls costs mostly its call, so the matrices of one shape (the same projection in
    every layer) go through the iterations as one stack: a training step of a 3 x 64 model ran
    1.06-1.14x faster than with torch's Muon (docs/bench/training.md). Same hyper-parameters and the same state
    ("momentum_buffer"), so checkpoints move between this and torch's Muon."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        if kwargs.get("adjust_lr_fn") != "match_rms_adamw":
            raise ValueError("budgetlm's Muon scales its update as adjust_lr_fn='match_rms_adamw'")
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Muon.step takes no closure")
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            m, lr = group["momentum"], group["lr"]
            by_shape: dict[tuple[int, ...], list[int]] = {}
            updates = []
            for i, (p, g, buf) in enumerate(zip(params, grads, bufs)):
                buf.lerp_(g, 1 - m)
                updates.append(g.lerp(buf, m) if group["nesterov"] else buf)
                by_shape.setdefault(tuple(p.shape), []).append(i)
            for shape, idx in by_shape.items():
                stack = orthogonalise(torch.stack([updates[i] for i in idx]), group["ns_coefficients"],
                                      group["ns_steps"], group["eps"], self.ns_dtype)
                # "match_rms_adamw": 0.2 sqrt(max(A, B)) gives the update AdamW's RMS (Liu et al. 2025)
                scale = -lr * 0.2 * math.sqrt(max(shape[:2]))
                for k, i in enumerate(idx):
                    params[i].mul_(1 - lr * group["weight_decay"])
                    params[i].add_(stack[k].to(params[i].dtype), alpha=scale)
        return None


def muon_precision(training_precision: str) -> str:
    """Newton-Schulz in bf16 only where training computes in bf16 (the device was measured or known to
    be fast at it); fp32 elsewhere: CPUs without bf16 units, and fp16 GPUs, which lack fast bf16."""
    return "bf16" if training_precision == "bf16" else "fp32"


def build_muon(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    g = split_params(model)
    hidden = [p for _, p in g["hidden"]]
    if not hidden:  # nothing for Muon to do: plain AdamW
        return build_adamw(model, cfg)
    muon = Muon(
        [{"params": hidden, "base_lr": cfg.lr}], ns_dtype=DTYPES[cfg.muon_precision], lr=cfg.lr, weight_decay=cfg.weight_decay,
        momentum=cfg.momentum, nesterov=True, adjust_lr_fn="match_rms_adamw",
    )
    rest = [
        {"params": [p for _, p in g["decay"]], "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": [p for _, p in g["no_decay"]], "weight_decay": 0.0, "base_lr": cfg.lr},
    ]
    rest = [x for x in rest if x["params"]]
    if not rest:
        return muon
    return CombinedOptimizer([muon, _adamw(rest, cfg)])


OPTIMIZERS: dict[str, Callable[[nn.Module, OptimConfig], torch.optim.Optimizer]] = {
    "adamw": build_adamw,
    "muon": build_muon,
}


def build_optimizer(name: str, model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    from budgetlm.config import BudgetError

    if name not in OPTIMIZERS:
        raise BudgetError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](model, cfg)


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> float:
    """Set every group's LR to base_lr * multiplier; return the first group's LR (for logging)."""
    lr = 0.0
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = group.get("base_lr", group["lr"]) * multiplier
        if i == 0:
            lr = group["lr"]
    return lr
