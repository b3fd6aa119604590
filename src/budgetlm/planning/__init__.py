"""Plan a training run: memory, FLOPs, time, cost and model size for a device and a budget.

Pure arithmetic: no torch import (a test checks it), so `budgetlm plan` answers in milliseconds on
any machine. Every formula is in docs/planning.md with its source; the short version:

- parameters: exact, `budgetlm.models.presets.num_params` (tested equal to the real model's);
- model state: weights + gradients + optimizer state (+ autocast's low-precision weight copies),
  sharded across devices under FSDP (ZeRO-3: Rajbhandari et al. 2020);
- activations: counted per tensor that autograd saves in *our* model (derived from its forward and
  checked against `torch.autograd.graph.saved_tensors_hooks`, benchmarks/plan_accuracy.py), flash
  attention (no T^2 term, Dao et al. 2022), the gated MLP, activation checkpointing;
- FLOPs per token: 6N + 12 L C T (Kaplan et al. 2020; PaLM appendix B), `flops_per_token`, the
  formula training's MFU uses too;
- time = FLOPs / (MFU x peak); the peak from the catalog (`catalog.Device.training_peak`; a CPU's
  measured or estimated, see `calibration`), MFU from a calibration or DEFAULT_MFU;
- size: the shape nearest the compute-optimal size of the Besiroglu et al. 2024 refit of Chinchilla,
  for the tokens the budget buys (`auto_plan`).

Modules: `memory` (bytes), `estimate` (one model on one device: `estimate`, `Plan`, `PlanConfig`),
`sizing` (`auto_plan`). Resolving a device name, a calibration file or a dataset into a plan is
`budgetlm.api.plan`'s job.
"""

from budgetlm.planning.estimate import (DEFAULT_MFU, DEFAULT_SEQ_LEN, MAX_MICRO_TOKENS, MIN_STEPS, MIN_STEPS_FRESH,
                                    RECOMPUTE_FACTOR, TINY_MFU_FACTOR,
                                    TINY_WIDTH, TRAINER_CHECKPOINTING, Choice, Plan, PlanConfig, configurations,
                                    accumulated_speed, estimate, flops_per_token, mfu_for, min_steps,
                                    optimizer_seconds, peak_flops, single_step_speed, what_would_fit)
from budgetlm.planning.memory import (ATTENTION, DEFAULT_PRED_FRACTION, FRAGMENTATION, OPTIMIZERS, PRECISION_ORDER,
                                  PRECISIONS, RUNTIME_OVERHEAD, GiB, PrecisionSpec, activation_bytes,
                                  memory_breakdown, optimizer_bytes, param_groups, state_bytes)
from budgetlm.planning.sizing import (BESIROGLU, DEEP_REPEATS, MAX_ASPECT, MIN_ASPECT, MIN_DEPTH, REPEAT_HALF_LIFE,
                                  SIZE_TOLERANCE, TOKENS_PER_PARAM,
                                  WIDTH_STEP, ScalingLaw, auto_plan, effective_tokens, scaling_params, shapes)

__all__ = [
    "ATTENTION", "BESIROGLU", "DEEP_REPEATS", "DEFAULT_MFU", "DEFAULT_PRED_FRACTION", "FRAGMENTATION", "GiB", "MAX_ASPECT",
    "MAX_MICRO_TOKENS", "MIN_ASPECT", "MIN_DEPTH", "MIN_STEPS", "MIN_STEPS_FRESH", "OPTIMIZERS", "PRECISIONS", "PRECISION_ORDER",
    "RECOMPUTE_FACTOR", "REPEAT_HALF_LIFE", "RUNTIME_OVERHEAD", "SIZE_TOLERANCE", "TINY_MFU_FACTOR", "TINY_WIDTH",
    "TOKENS_PER_PARAM", "TRAINER_CHECKPOINTING", "WIDTH_STEP", "Choice", "Plan", "PlanConfig", "PrecisionSpec",
    "ScalingLaw", "accumulated_speed", "activation_bytes", "auto_plan", "configurations", "effective_tokens", "estimate",
    "flops_per_token", "memory_breakdown", "mfu_for", "min_steps", "optimizer_bytes", "optimizer_seconds", "param_groups", "peak_flops",
    "scaling_params", "shapes", "single_step_speed", "state_bytes", "what_would_fit",
]
