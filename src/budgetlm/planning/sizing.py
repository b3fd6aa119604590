"""Compute-optimal sizing: the model shape a budget should train (`auto_plan`). No torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from budgetlm.catalog import Device
from budgetlm.config import BudgetError
from budgetlm.models.config import ModelConfig
from budgetlm.models.presets import model_config, num_params
from budgetlm.planning.estimate import Plan, estimate, what_would_fit

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

# When the data repeats DEEP_REPEATS times or more, shapes whose N is within SIZE_TOLERANCE (in log N)
# of that of the shape nearest N_opt count as the same size, and the deepest of them is chosen. The
# law's loss at fixed compute is flat there (N off by 25% costs about 0.3% of its reducible loss);
# depth is not: on Tiny Shakespeare seen ~47 times (16.5M equal tokens, dropout 0.2) 6 x 96 reached
# 2.0428 bits/byte, 5 x 96 2.0465 and 3 x 128 2.0797, three shapes within 20% of each other in N
# that the nearest-N rule picked among by the calibration's noise (docs/bench/training.md).
# MobileLLM (Liu et al. 2024, sec. 2.2.2) finds deep and thin better at a fixed size too. With fresh
# or lightly repeated data, where this was not measured, the nearest shape stands.
DEEP_REPEATS = 20
SIZE_TOLERANCE = math.log(1.25)


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
    device. Returns the full plan; `plan.model` is the chosen ModelConfig.

    Each shape that fits trains D tokens in the budget at its predicted throughput, which is
    C = 6 N D of the law's compute (N = non-embedding parameters, `scaling_params`). The shape
    chosen is the one nearest (in log N) to the law's optimum for its own C,
    N_opt(C) = G (C/6)^(b/(a+b)) (Hoffmann et al. 2022 eq. 4, Besiroglu et al. 2024 refit): the
    fixed point where the model is as big as its compute says it should be. Shapes of almost the
    same distance go to the deeper one (MobileLLM: deep and thin), and models get at least
    MIN_DEPTH layers when such a model fits. When the data repeats DEEP_REPEATS times or more,
    the deepest shape whose N is within SIZE_TOLERANCE of the nearest's is chosen.

    Why not the shape with the lowest predicted loss L(N, D)? That rule chose too big for small
    budgets: real throughput falls slower than 1/N for small models
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
                          + what_would_fit(cfg, device, seq_len, optimizer, num_devices, pred_fraction))
    candidates.sort(key=lambda c: c[:2])
    candidates = [c for c in candidates if c[4].n_layer >= MIN_DEPTH] or candidates  # shallower only if nothing deeper fits
    nearest = candidates[0]
    if (nearest[5].epochs or 0) >= DEEP_REPEATS:
        # the deepest of the nearest shape's size
        candidates.sort(key=lambda c: (abs(math.log(c[2] / nearest[2])) > SIZE_TOLERANCE, c[1], c[0]))
    plan = candidates[0][5]
    plan.sizing = _sizing(candidates)
    d_eff = plan.sizing["effective_tokens"] = effective_tokens(plan.tokens, tokens_available)
    if tokens_available and plan.tokens > tokens_available:
        plan.notes.append(
            f"data-limited: {tokens_available:,} tokens of data for {plan.tokens:,} trained "
            f"({plan.epochs:.1f} epochs, worth {d_eff / tokens_available:.1f} epochs of fresh data)")
    return plan


def _sizing(candidates: list[tuple]) -> dict[str, Any]:
    """Plan.sizing: the law's reasoning for the chosen (first) candidate and the nearest others."""
    _, _, n, n_opt, cfg, plan = candidates[0]
    law_compute = 6 * n * plan.tokens
    n_20 = math.sqrt(law_compute / (6 * TOKENS_PER_PARAM))
    return {
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
        "candidates": [{"depth": c.n_layer, "width": c.n_embd, "params": p.params, "scaling_params": cn,
                        "optimal_params": round(no), "tokens": p.tokens,
                        "predicted_loss": round(BESIROGLU.loss(cn, max(p.tokens, 1.0)), 4)}
                       for _, _, cn, no, c, p in candidates[:8]],
    }
