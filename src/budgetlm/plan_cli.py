"""`budgetlm plan`: memory, FLOPs, time, cost and model size for a device and a budget.

    budgetlm plan --device nvidia-rtx-3090 --budget 1d --objective masked --seq-len 128
    budgetlm plan --device local --budget 10m --data data/shakespeare
    budgetlm plan --device nvidia-h100-sxm --budget 2h --model small --compare

No torch unless `--device local` has to look for a GPU.
"""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import calibration as calib
from budgetlm import plan as P
from budgetlm import ui
from budgetlm.catalog import Device, get_device, load_catalog
from budgetlm.config import BudgetError, format_duration, parse_duration
from budgetlm.models.presets import PRESETS, depth_of, model_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="local", metavar="ID|local",
                        help="catalog id (see `budgetlm hardware --catalog`) or local (default: local)")
    parser.add_argument("--num-devices", type=int, default=1, metavar="N",
                        help="data-parallel devices; model state is sharded across them (FSDP)")
    parser.add_argument("--budget", required=True, metavar="DURATION", help="wall-clock budget: 90s, 10m, 2h, 1d")
    parser.add_argument("--objective", choices=["causal", "masked"], default="causal",
                        help="causal (next-token) or masked (BERT-style) language model")
    parser.add_argument("--seq-len", type=int, default=512, metavar="N", help="tokens per training sequence")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--data", default=None, metavar="DIR", help="prepared dataset folder (token count, vocabulary)")
    src.add_argument("--tokens", type=float, default=None, metavar="N", help="tokens of training data available")
    parser.add_argument("--model", default="auto", metavar="PRESET|DEPTH|auto",
                        help=f"model size: auto (compute-optimal for the budget), a depth, or {', '.join(PRESETS)}")
    parser.add_argument("--vocab-size", type=int, default=None, metavar="N",
                        help="tokenizer vocabulary (default: from --data, else 8192)")
    parser.add_argument("--optimizer", choices=list(P.OPTIMIZERS), default="adamw", help="optimizer whose state to count")
    parser.add_argument("--precision", choices=["auto", *P.PRECISIONS], default="auto",
                        help="training precision (auto: the fastest that the device supports)")
    parser.add_argument("--mask-rate", type=float, default=0.25, metavar="X",
                        help="masked objective: share of positions predicted (sparse prediction)")
    parser.add_argument("--compare", action="store_true", help="the same job on every catalog device, as a table")
    parser.add_argument("--catalog-file", default=None, metavar="FILE",
                        help="your own devices/prices (JSON) on top of the catalog (default: $BUDGETLM_CATALOG)")
    parser.add_argument("--calibration", default=None, metavar="FILE",
                        help="calibration file from `budgetlm bench` (default: $BUDGETLM_HOME/calibration.json)")


def _resolve_device(name: str, catalog: dict[str, Device], cal_path: str | None) -> tuple[Device, dict | None]:
    """(device, its calibration or None). Calibration applies to the local device and to the
    catalog entry the local accelerator matched."""
    cal_all = calib.load(cal_path)["devices"]
    if name == "local":
        from budgetlm.hardware import device_key, local_device

        dev, info = local_device(catalog)
        return dev, cal_all.get(device_key(info))
    dev = get_device(name, catalog)
    match = next((e for e in cal_all.values() if e.get("catalog_id") == dev.id and dev.kind != "cpu"), None)
    return dev, match


def _data(args: argparse.Namespace) -> tuple[int | None, int]:
    vocab = args.vocab_size
    tokens = None
    if args.data:
        from budgetlm.data.shards import read_manifest

        manifest = read_manifest(args.data)
        tokens = int(manifest["splits"]["train"]["tokens"])
        vocab = vocab or int(manifest["tokenizer"]["vocab_size"])
    elif args.tokens is not None:
        if args.tokens <= 0:
            raise BudgetError(f"--tokens must be positive, got {args.tokens:g}")
        tokens = int(args.tokens)
    return tokens, vocab or 8192


def _gib(b: float) -> str:
    return f"{b / P.GiB:,.2f} GiB"


