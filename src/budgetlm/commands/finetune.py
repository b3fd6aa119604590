"""`budgetlm finetune --model RUN --train FILE [--val FILE] --out RUN2`: fine-tune a classifier, or with
`--task qa` an extractive question answerer (SQuAD-format files)."""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import ui
from budgetlm.config import add_dataclass_args, from_args
from budgetlm.finetuning import FinetuneConfig


NEXT = {  # what to run after a task, by the metric it chose its checkpoint with
    "f1": 'next: budgetlm answer --model {out} --question "..." --context "..."   or   budgetlm serve --model {out}',
    "bleu": 'next: budgetlm eval --model {out} --text test.src test.tgt --beams 4   or   '
            'budgetlm generate --model {out} --prompt "..."',
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, FinetuneConfig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm import api
    from budgetlm.metrics import metrics_table_rows

    result = api.finetune(from_args(FinetuneConfig, args))
    out = result.run_dir
    if result.metric in NEXT:  # question answering, sequence to sequence
        m = result.metrics
        ui.info(f"{'BLEU ' + format(m['bleu'], '.2f') + '  chrF ' + format(m['chrf'], '.2f') if 'bleu' in m else ''}"
                f"exact match {m['exact_match']:.2f}  F1 {m['f1']:.2f} (best validation, step {result.best_step}; "
                f"{result.steps} steps, {result.train_seconds:.0f}s); report: {out}/report.md")
        ui.info(NEXT[result.metric].format(out=out))
        return result.to_json()
    ui.table(f"best validation (step {result.best_step})", ["class", "precision", "recall", "f1", "support"],
             metrics_table_rows(result.metrics))
    ui.info(f"accuracy {result.metrics['accuracy']:.4f}  f1_macro {result.metrics['f1_macro']:.4f}  "
            f"({result.steps} steps, {result.epochs} epochs, {result.train_seconds:.0f}s"
            + (", stopped early" if result.early_stopped else "") + f"); report: {out}/report.md")
    ui.info(f"next: budgetlm classify --model {out} --text \"...\"   or   budgetlm serve --model {out}")
    return result.to_json()
