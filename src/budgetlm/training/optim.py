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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class OptimConfig:
    lr: float = 3e-3  # peak learning rate (both groups; muon scales its update to AdamW's RMS)
    weight_decay: float = 0.1  # decoupled weight decay on matrices only
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay (0.95 is the usual LM choice: GPT-3, nanoGPT)
    eps: float = 1e-8  # AdamW epsilon
    momentum: float = 0.95  # muon: Nesterov momentum of the hidden-matrix updates


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


def build_muon(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    g = split_params(model)
    hidden = [p for _, p in g["hidden"]]
    if not hidden:  # nothing for Muon to do: plain AdamW
        return build_adamw(model, cfg)
    muon = torch.optim.Muon(
        [{"params": hidden, "base_lr": cfg.lr}], lr=cfg.lr, weight_decay=cfg.weight_decay,
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
