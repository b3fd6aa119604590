"""RUN/report.md and its plot: a run's numbers and curves, for humans. One writer (`write_report`)
serves pre-training (`pretraining_report`: loss curve) and fine-tuning (`finetuning_report`:
validation metric, per-class metrics, confusion matrix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from budgetlm import ui
from budgetlm.config import format_duration
from budgetlm.fsio import atomic_file, atomic_write_text


Series = tuple[str, list[float], list[float], str]  # (label, steps, values, matplotlib style)


def plot(path: Path, series: list[Series], ylabel: str, marks: list[tuple[float, str]] = ()) -> bool:
    """A PNG of value-per-step series (and vertical marks); False when there is nothing to plot."""
    series = [s for s in series if s[1]]
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, xs, ys, style in series:
        ax.plot(xs, ys, style, label=label)
    for x, label in marks:
        ax.axvline(x, color="grey", linestyle=":", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return True


def write_report(run_dir: Path, title: str, rows: list[tuple[str, Any]], image: tuple[str, str] | None = None,
                 sections: list[str] = (), note: str = "", name: str | None = None) -> Path:
    """RUN/report.md: a title, a table of (name, value) rows (None values left out), an image,
    further markdown sections, and a closing note. The one report writer of every run. `name`: the
    run's name when the folder is still a temporary one."""
    lines = [f"# {title}: {name or run_dir.name}", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v not in (None, "-", "")]
    if image:  # (file, alt text)
        lines += ["", f"![{image[1]}]({image[0]})"]
    for sec in sections:
        lines += ["", sec.rstrip()]
    if note:
        lines += ["", note]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def pretraining_report(run_dir: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    """A pre-training run: its numbers and the loss curve, the final whole-split evaluation included."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h and not h.get("final")]
    final = [(summary["steps"], summary["val_loss"])] if summary.get("val_loss") is not None else []
    has_plot = plot(run_dir / "loss.png", [("train loss", *_xy(train), "-"), ("val loss", *_xy(val), "o-"),
                                           ("final val loss (whole split)", *_xy(final), "r*")],
                    "loss (nats/token)")
    rows = [
        ("status", "**interrupted** (a signal): a checkpoint was saved; continue with `--resume`"
         if summary.get("interrupted") else None),
        ("model", summary.get("model")),
        ("objective", summary.get("objective")),
        ("device / precision", f"{summary.get('device')} x{summary.get('world_size', 1)} / {summary.get('precision')}"
                               + (", compiled" if summary.get("compiled") else "")),
        ("optimizer steps", summary.get("steps")),
        ("training tokens", f"{summary.get('tokens', 0):,}"),
        ("training time (budget clock)", format_duration(summary.get("elapsed_s", 0.0))),
        ("tokens/s", f"{summary.get('tokens_per_s', 0):,.0f}"
                     + (f" (planned {summary['planned_tokens_per_s']:,.0f})" if summary.get("planned_tokens_per_s") else "")),
        ("plan correction", summary.get("plan_correction")),
        ("MFU", f"{100 * summary['mfu']:.1f}% of {summary.get('peak_flops_note')}" if summary.get("mfu") else None),
        ("train loss (mean of the last steps)", _fmt(summary.get("train_loss"))),
        ("weight average over the cool-down (decay per step; the final weights)",
         f"{summary['ema']:g}" if summary.get("ema") is not None else None),
        ("final validation loss (whole split)", _fmt(summary.get("val_loss"))),
        ("final validation bits/byte", _fmt(summary.get("val_bpb"))),
        ("final validation accuracy", _fmt(summary.get("val_accuracy"))),
        ("non-finite steps skipped", summary.get("nan_skipped", 0)),
        ("roll-backs", summary.get("rollbacks", 0)),
    ]
    note = ("Files: `config.json` (the resolved run config), `metrics.jsonl` (one line per log step and "
            "evaluation), `checkpoints/` (weights, optimizer state, tokenizer), `summary.json`.")
    return write_report(run_dir, "Run report", rows, ("loss.png", "loss curve") if has_plot else None, note=note)


def finetuning_report(run_dir: Path, s: dict[str, Any], settings: str) -> Path:
    """A fine-tuning run: best validation metrics (per class and the confusion matrix for a
    classifier), the history."""
    hist, metric, labels = s["history"], s["metric"], s["labels"]
    has_plot = plot(run_dir / "val_metric.png", [(f"val {metric}", *_xy([(h["step"], h[metric]) for h in hist]), "o-")],
                    metric, [(s["best_step"], "best checkpoint")] if s["best_step"] is not None else [])
    rows = [
        ("source", f"`{s['source']}` ({s['backbone']}{', re-initialised' if s['from_scratch'] else ''})"),
        ("data", f"{s['train_examples']:,} training / {s['val_examples']:,} validation examples"
                 + (f", {len(labels)} classes" if labels else "")),
        ("training", f"{s['steps']} steps ({s['epochs']} epochs) in {s['train_seconds']:.1f}s; best step {s['best_step']}"
                     + ("; stopped early" if s["early_stopped"] else "")),
        ("settings", settings),
    ]
    sections = []
    if "bleu" in s:  # sequence to sequence
        rows += [("BLEU / chrF (validation, greedy)", f"**{s['bleu']:.2f}** / {s['chrf']:.2f}")]
    elif "exact_match" in s:  # question answering
        rows += [("exact match / F1 (SQuAD, %)", f"{s['exact_match']:.2f} / **{s['f1']:.2f}**")]
    else:
        rows += [("accuracy", f"**{s['accuracy']:.4f}**"),
                 ("precision / recall / F1 (macro)", f"{s['precision_macro']:.4f} / {s['recall_macro']:.4f} / **{s['f1_macro']:.4f}**")]
        per_class = ["## Best validation metrics per class", "", "| class | precision | recall | f1 | support |",
                     "|---|---|---|---|---|"]
        per_class += [f"| {n} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
                      for n, m in s["per_class"].items()]
        confusion = ["Confusion matrix (rows: true, columns: predicted)", "", "| | " + " | ".join(labels) + " |",
                     "|---" * (len(labels) + 1) + "|"]
        confusion += [f"| **{n}** | " + " | ".join(map(str, row)) + " |" for n, row in zip(labels, s["confusion_matrix"])]
        sections += ["\n".join(per_class), "\n".join(confusion)]
    keys = [k for k in (hist[0] if hist else {}) if k not in ("step", "epoch")]
    history = ["## Validation history", "", "| step | epoch | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
               "|---|---|" + "---|" * len(keys)]
    history += [f"| {h['step']} | {h['epoch']} | " + " | ".join(f"{h[k]:.4f}" for k in keys) + " |" for h in hist]
    return write_report(run_dir, "Fine-tuning report", rows,
                        ("val_metric.png", f"validation {metric}") if has_plot else None,
                        [*sections, "\n".join(history)], name=Path(s["run_dir"]).name)


def _xy(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


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
