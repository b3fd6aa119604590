"""Training throughput of the planner's small CPU shapes, and where a step's time goes.

For each shape (layers x width, sequence, micro-batch, vocabulary) it times full training steps
(forward, backward, optimizer) of budgetlm's model, made ready by `runtime.prepare_training` and run
under the runtime's autocast in the precision `train` would pick (or `--precision`), with
  - `muon-torch`: torch.optim.Muon as shipped, whose Newton-Schulz iterations always run in bf16,
    one matrix at a time;
  - `muon-bf16`: budgetlm's Muon in bf16 (what bf16 training uses), the matrices of one shape as one stack;
  - `muon`: budgetlm's Muon in fp32 (what fp32 training uses);
  - `adamw`: fused AdamW, for reference;
side by side in one process (rounds alternate, median step of each), and reports tokens/s and MFU
against the best 1024^3 matmul rate in the training precision, measured in the same process (before
each shape) (FLOPs per token from `planning.flops_per_token`, the formula training reports MFU with).
A profile of the step with training's own Muon (`optim.muon_precision`: `muon-bf16` under bf16,
`muon` under fp32) then splits its time into matrix products (aten::mm/addmm/bmm), attention
(scaled_dot_product_*), the output softmax and loss (log_softmax, nll), and everything else
(element-wise ops, norms, RoPE, optimizer arithmetic, dispatch), and the matmul FLOP rate of the model's own GEMM shapes, which is
the ceiling of the matrix-product share.

    python benchmarks/small_shapes.py --shapes 3:64:256:8:2048 --rounds 3            # 2 minutes, eager
    python benchmarks/small_shapes.py --shapes 4:64:256:8:2048 --compile --dropout 0.2  # 10 minutes
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from common import machine, median_step, write_json


def rate(m: int, k: int, n: int, reps: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an (m x k) @ (k x n) product in `dtype`."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def build(shape: str, optimizer: str, compile_: bool, rt, dropout: float = 0.0):
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.presets import heads_for
    from budgetlm.models.transformer import Transformer
    from budgetlm.runtime import autocast, prepare_training
    from budgetlm.training.optim import OptimConfig, build_optimizer

    L, C, T, B, V = map(int, shape.split(":"))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, n_layer=L, n_embd=C, n_head=heads_for(C), max_seq_len=T, dropout=dropout)
    # prepare_training: the runtime's attention precision and compile decision, as in training
    setup = prepare_training(Transformer(cfg).train(), rt, "on" if compile_ else "off")
    model = setup.model
    name, ns = ("muon", "bf16") if optimizer in ("muon-bf16", "muon-torch") else (optimizer, "fp32")
    opt = build_optimizer(name, model, OptimConfig(lr=1e-3, muon_precision=ns))
    if optimizer == "muon-torch":  # the same groups and hyper-parameters, torch's own step
        ours = opt.optimizers[0]
        keys = ("lr", "weight_decay", "momentum", "nesterov", "adjust_lr_fn")
        opt.optimizers[0] = torch.optim.Muon(ours.param_groups, **{k: ours.defaults[k] for k in keys})
    x = torch.randint(0, V, (B, T))

    def step():
        with autocast(rt):
            _, loss = setup.module(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return cfg, T, B, step, sum(q.numel() for q in model.parameters())


def breakdown(step) -> dict[str, float]:
    """Share of self CPU time per kind of op over 5 steps."""
    from torch.profiler import profile

    with profile() as p:
        for _ in range(5):
            step()
    kinds = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"), "attention": ("scaled_dot_product",),
             "softmax+loss": ("log_softmax", "nll_loss")}
    out = dict.fromkeys([*kinds, "other"], 0.0)
    for ev in p.key_averages():
        kind = next((k for k, names in kinds.items() if any(n in ev.key for n in names)), "other")
        out[kind] += ev.self_cpu_time_total
    total = sum(out.values())
    return {k: round(v / total, 3) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["3:64:256:8:2048", "3:96:256:8:2048"],
                    help="LAYERS:WIDTH:SEQ:MICROBATCH:VOCAB of each shape")
    ap.add_argument("--optimizers", nargs="+", default=["muon-torch", "muon-bf16", "muon", "adamw"])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per shape")
    ap.add_argument("--steps", type=int, default=15, help="timed steps per round")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (as training does for >= 5 min)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="training precision (auto: what `train` picks on this CPU, by measurement)")
    ap.add_argument("--dropout", type=float, default=0.0, help="residual dropout (training uses 0.2 for runs of many epochs)")
    ap.add_argument("--out", default="", help="write the results here (JSON)")
    args = ap.parse_args()
    from budgetlm.planning import flops_per_token
    from budgetlm.runtime import init_runtime
    from budgetlm.training.optim import muon_precision

    rt = init_runtime("cpu", args.precision)

    peaks = [rate(1024, 1024, 1024, dtype=rt.dtype) for _ in range(5)]
    results = []
    for shape in args.shapes:
        steps = {o: build(shape, o, args.compile, rt, args.dropout) for o in args.optimizers}
        for *_, step, _ in steps.values():
            for _ in range(3):  # warm-up (and compilation)
                step()
        times: dict[str, list[float]] = {o: [] for o in args.optimizers}
        for _ in range(args.rounds):
            for o, (*_, step, _) in steps.items():
                times[o].append(median_step(step, args.steps))
        peaks += [rate(1024, 1024, 1024, dtype=rt.dtype) for _ in range(3)]  # the peak is noisy: keep the best seen
        peak = max(peaks)
        cfg, T, B, _, params = next(iter(steps.values()))
        fpt = flops_per_token(cfg, T)
        row = {"shape": shape, "params": params, "flops_per_token": fpt}
        for o, ts in times.items():
            tok_s = B * T / min(ts)
            row[o] = {"step_ms": round(1e3 * min(ts), 2), "tokens_per_s": round(tok_s), "mfu": round(tok_s * fpt / peak, 3)}
        C, F, V = cfg.n_embd, cfg.ffn_dim, cfg.vocab_size  # the model's own products: qkv, MLP, output
        row["gemm_gflops"] = {f"{m}x{k}x{n}": round(rate(m, k, n, dtype=rt.dtype) / 1e9, 1)
                              for m, k, n in [(B * T, C, 3 * C), (B * T, C, F), (B * T, C, V)]}
        ours = "muon-bf16" if muon_precision(rt.precision) == "bf16" else "muon"  # the Muon train would use
        row["breakdown_muon"] = breakdown(steps[ours][3]) if ours in steps else {}
        results.append(row)
        print(json.dumps(row), flush=True)
    write_json(args.out, {"peak_gflops": round(max(peaks) / 1e9, 1), "compile": args.compile, "precision": rt.precision, "dropout": args.dropout, "results": results,
                          "threads": torch.get_num_threads(), **machine()})


if __name__ == "__main__":
    main()
