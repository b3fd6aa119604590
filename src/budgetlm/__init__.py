"""budgetlm: train the best language model your hardware and time budget allow.

The Python API (`budgetlm.api`), importable from here:

    import budgetlm
    plan = budgetlm.plan(device="nvidia-rtx-3090", budget="1d")
    data = budgetlm.prepare(out="runs/data", builtin="python-docs")
    run = budgetlm.train(budgetlm.TrainConfig(data=str(data.path), out="runs/gpt", budget="10m"))
    model = budgetlm.load(run.run_dir)

Names load on first use, so `import budgetlm` stays fast and planning never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "plan": "budgetlm.api",
    "compare": "budgetlm.api",
    "prepare": "budgetlm.api",
    "train": "budgetlm.api",
    "finetune": "budgetlm.api",
    "calibrate": "budgetlm.api",
    "load": "budgetlm.api",
    "LoadedModel": "budgetlm.api",
    "TrainConfig": "budgetlm.training.job",
    "RunResult": "budgetlm.training.job",
    "PrepareConfig": "budgetlm.data.prepare",
    "Dataset": "budgetlm.data.shards",
    "Plan": "budgetlm.planning",
    "PlanConfig": "budgetlm.planning",
    "FinetuneConfig": "budgetlm.finetuning",
    "BudgetError": "budgetlm.config",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'budgetlm' has no attribute {name!r}")
