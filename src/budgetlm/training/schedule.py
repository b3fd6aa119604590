"""Learning-rate schedule driven by *progress* through the budget, not by a step count.

progress = max(elapsed / budget, step / max_steps, tokens / max_tokens), whichever limits are set.
Under a wall-clock budget the number of steps is unknown in advance, so the schedule is a function of
the fraction of the budget spent (Cramming, Geiping & Goldstein 2022, "budget" schedulers): it warms
up, then decays to ~0 exactly at the deadline, whatever the step rate turned out to be. The training
loop excludes evaluation and checkpoint time from `elapsed`, so they do not shorten training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal


def _linear(t: float) -> float:
    return 1.0 - t


def _cosine(t: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * t))


# decay shape over the post-warm-up part t in [0, 1] -> multiplier in [0, 1]
DECAYS: dict[str, Callable[[float], float]] = {
    "linear": _linear,
    "cosine": _cosine,
    "constant": lambda t: 1.0,
}


@dataclass
class ScheduleConfig:
    warmup: float = 0.02  # fraction of the budget spent warming the LR up linearly from 0
    decay: Literal["wsd", "linear", "cosine", "constant"] = "wsd"  # shape after warm-up; wsd = hold, then linear cool-down
    cooldown: float = 0.4  # wsd only: fraction of the budget (at the end) spent decaying to final_lr_frac
    final_lr_frac: float = 0.0  # LR at the deadline as a fraction of the peak LR

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be in [0, 1), got {self.warmup}")
        if not 0.0 < self.cooldown <= 1.0:
            raise ValueError(f"cooldown must be in (0, 1], got {self.cooldown}")
        if self.decay not in DECAYS and self.decay != "wsd":
            raise ValueError(f"unknown decay {self.decay!r}")


def progress(elapsed_s: float, step: int, tokens: int, budget_s: float | None = None,
             max_steps: int | None = None, max_tokens: int | None = None) -> float:
    """Fraction of the run done: the most advanced of the limits that are set (clipped to [0, 1])."""
    parts = [0.0]
    if budget_s:
        parts.append(elapsed_s / budget_s)
    if max_steps:
        parts.append(step / max_steps)
    if max_tokens:
        parts.append(tokens / max_tokens)
    return min(1.0, max(parts))


def lr_multiplier(p: float, cfg: ScheduleConfig) -> float:
    """LR / peak LR at progress p in [0, 1]."""
    p = min(max(p, 0.0), 1.0)
    if cfg.warmup > 0 and p < cfg.warmup:
        return p / cfg.warmup
    floor = cfg.final_lr_frac
    if cfg.decay == "wsd":
        # Warmup-Stable-Decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024): hold the peak, then cool
        # down linearly over the last `cooldown` of the budget.
        start = max(cfg.warmup, 1.0 - cfg.cooldown)
        t = 0.0 if p <= start else (p - start) / max(1e-12, 1.0 - start)
        return floor + (1.0 - floor) * (1.0 - t)
    t = (p - cfg.warmup) / max(1e-12, 1.0 - cfg.warmup)
    return floor + (1.0 - floor) * DECAYS[cfg.decay](t)
