"""How accurate is `budgetlm plan` on this machine?

For several model sizes x sequence lengths x precisions, side by side in one run:
- parameter count, and weight / gradient / optimizer bytes: plan vs the real model and optimizer;
- activation bytes: plan vs the bytes autograd saves, counted with saved_tensors_hooks;
- step time after calibration: calibrate on some depths at each sequence length (as `train`
  calibrates at its own), predict the other depths (held out: between the calibrated ones, and
  beyond them) and measure them;
- a memory table: budgetlm vs Hugging Face accelerate's `estimate-memory` "Training using Adam"
  rule vs measured. accelerate is not installed here, so its documented rule is reproduced
  (hardware-notes 3): the largest of the model/gradient/optimizer/step terms, which comes to
  16 bytes/param in fp32 and 8 bytes/param in fp16/bf16, and no activations.

    flock /tmp/budgetlm-bench.lock .venv/bin/python benchmarks/plan_accuracy.py --precisions fp32 --out /tmp/plan_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from budgetlm import calibration, runtime
from budgetlm import planning as P
from budgetlm.models.presets import model_config
from budgetlm.training import calibrate


def accelerate_adam_bytes(n_params: int, precision: str) -> int:
    """accelerate estimate-memory, "Training using Adam": max of the terms, not their sum."""
    return n_params * (16 if precision == "fp32" else 8)


def measure_all(args) -> list[dict]:
    causal = args.objective == "causal"
    pred = None if causal else 0.25
    # (precision, seq len, depth) -> (micro-batch, model config)
    configs = {(precision, T, depth): (max(1, args.tokens_per_step // T),
                                       model_config(depth, args.vocab_size, causal=causal, max_seq_len=T))
               for precision in args.precisions for T in args.seq_lens for depth in args.depths}
    passes: dict[tuple, list[dict]] = {c: [] for c in configs}
    # Interleaved passes, each configuration keeping its fastest (lowest median step time): on a
    # shared or drifting machine a slow spell then slows one pass of every size, not one size.
    for _ in range(args.passes):
        for key, (mb, cfg) in configs.items():
            precision, T, _ = key
            rt = runtime.Runtime(torch.device("cpu"), "cpu", precision, "benchmark")
            passes[key].append(calibrate.measure(cfg, mb, T, rt, seconds=args.seconds, min_steps=3))
    rows = []
    for key, (mb, cfg) in configs.items():
        precision, T, depth = key
        r = min(passes[key], key=lambda x: x["step_seconds"])
        r["pass_step_seconds"] = [x["step_seconds"] for x in passes[key]]
        s = P.state_bytes(cfg, precision)
        act = P.activation_bytes(cfg, mb, T, precision, pred_fraction=pred)
        r.update(
            pred_params=P.param_groups(cfg)["total"],
            pred_weights=s["weights"], pred_gradients=s["gradients"], pred_optimizer=s["optimizer"],
            # autocast's weight copies are saved tensors, so the hooks see them
            pred_saved=sum(act.values()) + s["weight_copies"],
            accelerate_bytes=accelerate_adam_bytes(r["params"], precision),
        )
        rows.append(r)
        print(f"{precision} T={T} depth={depth}: step {r['step_seconds'] * 1e3:.0f} ms, "
              f"saved {r['saved_activation_bytes'] / 2**20:.1f} MiB (plan {r['pred_saved'] / 2**20:.1f})",
              flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3, 4, 6])
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--calibrate-depths", type=int, nargs="+", default=[1, 4],
                    help="depths that calibrate, at each seq len (as `train` calibrates at its own); the "
                         "other depths are held out (between them: interpolated; beyond: extrapolated)")
    ap.add_argument("--tokens-per-step", type=int, default=2048)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--objective", choices=["causal", "masked"], default="causal")
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per configuration and pass")
    ap.add_argument("--passes", type=int, default=3, help="interleaved passes over all configurations; each keeps its fastest")
    ap.add_argument("--out", default=None, help="write all rows as JSON here")
    ap.add_argument("--from-json", default=None, help="re-analyse the measurements saved by --out (no timing)")
    args = ap.parse_args()

    device, info, _ = calibration.local()
    measured_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.from_json:
        saved = json.loads(open(args.from_json).read())
        rows, info = saved["rows"], saved["machine"]
        measured_at = saved.get("measured_at", "see the file's date")
    else:
        rows = measure_all(args)
    # calibrate on a subset, predict the rest
    for precision in args.precisions:
        cal_points = [r for r in rows if r["precision"] == precision and r["depth"] in args.calibrate_depths]
        causal = args.objective == "causal"
        cal = {"precisions": {precision: cal_points}}
        for r in rows:
            if r["precision"] != precision:
                continue
            cfg = model_config(r["depth"], args.vocab_size, causal=causal, max_seq_len=r["seq_len"])
            mfu, _ = P.mfu_for(device, precision, cfg, r["seq_len"], cal)
            tokens = r["micro_batch"] * r["seq_len"]
            r["pred_step_seconds"] = tokens * r["flops_per_token"] / (mfu * P.peak_flops(device, precision))
            r["held_out"] = r not in cal_points

    def pct(a, b):
        return f"{100 * (a - b) / b:+.1f}%"

    print(f"\n{info['name']} ({info['cores']} cores), torch {torch.__version__}, python {platform.python_version()}, "
          f"measured {measured_at}; {args.objective}, vocab {args.vocab_size}, "
          f"{args.tokens_per_step} tokens per step, AdamW\n")
    print("| precision | seq | depth | params (plan = real) | weights+grads+optimizer (plan = real) | "
          "saved activations: measured | plan | error | step: measured | plan | error | held out |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        states = r["weights"] + r["gradients"] + r["optimizer"]
        pstates = r["pred_weights"] + r["pred_gradients"] + r["pred_optimizer"]
        print(f"| {r['precision']} | {r['seq_len']} | {r['depth']} | {r['params']:,} "
              f"({'exact' if r['params'] == r['pred_params'] else 'OFF'}) | {states:,} "
              f"({'exact' if states == pstates else 'OFF'}) | {r['saved_activation_bytes']:,} | {r['pred_saved']:,} | "
              f"{pct(r['pred_saved'], r['saved_activation_bytes'])} | {r['step_seconds'] * 1e3:.0f} ms | "
              f"{r['pred_step_seconds'] * 1e3:.0f} ms | {pct(r['pred_step_seconds'], r['step_seconds'])} | "
              f"{'yes' if r['held_out'] else 'calibration'} |")
    print("\n| precision | seq | depth | measured (states + saved) | budgetlm | accelerate rule | accelerate error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        measured = r["peak_memory_bytes"]
        ours = r["pred_weights"] + r["pred_gradients"] + r["pred_optimizer"] + r["pred_saved"]
        print(f"| {r['precision']} | {r['seq_len']} | {r['depth']} | {measured / 2**20:,.1f} MiB | "
              f"{ours / 2**20:,.1f} MiB ({pct(ours, measured)}) | {r['accelerate_bytes'] / 2**20:,.1f} MiB | "
              f"{pct(r['accelerate_bytes'], measured)} |")
    held = [r for r in rows if r["held_out"]]
    worst_act = max(abs(r["pred_saved"] / r["saved_activation_bytes"] - 1) for r in rows)
    worst_time = max((abs(r["pred_step_seconds"] / r["step_seconds"] - 1) for r in held), default=0.0)
    within = sum(abs(r["pred_step_seconds"] / r["step_seconds"] - 1) <= 0.2 for r in held)
    print(f"\nworst activation error {100 * worst_act:.2f}% (target 10%); held-out step time within 20%: "
          f"{within}/{len(held)} (worst {100 * worst_time:.1f}%)")
    if args.out and not args.from_json:
        with open(args.out, "w") as fh:
            json.dump({"machine": info, "measured_at": measured_at, "args": vars(args), "rows": rows}, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
