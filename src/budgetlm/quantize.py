"""Int8 dynamic quantization for CPU inference (`--quantize int8` on classify, eval, serve).

Dynamic quantization (PyTorch `quantize_dynamic`) stores every `nn.Linear` weight as int8 with one
scale per tensor and quantizes activations on the fly, per batch. It needs no calibration data, keeps
embeddings, norms and attention in fp32, and on x86 runs the int8 GEMMs through fbgemm/oneDNN. Linear
layers hold nearly all FLOPs of a transformer, so this is where CPU time goes; the measured speed-up
and the change in accuracy are in docs/bench/downstream.md (benchmarks/sst2.py --quantize-check).
The output projection of a tied model is untied in the quantized copy (an nn.Linear holding a copy
of the embedding), so it is quantized as well; the embedding lookup stays fp32.

ONNX Runtime was not used: it is not a dependency, and this path already gives the int8 GEMMs.

torchao, the maintained successor PyTorch points to, installs and runs on CPU with torch 2.13 but is
slower here (benchmarks/int8_backends.py, a 2 x 256 masked classifier, one thread, 16 x 64 tokens):
fp32 0.078 s per batch, this path 0.051 s, torchao int8 weight-only 0.067 s, torchao dynamic int8
1.57 s (its int8 x int8 matmul has no fast CPU kernel). Moving would make `--quantize int8` slower, so
this API stays until torchao's CPU path catches up; rerun that script on a new torchao to check.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from budgetlm.config import BudgetError

QUANTIZE_CHOICES = ("none", "int8")


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear replaced by an int8 dynamically quantized one (CPU)."""
    if next(model.parameters()).device.type != "cpu":
        raise BudgetError("--quantize int8 runs on CPU only: use --device cpu")
    model = copy.deepcopy(model).float().eval()
    _untie_output(model)
    with warnings.catch_warnings():
        # PyTorch marks the quantized tensor constructors used inside quantize_dynamic as deprecated
        # (pytorch#184982, in favour of torchao); the API still works and torchao is no dependency.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def _untie_output(model: nn.Module) -> None:
    """Give a tied language model (or each tied model inside `model`) its own output nn.Linear, a copy
    of the embedding, so that the output projection, the largest matrix of a small-vocabulary-heavy
    model, is quantized too; the embedding lookup stays fp32."""
    for m in model.modules():
        if getattr(m, "has_lm_head", False) and getattr(m, "lm_head", 1) is None:
            head = nn.Linear(m.embed.weight.shape[1], m.embed.weight.shape[0], bias=False)
            head.weight = nn.Parameter(m.embed.weight.detach().clone())
            m.lm_head = head


def maybe_quantize(model: nn.Module, how: str) -> nn.Module:
    """Apply the `--quantize` choice: 'none' returns the model unchanged."""
    if how not in QUANTIZE_CHOICES:
        raise BudgetError(f"--quantize {how!r}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    return quantize_int8(model) if how == "int8" else model


def linear_count(model: nn.Module) -> tuple[int, int]:
    """(fp nn.Linear layers, int8 dynamically quantized linear layers) in `model`."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    q = sum(isinstance(m, QLinear) for m in model.modules())
    fp = sum(type(m) is nn.Linear for m in model.modules())
    return fp, q