def show(plan: P.Plan) -> None:
    """Print a plan for humans (stdout, or stderr under --json); `train` and `demo` call it too."""
    m = plan.model
    ui.info(f"[bold]plan[/] for {plan.device}" + (f" x{plan.num_devices}" if plan.num_devices > 1 else "")
            + f": {plan.objective} model, {m['n_layer']} layers x {m['n_embd']} wide ("
            f"{m['n_head']} heads), {plan.params / 1e6:,.2f}M parameters")
    rows = [[k, _gib(v), f"{100 * v / plan.memory['total']:.0f}%"] for k, v in plan.memory.items() if k != "total"]
    rows.append(["total", _gib(plan.memory["total"]),
                 f"of {_gib(plan.device_memory_bytes)} " + ("fits" if plan.fits else "[red]does not fit[/]")])
    ui.table("memory per device", ["part", "bytes", "share"], rows)
    ui.table("run", ["quantity", "value"], [
        ["precision", plan.precision],
        ["micro-batch x grad accum", f"{plan.micro_batch} x {plan.grad_accum} "
                                     f"({plan.global_batch_tokens:,} tokens/step)"],
        ["activation checkpointing", "yes" if plan.activation_checkpointing else "no"],
        ["FLOPs per token", f"{plan.flops_per_token:.4g}"],
        ["MFU", f"{plan.mfu:.2f} ({plan.mfu_source}) of {plan.peak_flops / 1e12:,.3g} TFLOP/s"],
        ["tokens/s", f"{plan.tokens_per_second:,.0f}"],
        ["tokens", f"{plan.tokens:,}" + (f" ({plan.epochs:.2f} epochs)" if plan.epochs else "")],
        ["total FLOPs", f"{plan.flops:.4g}"],
        ["time", format_duration(plan.seconds)],
        ["cost", "-" if plan.cost_usd is None else f"${plan.cost_usd:,.2f}"],
        ["disk: shards + checkpoints", f"{_gib(plan.storage['shards_bytes'])} + "
                                       f"{plan.storage['checkpoints_kept']} x {_gib(plan.storage['checkpoint_bytes'])}"],
        ["input bandwidth needed", f"{plan.storage['input_bytes_per_second'] / 1e6:,.3f} MB/s"
         + (f" (disk reads {plan.storage['disk_read_bytes_per_second'] / 1e6:,.0f} MB/s)"
            if plan.storage.get("disk_read_bytes_per_second") else "")],
    ])
    s = plan.sizing
    if s:
        ui.info(f"compute-optimal: chosen {s['chosen_depth']} layers x {s['chosen_width']} wide, "
                f"{s['scaling_params'] / 1e6:,.2f}M non-embedding params for C = 6ND = {s['law_compute_flops']:.3g} FLOPs, "
                f"where Besiroglu et al. 2024 give N_opt {s['besiroglu_optimal_params'] / 1e6:,.2f}M for "
                f"{s['besiroglu_optimal_tokens'] / 1e6:,.1f}M tokens (20 tokens/param: "
                f"{s['rule_optimal_params'] / 1e6:,.2f}M for {s['rule_optimal_tokens'] / 1e6:,.1f}M tokens); "
                f"all FLOPs incl. attention and output layer {s['compute_flops']:.3g}")
    for note in plan.notes:
        ui.warn(note)


def run(args: argparse.Namespace) -> dict[str, Any] | list[dict[str, Any]]:
    budget = parse_duration(args.budget)
    if args.num_devices < 1:
        raise BudgetError(f"--num-devices must be at least 1, got {args.num_devices}")
    if args.seq_len < 1:
        raise BudgetError(f"--seq-len must be positive, got {args.seq_len}")
    if not 0 < args.mask_rate <= 1:
        raise BudgetError(f"--mask-rate must be in (0, 1], got {args.mask_rate}")
    catalog = load_catalog(args.catalog_file)
    device, cal = _resolve_device(args.device, catalog, args.calibration)
    data_tokens, vocab = _data(args)
    precisions = None if args.precision == "auto" else (args.precision,)
    if precisions and not P.peak_flops(device, args.precision):
        raise BudgetError(f"{device.id} has no {args.precision} peak in the catalog; "
                          f"it supports {', '.join(p for p in P.PRECISIONS if P.peak_flops(device, p)) or 'none'}")
    pred = None if args.objective == "causal" else args.mask_rate
    if not any(P.peak_flops(device, p) for p in P.PRECISIONS):
        raise BudgetError(f"{device.id} has no compute figure in the catalog (memory only); "
                          "run `budgetlm bench` on it or add tflops in --catalog-file")
    if args.model == "auto":
        plan = P.auto_plan(device, budget, data_tokens, args.seq_len, args.objective, vocab, cal,
                           args.num_devices, args.optimizer, precisions=precisions, pred_fraction=pred)
    else:
        try:
            depth = depth_of(args.model)
        except ValueError as e:
            raise BudgetError(str(e)) from None
        cfg = model_config(depth, vocab, causal=args.objective == "causal", max_seq_len=args.seq_len)
        plan = P.estimate(cfg, device, 0, args.seq_len, args.num_devices, args.optimizer, cal, data_tokens,
                          pred, precisions, budget_s=budget)
        if not plan.fits:
            fits_on = [d.id for d in catalog.values() if any(P.peak_flops(d, p) for p in P.PRECISIONS)
                       and P.estimate(cfg, d, 1, args.seq_len, args.num_devices, args.optimizer,
                                      None, None, pred).fits]
            raise BudgetError(f"model depth {depth} ({plan.params / 1e6:,.1f}M parameters) does not fit on "
                              f"{device.id}: {plan.notes[0].removeprefix('does not fit: ')}"
                              + (f"; it fits on {', '.join(fits_on[:5])}" if fits_on else "; it fits on no catalog device"))
    if not args.compare:
        show(plan)
        return plan.to_json()
    cfg = model_config(plan.depth, vocab, causal=args.objective == "causal", max_seq_len=args.seq_len)
    plans = P.compare(cfg, list(catalog.values()), plan.tokens, args.seq_len, args.num_devices,
                      args.optimizer, pred)
    ui.info(f"the same job on every device: depth {plan.depth} ({plan.params / 1e6:,.2f}M parameters), "
            f"{plan.tokens:,} tokens of {args.seq_len}")
    ui.table("compare (default MFU; fitting devices first, fastest first)",
             ["device", "fits", "precision", "micro x accum", "memory", "time", "cost"],
             [[p.device, "yes" if p.fits else "no", p.precision, f"{p.micro_batch} x {p.grad_accum}",
               _gib(p.memory["total"]) + f" / {p.device_memory_bytes / 2**30:,.0f}", format_duration(p.seconds),
               "-" if p.cost_usd is None else f"${p.cost_usd:,.2f}"] for p in plans])
    return [p.to_json() for p in plans]
