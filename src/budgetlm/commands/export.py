"""`budgetlm export --model RUN --out DIR [--format hf]`: a folder other tools load (see `budgetlm.export`)."""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import ui
from budgetlm.config import add_dataclass_args, from_args
from budgetlm.export import ExportConfig, export_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, ExportConfig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = from_args(ExportConfig, args)
    result = export_run(cfg)
    diff = result["max_abs_logit_diff"]
    check = f"; transformers reproduces its logits (max diff {diff:.1e})" if diff is not None else ""
    ui.info(f"exported {result['architecture']} to {result['out']}{check}")
    ui.info(f"load it with transformers.{result['auto_class']}.from_pretrained({result['out']!r})")
    return result
