"""How much this machine's training speed varies from one process to the next.

Time-budgeted results (tokens trained, bits/byte after 2 minutes) can only be as steady as the machine.
Each of `--processes` fresh Python processes builds the same model (3 x 64, vocabulary 2,048, sequence
256, 8 sequences: the planner's 2-minute Tiny Shakespeare shape) and times its training steps as
calibration does (`training.calibrate.measure`: `runtime.prepare_training` and the training loop over
one fixed batch, after a warm-up), reporting the median step over `--seconds`. A process-to-process ratio well above 1 means that every time-budgeted figure on this
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
import json, sys
from budgetlm import runtime
from budgetlm.models.presets import model_config
from budgetlm.training.calibrate import measure

seconds, precision = float(sys.argv[1]), sys.argv[2]
rt = runtime.init_runtime("cpu", precision, seed=0)
r = measure(model_config(3, 2048, causal=True, max_seq_len=256, width=64), 8, 256, rt, seconds=seconds,
            optimizer="muon", memory=False, optimizer_time=False)
print(json.dumps({"precision": rt.precision, "steps": r["steps"], "step_ms": 1e3 * r["step_seconds"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=8, help="fresh processes, one after another")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed training seconds per process")
    ap.add_argument("--precision", default="auto", help="fp32 | bf16 | auto (the runtime's choice)")
    ap.add_argument("--out", default="", help="write the result JSON here")
    args = ap.parse_args()
    runs = []
    for i in range(args.processes):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(args.seconds), args.precision],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"process {i + 1}: {runs[-1]['step_ms']:.1f} ms per step ({runs[-1]['precision']})", flush=True)
    ms = [r["step_ms"] for r in runs]
    result = {"shape": "3 x 64, vocabulary 2048, 8 x 256 tokens", "seconds": args.seconds,
              "steps": [r["steps"] for r in runs], "precision": runs[0]["precision"],
              "step_ms": [round(x, 1) for x in ms], "median_ms": round(statistics.median(ms), 1),
              "slowest_over_fastest": round(max(ms) / min(ms), 3), "machine": machine()}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
