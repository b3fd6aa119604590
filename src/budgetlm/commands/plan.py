"""`budgetlm plan`: memory, FLOPs, time, cost and model size for a device and a budget.

    budgetlm plan --device nvidia-rtx-3090 --budget 1d --objective masked --seq-len 128
    budgetlm plan --device local --budget 10m --data data/shakespeare
    budgetlm plan --device nvidia-h100-sxm --budget 2h --model small --compare
    budgetlm plan --budget 1d --model 12 --n-embd 768 --tokens 10e9 --choose --rank cost

Flags are `PlanConfig`'s and (for --choose) `ChooseConfig`'s fields; the work is `budgetlm.api.plan`,
`compare` and `choose`. No torch unless
`--device local` has to look for a GPU.
"""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import api, ui
from budgetlm.config import add_dataclass_args, format_duration, from_args
from budgetlm.planning import GiB, Plan, PlanConfig
from budgetlm.planning.choose import ChooseConfig, Option, launch_spec


# what the flags' values look like in --help (argparse would show the field name)
METAVARS = {"device": "ID|local", "budget": "DURATION", "data": "DIR", "tokens": "N", "model": "auto|DEPTH|PRESET",
            "catalog_file": "FILE", "calibration": "FILE"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, PlanConfig)
    for action in parser._actions:
        action.metavar = METAVARS.get(action.dest, action.metavar)
        action.required = action.required or action.dest == "budget"
    parser.add_argument("--compare", action="store_true",
                        help="the same budget and model on every catalog device, as a table (default: off)")
    parser.add_argument("--choose", action="store_true",
                        help="rank rentable options (1-8 GPUs of each kind, TPU slices) for the job, "
                             "the budget being the deadline (default: off)")
    choose = parser.add_argument_group("--choose", "how options are ranked and shown")
    add_dataclass_args(choose, ChooseConfig)


def run(args: argparse.Namespace) -> dict[str, Any] | list[dict[str, Any]]:
    """The plan as a dict; with --compare a list of them, one per device (what --json prints)."""
    cfg = from_args(PlanConfig, args)
    if args.choose:
        choice = from_args(ChooseConfig, args)
        options = api.choose(cfg, choice)
        show_choose(options, cfg, choice)
        best = options[0] if options[0].ok else None
        launch = launch_spec(best, choice.launch, cfg.data, cfg.budget or "", cfg.objective,
                             fixed_tokens=cfg.model != "auto") \
            if best and choice.launch != "none" else None
        if launch:
            ui.info(launch)
        return {"options": [o.to_json() for o in options[:choice.top]], "launch": launch}
    if not args.compare:
        plan = api.plan(cfg)
        show(plan)
        return plan.to_json()
    plans = api.compare(cfg)
    show_compare(plans, cfg)
    return [p.to_json() for p in plans]


def _gib(b: float) -> str:
    return f"{b / GiB:,.2f} GiB"


