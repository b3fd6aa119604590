"""How much this machine's training speed varies from one process to the next.

Time-budgeted results (tokens trained, bits/byte after 2 minutes) can only be as steady as the machine.
Each of `--processes` fresh Python processes builds the same model (3 x 64, vocabulary 2,048, sequence
256, 8 sequences: the planner's 2-minute Tiny Shakespeare shape), runs training steps through
`runtime.prepare_training` and the training loop over one fixed batch, and reports the median step of
`--steps` steps. A process-to-process ratio well above 1 means that every time-budgeted figure on this
machine carries that noise, and that a few seconds of calibration can miss a run's speed by as much.

    python benchmarks/machine_noise.py --processes 8 --out /tmp/noise.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import machine, write_json

CHILD = r"""
import json, statistics, sys, torch
from budgetlm import runtime
from budgetlm.models.presets import model_config
from budgetlm.models.transformer import Transformer
from budgetlm.training.loop import LoopConfig, LoopHooks, train_loop
from budgetlm.training.optim import OptimConfig, build_optimizer, muon_precision
from budgetlm.training.schedule import ScheduleConfig

steps, precision = int(sys.argv[1]), sys.argv[2]
rt = runtime.init_runtime("cpu", precision, seed=0)
cfg = model_config(3, 2048, causal=True, max_seq_len=256, width=64)
setup = runtime.prepare_training(Transformer(cfg), rt, compile="off")
opt = build_optimizer("muon", setup.model, OptimConfig(muon_precision=muon_precision(rt.precision)))
idx = torch.randint(0, 2048, (8, 256), generator=torch.Generator().manual_seed(0))
batch = {"idx": idx, "targets": idx.clone()}

def timed(n):
    ends = []
    train_loop(setup, lambda: batch, opt, rt, LoopConfig(max_steps=n, eval_every=0, checkpoint_every_s=0,
               log_every=10**9), ScheduleConfig(warmup=0.0, decay="constant"),
               hooks=LoopHooks(on_step=lambda m, s: ends.append(s.elapsed_s)), show_progress=False)
    return [b - a for a, b in zip([0.0] + ends[:-1], ends)]

timed(5)  # warm-up
print(json.dumps({"precision": rt.precision, "step_ms": 1e3 * statistics.median(timed(steps))}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=8, help="fresh processes, one after another")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per process")
    ap.add_argument("--precision", default="auto", help="fp32 | bf16 | auto (the runtime's choice)")
    ap.add_argument("--out", default="", help="write the result JSON here")
    args = ap.parse_args()
    runs = []
    for i in range(args.processes):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(args.steps), args.precision],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"process {i + 1}: {runs[-1]['step_ms']:.1f} ms per step ({runs[-1]['precision']})", flush=True)
    ms = [r["step_ms"] for r in runs]
    result = {"shape": "3 x 64, vocabulary 2048, 8 x 256 tokens", "steps": args.steps, "precision": runs[0]["precision"],
              "step_ms": [round(x, 1) for x in ms], "median_ms": round(statistics.median(ms), 1),
              "slowest_over_fastest": round(max(ms) / min(ms), 3), "machine": machine()}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
