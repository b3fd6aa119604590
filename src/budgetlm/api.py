"""The Python API: what every `budgetlm` command calls, and what a script or notebook calls.

    import budgetlm

    plan = budgetlm.plan(device="nvidia-rtx-3090", budget="1d")      # a Plan
    data = budgetlm.prepare(out="runs/data", builtin="python-docs")   # a Dataset
    run = budgetlm.train(budgetlm.TrainConfig(data=data.path, out="runs/gpt", budget="10m"))
    model = budgetlm.load(run.run_dir)                                 # model + tokenizer
    model.generate("def ")

Functions here take a config dataclass (or keyword arguments building one), do the work through the
library modules and return typed results; they never print tables (commands do).
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------------
# plan

# --------------------------------------------------------------------------------------------------
# prepare

# --------------------------------------------------------------------------------------------------
# train

# --------------------------------------------------------------------------------------------------
# finetune

# --------------------------------------------------------------------------------------------------
# load: a trained run as a model with its tokenizer
