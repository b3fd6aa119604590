"""Choosing the hardware for a job: rank rentable options across the catalog. No torch.

A job is a model (fixed, or "auto": the compute-optimal one for the deadline), a deadline (the
budget), optionally the tokens it must train (with a fixed model) and a cost cap. An option is a
count of one kind of device as it is rented: 1, 2, 4 or 8 GPUs, TPU slices from their smallest
(v4-8 and v5p-8 have 4 chips, v5e-1 one). For each option the plan says the model it trains by the
deadline (or, under a cost cap, by the time the money runs out), its predicted loss (the Besiroglu et
al. 2024 fit, non-embedding parameters, repeated data discounted), the time, the cost and whether it
fits. Options rank by cost, by time, or by predicted
quality within the cost cap; options that miss the deadline, do not fit, exceed the cap or have no
price in the chosen market are kept at the end with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from budgetlm.config import BudgetError, check_ranges, ranged
from budgetlm.planning.estimate import Plan
from budgetlm.planning.sizing import BESIROGLU, effective_tokens, scaling_params


@dataclass
class ChooseConfig:
    rank: Literal["cost", "time", "quality"] = "cost"  # order: cheapest, fastest, or lowest predicted loss (within --max-cost)
    max_cost: float = ranged(0.0, 0.0, 1e9)  # cost cap in USD for the whole job (0 = none)
    min_memory_gb: float = ranged(0.0, 0.0, 1e6)  # only devices with at least this much memory each (GB)
    only: str = ""  # comma-separated fragments of catalog ids to consider, e.g. rtx or h100,a100 (default: all)
    counts: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # device counts per kind (TPU slices start at their smallest)
    top: int = ranged(10, 1, 1000)  # options shown
    launch: Literal["none", "torchrun", "skypilot"] = "none"  # also print how to launch the best option

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.counts or min(self.counts) < 1 or max(self.counts) > 4096:
            raise BudgetError(f"--counts must be device counts in [1, 4096], got {self.counts}")


@dataclass
class Option:
    """One way to run the job: `count` devices of one kind, and what the plan says about it."""

    count: int  # devices rented
    plan: Plan  # the plan on them
    why: str  # why it does not meet the job ("" when it does)
    predicted_loss: float | None  # nats per token by the scaling-law fit (comparable within one job)

    @property
    def device(self) -> str:
        """The catalog id."""
        return self.plan.device

    @property
    def ok(self) -> bool:
        """Meets the deadline, fits, is priced and within the cap."""
        return not self.why

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "count": self.count, "ok": self.ok, "why": self.why,
                "predicted_loss": self.predicted_loss, "seconds": self.plan.seconds, "cost_usd": self.plan.cost_usd,
                "tokens": self.plan.tokens, "model": {"n_layer": self.plan.model.n_layer, "n_embd": self.plan.model.n_embd},
                "params": self.plan.params, "precision": self.plan.precision, "micro_batch": self.plan.micro_batch,
                "grad_accum": self.plan.grad_accum, "price": self.plan.price, "fits": self.plan.fits}


def counts_for(min_devices: int, counts: list[int]) -> list[int]:
    """The counts one can rent: at least the smallest slice, and whole slices of it."""
    return sorted({c for c in counts if c >= min_devices and c % min_devices == 0} or {min_devices})


def predicted_loss(plan: Plan) -> float:
    n = scaling_params(plan.model)
    return BESIROGLU.loss(n, max(effective_tokens(plan.tokens, plan.data_tokens), 1.0))


def judge(plan: Plan, count: int, deadline_s: float, cfg: ChooseConfig) -> Option:
    why = ""
    if not plan.fits:
        why = "does not fit"
    elif plan.seconds > deadline_s * 1.0001:
        why = f"needs {plan.seconds / 3600:,.1f} h"
    elif plan.cost_usd is None:
        why = "no price in this market"
    elif cfg.max_cost and plan.cost_usd > cfg.max_cost * 1.0001:
        why = f"costs ${plan.cost_usd:,.2f}"
    return Option(count, plan, why, predicted_loss(plan) if plan.fits else None)


RANKS = {
    "cost": lambda o: (o.plan.cost_usd if o.plan.cost_usd is not None else math.inf, o.plan.seconds),
    "time": lambda o: (o.plan.seconds, o.plan.cost_usd if o.plan.cost_usd is not None else math.inf),
    "quality": lambda o: (o.predicted_loss if o.predicted_loss is not None else math.inf,
                          o.plan.cost_usd if o.plan.cost_usd is not None else math.inf),
}


def rank(options: list[Option], cfg: ChooseConfig) -> list[Option]:
    """Options that meet everything first, in the chosen order; the rest after, in the same order."""
    key = RANKS[cfg.rank]
    return sorted(options, key=lambda o: (not o.ok, key(o)))


def launch_spec(option: Option, how: str, data: str | None, budget: str, objective: str,
                fixed_tokens: bool = False) -> str:
    """How to run the chosen option: a torchrun command line or a SkyPilot task file. A job of a fixed
    size stops at its tokens (--max-tokens), the budget being only the deadline."""
    p, m = option.plan, option.plan.model
    # the plan counts model state sharded across devices, which is FSDP, not DDP
    shard = " --fsdp" if option.count > 1 else ""
    args = (f"train --data {data or 'DATA'} --out runs/chosen --budget {budget} --objective {objective} "
            f"--model {m.n_layer} --n-embd {m.n_embd} --seq-len {p.seq_len} "
            f"--batch-size {p.global_batch_tokens // p.seq_len} --micro-batch {p.micro_batch} "
            f"--precision {p.precision} --optimizer {p.optimizer}{shard}" + (f" --max-tokens {p.tokens}" if fixed_tokens else ""))
    run = (f"torchrun --standalone --nproc_per_node {option.count} -m budgetlm {args}" if option.count > 1
           else f"budgetlm {args}")
    if how == "torchrun":
        return run
    return "\n".join([
        "# SkyPilot task: sky launch task.yaml",
        "resources:",
        f"  accelerators: {sky_accelerator(p.device, option.count)}",
        "setup: |",
        "  pip install budgetlm",
        "run: |",
        f"  {run}",
    ])


# catalog id -> SkyPilot accelerator name (GPUs: NAME:COUNT)
SKY_GPUS = {
    "nvidia-t4": "T4", "nvidia-v100-sxm2-16gb": "V100", "nvidia-v100-sxm2-32gb": "V100-32GB",
    "nvidia-a10g": "A10G", "nvidia-l4": "L4", "nvidia-a100-sxm4-40gb": "A100", "nvidia-a100-sxm4-80gb": "A100-80GB",
    "nvidia-h100-sxm": "H100", "nvidia-h100-pcie": "H100", "nvidia-h200-sxm": "H200", "nvidia-b200": "B200",
    "nvidia-rtx-3090": "RTX3090", "nvidia-rtx-4090": "RTX4090", "nvidia-rtx-a6000": "RTXA6000",
}
# TPU slices are named by TensorCores on v2-v4 and v5p (two per chip: v4-8 is 4 chips), by chips on
# v5e and v6e (Google Cloud TPU docs, "TPU versions")
SKY_TPUS = {"google-tpu-v2": ("tpu-v2-", 2), "google-tpu-v3": ("tpu-v3-", 2), "google-tpu-v4": ("tpu-v4-", 2),
            "google-tpu-v5p": ("tpu-v5p-", 2), "google-tpu-v5e": ("tpu-v5litepod-", 1),
            "google-tpu-v6e": ("tpu-v6e-", 1)}


def sky_accelerator(device_id: str, count: int) -> str:
    """SkyPilot's `accelerators:` value for `count` devices of one kind."""
    if device_id in SKY_TPUS:
        prefix, per_chip = SKY_TPUS[device_id]
        return f"{prefix}{count * per_chip}"
    return f"{SKY_GPUS.get(device_id, device_id)}:{count}"
