"""`budgetlm prune --model RUN --out DIR [--sparsity 0.25]`: a smaller dense model with fewer attention
heads and MLP channels (see `budgetlm.prune`), optionally trained on for `--recover-budget`."""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import ui
from budgetlm.config import add_dataclass_args, from_args
from budgetlm.prune import PruneConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, PruneConfig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm import api

    result = api.prune(from_args(PruneConfig, args))
    how = result.method + (f", importance from {result.importance}" if result.method == "structured" else "")
    ui.info(f"pruned {result.kind} model ({how}): {result.params_before:,} -> {result.params_after:,} "
            f"parameters ({result.params_after / max(result.params_before, 1):.0%})")
    ui.info(result.note)
    if result.recovered:
        r = result.recovered
        ui.info(f"recovered: {r['steps']} steps, {r['tokens']:,} tokens in {r['elapsed_s']:.0f}s"
                + (f", val loss {r['val_loss']:.4f}" if r.get("val_loss") is not None else ""))
    ui.info(f"next: budgetlm eval --model {result.run_dir} ...   (every command loads it)")
    return result.to_json()
