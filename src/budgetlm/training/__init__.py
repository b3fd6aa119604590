"""Training: the generic loop (`loop`), LR schedule (`schedule`), optimizers (`optim`),
checkpoints (`checkpoint`) and the `budgetlm train` command (`cli`)."""
