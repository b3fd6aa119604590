"""RUN/report.md and RUN/loss.png: the run's final numbers and its loss curve, for humans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetlm import ui
from budgetlm.config import format_duration
from budgetlm.fsio import atomic_file, atomic_write_text


def plot_loss(history: list[dict[str, Any]], path: Path) -> bool:
    """Train loss per step and validation loss at each evaluation; False when there is nothing to plot."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if not train and not val:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return True


def write_report(run_dir: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    has_plot = plot_loss(history, run_dir / "loss.png")
    lines = [f"# Run report: {run_dir.name}", ""]
    if summary.get("interrupted"):
        lines += ["**Interrupted** (signal): a checkpoint was saved; continue with `--resume`.", ""]
    rows = [
        ("model", summary.get("model")),
        ("objective", summary.get("objective")),
        ("device / precision", f"{summary.get('device')} x{summary.get('world_size', 1)} / {summary.get('precision')}"),
        ("optimizer steps", summary.get("steps")),
        ("training tokens", f"{summary.get('tokens', 0):,}"),
        ("training time (budget clock)", format_duration(summary.get("elapsed_s", 0.0))),
        ("tokens/s", f"{summary.get('tokens_per_s', 0):,.0f}"
                     + (f" (planned {summary['planned_tokens_per_s']:,.0f})" if summary.get("planned_tokens_per_s") else "")),
        ("plan correction", summary.get("plan_correction") or None),
        ("MFU", f"{100 * summary['mfu']:.1f}% of {summary.get('peak_flops_note')}" if "mfu" in summary else "-"),
        ("final train loss", _fmt(summary.get("train_loss"))),
        ("validation loss", _fmt(summary.get("val_loss"))),
        ("validation bits/byte", _fmt(summary.get("val_bpb"))),
        ("validation accuracy", _fmt(summary.get("val_accuracy"))),
        ("non-finite steps skipped", summary.get("nan_skipped", 0)),
        ("roll-backs", summary.get("rollbacks", 0)),
    ]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v not in (None, "-")]
    if has_plot:
        lines += ["", "![loss curve](loss.png)"]
    lines += ["", "Files: `config.json` (run config), `metrics.jsonl` (one line per log step and evaluation), "
              "`checkpoints/` (weights, optimizer state, tokenizer), `summary.json`.", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _fmt(x) -> str | None:
    return None if x is None else f"{x:.4f}"


def show_plan(plan, budget_s: float | None) -> None:
    """The plan a run follows (a `plan.Plan`), as `budgetlm plan` would print its key lines."""
    m, mem = plan.model, plan.memory["total"]
    rows = [
        ["model", f"{m.n_layer} layers x {m.n_embd} wide, {plan.params / 1e6:.2f}M params, seq {plan.seq_len}"],
        ["tokens", f"{plan.tokens:,}" + (f" ({plan.epochs:.1f} epochs)" if plan.epochs else "")],
        ["batch", f"{plan.global_batch_tokens:,} tokens/step = micro {plan.micro_batch} x accumulation "
                  f"{plan.grad_accum} x {plan.num_devices} device(s)"],
        ["precision", f"{plan.precision}, activation checkpointing {'on' if plan.activation_checkpointing else 'off'}"],
        ["memory", f"{mem / 2**20:,.0f} MiB of {plan.device_memory_bytes / 2**30:,.1f} GiB"],
        ["speed", f"{plan.tokens_per_second:,.0f} tokens/s, MFU {plan.mfu:.2f} ({plan.mfu_source})"],
        ["time", format_duration(budget_s or plan.seconds)],
    ]
    rows += [["note", n] for n in plan.notes]
    ui.table(f"plan on {plan.device}", ["", "value"], rows)
