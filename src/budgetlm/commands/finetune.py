"""`budgetlm finetune --model RUN --train FILE [--val FILE] --out RUN2`: fine-tune a classifier, or with
`--task qa` an extractive question answerer (SQuAD-format files)."""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import ui
from budgetlm.config import add_dataclass_args, from_args
from budgetlm.finetuning import FinetuneConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, FinetuneConfig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm import api
    from budgetlm.metrics import metrics_table_rows

    result = api.finetune(from_args(FinetuneConfig, args))
    out = result.run_dir
    if result.metric == "f1":  # question answering
        ui.info(f"exact match {result.metrics['exact_match']:.2f}  F1 {result.metrics['f1']:.2f} (best validation, step "
                f"{result.best_step}; {result.steps} steps, {result.train_seconds:.0f}s); report: {out}/report.md")
        ui.info(f"next: budgetlm answer --model {out} --question \"...\" --context \"...\"   or   budgetlm serve --model {out}")
        return result.to_json()
    ui.table(f"best validation (step {result.best_step})", ["class", "precision", "recall", "f1", "support"],
             metrics_table_rows(result.metrics))
    ui.info(f"accuracy {result.metrics['accuracy']:.4f}  f1_macro {result.metrics['f1_macro']:.4f}  "
            f"({result.steps} steps, {result.epochs} epochs, {result.train_seconds:.0f}s"
            + (", stopped early" if result.early_stopped else "") + f"); report: {out}/report.md")
    ui.info(f"next: budgetlm classify --model {out} --text \"...\"   or   budgetlm serve --model {out}")
    return result.to_json()