def show(plan: Plan) -> None:
    """Print a plan for humans (stdout, or stderr under --json)."""
    m = plan.model
    ui.info(f"[bold]plan[/] for {plan.device}" + (f" x{plan.num_devices}" if plan.num_devices > 1 else "")
            + f": {plan.objective} model, {m.n_layer} layers x {m.n_embd} wide ({m.n_head} heads), "
            f"{plan.params / 1e6:,.2f}M parameters")
    rows = [[k, _gib(v), f"{100 * v / plan.memory['total']:.0f}%"] for k, v in plan.memory.items() if k != "total"]
    rows.append(["total", _gib(plan.memory["total"]),
                 f"of {_gib(plan.device_memory_bytes)} " + ("fits" if plan.fits else "[red]does not fit[/]")])
    ui.table("memory per device", ["part", "bytes", "share"], rows)
    st = plan.storage
    ui.table("run", ["quantity", "value"], [
        ["precision", plan.precision],
        ["micro-batch x grad accum", f"{plan.micro_batch} x {plan.grad_accum} ({plan.global_batch_tokens:,} tokens/step)"],
        ["activation checkpointing", "yes" if plan.activation_checkpointing else "no"],
        ["FLOPs per token", f"{plan.flops_per_token:.4g}"],
        ["MFU", f"{plan.mfu:.2f} ({plan.mfu_source}) of {plan.peak_flops / 1e12:,.3g} TFLOP/s"],
        ["peak from", plan.peak_source],
        ["tokens/s", f"{plan.tokens_per_second:,.0f}"],
        ["tokens", f"{plan.tokens:,}" + (f" ({plan.epochs:.2f} epochs)" if plan.epochs else "")],
        ["total FLOPs", f"{plan.flops:.4g}"],
        ["time", format_duration(plan.seconds)],
        ["cost", "-" if plan.cost_usd is None else f"${plan.cost_usd:,.2f} at ${plan.price['usd_per_hour']:g}/h "
                 f"({plan.price['market']}: {plan.price['source']}, {plan.price['as_of']})"],
        ["disk: shards + checkpoints",
         f"{_gib(st['shards_bytes'])} + {st['checkpoints_kept']} x {_gib(st['checkpoint_bytes'])}"],
        ["input bandwidth needed", f"{st['input_bytes_per_second'] / 1e6:,.3f} MB/s"
         + (f" (disk reads {st['disk_read_bytes_per_second'] / 1e6:,.0f} MB/s)"
            if st.get("disk_read_bytes_per_second") else "")],
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


def show_compare(plans: list[Plan], cfg: PlanConfig) -> None:
    """One row per device: the single-device plan of the same budget and model."""
    if not plans:
        ui.warn("no catalog device has a compute figure for this precision")
        return
    m = plans[0].model
    ui.info(f"{format_duration(plans[0].seconds)} on every device: {m.n_layer} layers x {m.n_embd} wide "
            f"({plans[0].params / 1e6:,.2f}M parameters), sequences of {plans[0].seq_len} tokens; each row is "
            f"`budgetlm plan --device ID --model {m.n_layer} --n-embd {m.n_embd}` with the other flags as given")
    ui.table("compare (fitting devices first, then most tokens in the budget)",
             ["device", "fits", "prec", "micro x accum", "GiB", "tokens", "cost", "$/M tok", "market"],
             [[p.device, "yes" if p.fits else "no", p.precision, f"{p.micro_batch} x {p.grad_accum}",
               f"{p.memory['total'] / GiB:,.0f}/{p.device_memory_bytes / GiB:,.0f}", _count(p.tokens),
               "-" if p.cost_usd is None else f"${p.cost_usd:,.2f}",
               "-" if p.cost_usd is None or not p.tokens else f"{p.cost_usd / p.tokens * 1e6:,.4f}",
               p.price["market"] if p.price else "-"]
              for p in plans])
    markets = {p.price["market"] for p in plans if p.price}
    if len(markets) > 1:
        ui.warn(f"the costs come from different markets ({', '.join(sorted(markets))}): compare like with like "
                "with --market cloud|bare-metal|marketplace")


def _count(n: float) -> str:
    return next(f"{n / d:,.1f}{u}" for d, u in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"), (1, ""))
                if n >= d or d == 1)


def show_choose(options: list[Option], cfg: PlanConfig, choice: ChooseConfig) -> None:
    """The ranked options as a table: the ones that meet the job first, then the others with why not."""
    fixed = cfg.model != "auto"
    ui.info(f"{len(options)} options for a {cfg.objective} job by {cfg.budget}, ranked by {choice.rank}"
            + (f" within ${choice.max_cost:,.2f}" if choice.max_cost else "")
            + ("; every option trains the same model on the same tokens" if fixed
               else "; each option trains the compute-optimal model for its speed"))
    rows = []
    for o in options[:choice.top]:
        p, m = o.plan, o.plan.model
        rows.append([f"{o.count} x {o.device}", f"{m.n_layer} x {m.n_embd} ({p.params / 1e6:,.0f}M)",
                     _count(p.tokens), "-" if o.predicted_loss is None else f"{o.predicted_loss:.3f}",
                     format_duration(p.seconds), "-" if p.cost_usd is None else f"${p.cost_usd:,.2f}",
                     p.price["market"] if p.price else "-", p.precision,
                     "yes" if o.ok else f"[red]no[/]: {o.why}"])
    ui.table("options", ["devices", "model", "tokens", "pred. loss", "time", "cost", "market", "prec", "ok"], rows)
    markets = {o.plan.price["market"] for o in options if o.plan.price}
    if len(markets) > 1:
        ui.warn(f"prices from different markets ({', '.join(sorted(markets))}); choose one with --market")
    if any(o.device.startswith("google-tpu") for o in options[:choice.top]):
        ui.warn("TPU options are predictions: budgetlm's torch_xla path has not been verified on a TPU")
