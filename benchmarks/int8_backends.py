"""CPU forward time and logit error of the int8 choices for `--quantize int8`: PyTorch's
`quantize_dynamic` (what budgetlm uses) against torchao's `quantize_` with weight-only int8 and with
dynamic int8 activations and weights, on a budgetlm classifier backbone.

Process CPU time with one thread (as benchmarks/model_step_cpu.py) so a busy machine shifts the
numbers little. torchao is optional: `pip install torchao`.

    .venv/bin/python benchmarks/int8_backends.py [--width 256 --layers 6 --batch 32 --seq 128]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from torch import nn

from common import machine, write_json


def cpu_seconds(model: nn.Module, idx: torch.Tensor, reps: int) -> float:
    with torch.no_grad():
        model(idx)  # warm-up (first-call packing of int8 weights)
        t0 = time.process_time()
        for _ in range(reps):
            model(idx)
        return (time.process_time() - t0) / reps


def variants() -> dict:
    from budgetlm.quantize import quantize_int8

    out = {"fp32": lambda m: m, "torch.ao quantize_dynamic (budgetlm)": quantize_int8}
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        return out

    def tao(config):
        def apply(m):
            quantize_(m, config)
            return m
        return apply

    out["torchao int8 weight-only"] = tao(Int8WeightOnlyConfig())
    out["torchao int8 dynamic"] = tao(Int8DynamicActivationInt8WeightConfig())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.heads import SequenceClassifier

    cfg = ModelConfig(vocab_size=8192, n_layer=args.layers, n_embd=args.width, n_head=max(1, args.width // 64),
                      max_seq_len=args.seq, causal=False)
    base = SequenceClassifier(cfg, 2).eval()
    idx = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    with torch.no_grad():
        ref = base(idx)[0]
    rows = {}
    for name, apply in variants().items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = apply(copy.deepcopy(base))
            s = cpu_seconds(model, idx, args.reps)
            with torch.no_grad():
                err = float((model(idx)[0] - ref).abs().max())
        rows[name] = {"cpu_s_per_batch": round(s, 4), "max_abs_logit_diff": err}
        print(f"{name:40s} {s:8.4f} s/batch  max |logit diff| {err:.2e}", flush=True)
    try:
        import torchao

        tao_version = torchao.__version__
    except ImportError:
        tao_version = None
    write_json(args.out, {"shape": vars(args), "results": rows, "torchao": tao_version, "machine": machine()})


if __name__ == "__main__":
    main()
