"""Published training runs, and the MFU model the planner fits on them. No torch.

Each run is a shape budgetlm can express (depth, width, heads, MLP width, vocabulary; grouped-query
attention is counted as full attention, which puts the MFU of TinyLlama and Llama 3 about 11-16%
above their own figure), a device and count from the catalog, and the throughput the authors
published or that follows from their numbers (`how`). Throughput is tokens per second over all
devices; FLOPs per token are `flops_per_token` of that shape, the same formula the planner uses, so
the fitted MFU turns straight back into a predicted tokens/s.

The model: log MFU = a + b [GeForce] + c [fused] + d log2(width / 1024), least squares over the runs.
GeForce cards' listed peak is the fp32-accumulate rate, half the marketing figure, so they reach a
higher share of it; "fused" is a stack of hand-fused kernels (llm.c's CUDA, TinyLlama's fused and
FlashAttention-2 kernels) rather than plain PyTorch; wider matmuls fill the device better. Tried
and left out because they did not lower the leave-one-out error on these runs: A100 against H100
generation, and torch.compile (nanoGPT compiled sits below Pythia uncompiled; torchtitan gains 16%).
budgetlm trains with plain PyTorch, so the planner uses a + b [GeForce] + d log2(width / 1024).
`benchmarks/plan_backtest.py` prints every run's predicted against published tokens/s with a
leave-one-out error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# the classes of catalog devices by id prefix; the rest of the GPUs are "datacenter"
MFU_CLASSES = {"nvidia-h100": "hopper", "nvidia-h200": "hopper", "nvidia-b200": "hopper",
               "nvidia-rtx-2080": "geforce", "nvidia-rtx-30": "geforce", "nvidia-rtx-40": "geforce"}


def mfu_class(device_id: str, kind: str = "gpu") -> str:
    """hopper | geforce | datacenter for a GPU; the kind itself (tpu, cpu) otherwise."""
    if kind != "gpu":
        return kind
    return next((c for prefix, c in MFU_CLASSES.items() if device_id.startswith(prefix)), "datacenter")


@dataclass(frozen=True)
class Run:
    name: str
    source: str  # where the figures come from
    device: str  # catalog id
    count: int  # devices
    n_layer: int
    n_embd: int
    n_head: int
    ffn: int  # MLP hidden width in the planner's gated-MLP terms (a GELU MLP of 4C is 8C/3)
    vocab: int
    tied: bool  # input and output embeddings shared
    seq_len: int
    causal: bool
    precision: str  # bf16 | fp16 | fp32
    compiled: bool  # torch.compile
    fused: bool  # hand-fused kernels (not plain PyTorch)
    tokens_per_s: float  # all devices
    how: str  # how tokens_per_s follows from the source
    micro_batch: int = 0  # sequences per device per step, where published (the plan must fit it)
    checkpointing: bool = False  # activation recomputation in that run (the plan can only do full)
    memory_gb: float = 0.0  # memory per device where it differs from the catalog's (GB)


RUNS: tuple[Run, ...] = (
    Run("llm.c GPT-2 124M", "karpathy/llm.c discussion #481", "nvidia-a100-sxm4-80gb", 8,
        12, 768, 12, 2048, 50257, True, 1024, True, "bf16", False, True, 10e9 / (90 * 60),
        "10B tokens in about 90 min", micro_batch=64),
    Run("llm.c GPT-2 1.5B", "karpathy/llm.c discussion #677 (-x 32000 -d 1048576)", "nvidia-h100-sxm", 8,
        48, 1600, 25, 4267, 50257, True, 1024, True, "bf16", False, True, 32000 * 1048576 / 86400,
        "32,000 steps of 1,048,576 tokens in 24 h", micro_batch=16),
    Run("nanoGPT GPT-2 124M", "karpathy/nanoGPT README and config/train_gpt2.py", "nvidia-a100-sxm4-40gb", 8,
        12, 768, 12, 2048, 50257, True, 1024, True, "bf16", True, False, 600000 * 491520 / (4 * 86400),
        "600,000 iterations of 491,520 tokens in about 4 days", micro_batch=12),
    Run("nanoGPT 124M, RTX 4090", "karpathy/nanoGPT issue #182 (29% MFU of the A100's 312 TFLOP/s)",
        "nvidia-rtx-4090", 1, 12, 768, 12, 2048, 50257, True, 1024, True, "bf16", True, False,
        0.29 * 312e12 / 855e6, "MFU x 312e12 / nanoGPT's 6N + 12LCT = 855 MFLOP per token"),
    Run("nanoGPT 124M, H100", "karpathy/nanoGPT PR #464 ('104%' of the A100's 312 TFLOP/s)", "nvidia-h100-sxm", 1,
        12, 768, 12, 2048, 50257, True, 1024, True, "bf16", True, False, 1.04 * 312e12 / 855e6,
        "MFU x 312e12 / 855 MFLOP per token"),
    Run("nanoGPT_1GPU_SPEEDRUN 124M", "Deveraux-Parker/nanoGPT_1GPU_SPEEDRUN README", "nvidia-rtx-4090", 1,
        12, 768, 12, 2048, 50257, True, 1024, True, "bf16", True, False, 135e3,
        "130-140k tokens/s as published (Muon, some FP8)"),
    Run("TinyLlama 1.1B", "jzhang38/TinyLlama README (24k tokens/s per A100-40G, 56% MFU)",
        "nvidia-a100-sxm4-40gb", 16, 22, 2048, 32, 5632, 32000, False, 2048, True, "bf16", False, True,
        16 * 24e3, "24,000 tokens/s per GPU as published", micro_batch=8),
    Run("Pythia 1.0B", "Biderman et al. 2023 via the TinyLlama README (4,830 A100 hours for 300B tokens)",
        "nvidia-a100-sxm4-40gb", 1, 16, 2048, 8, 5461, 50304, False, 2048, True, "fp16", False, False,
        300e9 / (4830 * 3600), "300B tokens / 4,830 GPU-hours, per GPU"),
    Run("torchtitan Llama 3.1 8B",
        "pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md (96 GB H100s, selective AC)",
        "nvidia-h100-sxm", 8, 32, 4096, 32, 14336, 128256, False, 8192, True, "bf16", False, False,
        8 * 5762, "5,762 tokens/s per GPU as published (FSDP, eager)", micro_batch=2,
        checkpointing=True, memory_gb=96),
    Run("torchtitan Llama 3.1 8B, compiled",
        "pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md (96 GB H100s, selective AC)",
        "nvidia-h100-sxm", 8, 32, 4096, 32, 14336, 128256, False, 8192, True, "bf16", True, False,
        8 * 6667, "6,667 tokens/s per GPU as published (FSDP, torch.compile)", micro_batch=2,
        checkpointing=True, memory_gb=96),
    Run("ModernBERT-base", "AnswerDotAI/ModernBERT issue #236 quoting the paper (1.7T tokens, 194 h)",
        "nvidia-h100-sxm", 8, 22, 768, 12, 1152, 50368, True, 1024, False, "bf16", False, False,
        1.7e12 / (194 * 3600), "1.7T tokens in 194 hours"),
)

FEATURES = ("intercept", "geforce", "fused", "log2_width")


def features(device_class: str, fused: bool, width: int) -> list[float]:
    return [1.0, float(device_class == "geforce"), float(fused), math.log2(width / 1024)]


def fit(points: list[tuple[list[float], float]]) -> list[float]:
    """Least squares of log MFU on the features (normal equations, a negligible ridge for stability)."""
    k = len(FEATURES)
    a = [[sum(x[i] * x[j] for x, _ in points) + (1e-6 if i == j else 0.0) for j in range(k)] for i in range(k)]
    b = [sum(x[i] * math.log(y) for x, y in points) for i in range(k)]
    return _solve(a, b)


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (a handful of unknowns): planning imports no numpy
    (.importlinter), so the few lines stay here rather than numpy.linalg.lstsq."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c and m[c][c]:
                f = m[r][c] / m[c][c]
                m[r] = [vr - f * vc for vr, vc in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


def predict(coef: list[float], x: list[float]) -> float:
    return math.exp(sum(c * v for c, v in zip(coef, x)))
