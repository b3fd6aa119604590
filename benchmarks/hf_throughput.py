"""Training throughput: Hugging Face `transformers` (LlamaForCausalLM + Trainer, defaults, fp32) vs
budgetlm's training loop, on the same model, on CPU.

Model: a 6.9M-parameter Llama, width 256, 6 layers, 8 heads, MLP 704, vocabulary 8192,
tied embeddings, sequence 512, batch 8. Data: random token ids (throughput does not depend on them).

budgetlm runs as `budgetlm train` would for a long CPU budget: the runtime's CPU set-up
(`runtime.init_runtime`, which keeps freed memory in the heap) and `torch.compile`
(`runtime.maybe_compile` with `--compile auto` and a budget of an hour). `--no-compile` measures the
eager model. Each contender runs in its own process (the runtime's allocator setting is
process-wide and must not leak into the other contender), `--steps` optimizer steps after
`--warmup` untimed ones (compilation happens there); rounds alternate the contenders so that load
from other processes hits them alike, and the best round of each is kept.
MFU = model FLOPs per token (6N + 12 L C T, `budgetlm.planning.flops_per_token`) x tokens/s,
divided by the *measured* matmul peak of this CPU in the precision used (`budgetlm.runtime`).

Needs `accelerate` (transformers' Trainer requires it; not a budgetlm dependency):
    pip install --target /tmp/hfdeps --no-deps accelerate
    PYTHONPATH=/tmp/hfdeps python benchmarks/hf_throughput.py --json-out /tmp/hf.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time

import torch

from budgetlm import runtime
from budgetlm.models.config import ModelConfig
from budgetlm.models.presets import num_params
from budgetlm.models.transformer import build_model
from budgetlm.planning import flops_per_token
from budgetlm.training.loop import LoopConfig, train_loop
from budgetlm.training.optim import OptimConfig, build_optimizer
from budgetlm.training.schedule import ScheduleConfig

V, C, L, H, I, T, B = 8192, 256, 6, 8, 704, 512, 8


def hf_tokens_per_s(steps: int, warmup: int, seed: int) -> float:
    from torch.utils.data import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    cfg = LlamaConfig(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_attention_heads=H,
                      num_key_value_heads=H, intermediate_size=I, max_position_embeddings=T,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)

    class Random(Dataset):
        def __len__(self):
            return B * (steps + warmup)

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            x = torch.randint(0, V, (T,), generator=g)
            return {"input_ids": x, "labels": x}

    class Clock(TrainerCallback):
        def __init__(self):
            self.t0 = None
            self.t1 = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.t1 = time.perf_counter()

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=B, max_steps=steps + warmup,
                                 use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                                 disable_tqdm=True, seed=seed)
        Trainer(model=model, args=args, train_dataset=Random(), callbacks=[clock]).train()
    return steps * B * T / (clock.t1 - clock.t0)


def budgetlm_tokens_per_s(precision: str, steps: int, warmup: int, seed: int, compile_: bool) -> tuple[float, str]:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, n_layer=L, n_embd=C, n_head=H, intermediate_size=I, max_seq_len=T,
                      tie_embeddings=True)
    model = build_model(cfg)
    rt = runtime.init_runtime("cpu", precision, seed)
    opt = build_optimizer("adamw", model, OptimConfig(lr=5e-5))
    train_model = runtime.maybe_compile(model, rt, "auto" if compile_ else "off", budget_s=3600.0)
    g = torch.Generator().manual_seed(seed)

    def batches():
        x = torch.randint(0, V, (B, T + 1), generator=g)
        return {"idx": x[:, :-1], "targets": x[:, 1:]}

    sched = ScheduleConfig(warmup=0.0, decay="constant")
    train_loop(train_model, batches, opt, rt, LoopConfig(max_steps=warmup), sched, show_progress=False)
    res = train_loop(train_model, batches, opt, rt, LoopConfig(max_steps=steps, log_every=10**9), sched,
                     show_progress=False)
    return res.state.tokens / res.state.elapsed_s, rt.precision


def contender(name: str, steps: int, warmup: int, compile_: bool) -> tuple[float, str]:
    """Run one contender in a fresh process; (tokens/s, precision)."""
    cmd = [sys.executable, __file__, "--contender", name, "--steps", str(steps), "--warmup", str(warmup)]
    if not compile_:
        cmd.append("--no-compile")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["tokens_per_s"], out["precision"]


def run_contender(name: str, steps: int, warmup: int, compile_: bool) -> None:
    if name == "hf_trainer_fp32":
        tps, prec = hf_tokens_per_s(steps, warmup, 0), "fp32"
    else:
        tps, prec = budgetlm_tokens_per_s(name.split("_")[1], steps, warmup, 0, compile_)
    print(json.dumps({"tokens_per_s": tps, "precision": prec}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (torch.compile runs here)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    ap.add_argument("--no-compile", action="store_true", help="budgetlm without torch.compile")
    ap.add_argument("--json-out", default="", help="write the results here as JSON")
    ap.add_argument("--contender", default="", help=argparse.SUPPRESS)  # internal: run one, print JSON
    args = ap.parse_args()
    if args.contender:
        run_contender(args.contender, args.steps, args.warmup, not args.no_compile)
        return

    cfg = ModelConfig(vocab_size=V, n_layer=L, n_embd=C, n_head=H, intermediate_size=I, max_seq_len=T)
    fpt = flops_per_token(cfg, T)
    auto_prec, auto_reason = runtime.choose_precision("cpu", "auto")
    names = ["hf_trainer_fp32", "budgetlm_fp32"] + (["budgetlm_auto"] if auto_prec != "fp32" else [])
    best: dict[str, tuple[float, str]] = {}
    for r in range(args.rounds):
        for name in names:
            tps, prec = contender(name, args.steps, args.warmup, not args.no_compile)
            print(f"round {r + 1} {name}: {tps:,.0f} tokens/s ({prec})", flush=True)
            if name not in best or tps > best[name][0]:
                best[name] = (tps, prec)
    peaks = {p: runtime.cpu_matmul_flops(p, 1024, 5) for p in {"fp32", auto_prec}}
    hf = best["hf_trainer_fp32"][0]
    rows = {}
    for name, (tps, prec) in best.items():
        rows[name] = {"tokens_per_s": round(tps, 1), "precision": prec, "speedup_vs_hf": round(tps / hf, 3),
                      "model_flops_per_s": round(fpt * tps / 1e9, 1),
                      "mfu_vs_measured_matmul_peak": round(fpt * tps / peaks[prec], 3)}
    out = {"params": num_params(cfg), "flops_per_token": fpt, "batch": B, "seq_len": T,
           "peak_matmul_gflops": {p: round(v / 1e9, 1) for p, v in peaks.items()},
           "auto_precision": [auto_prec, auto_reason], "results": rows, "steps": args.steps,
           "rounds": args.rounds, "budgetlm_compile": not args.no_compile, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(out, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
