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

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from budgetlm.config import BudgetError

if TYPE_CHECKING:  # the heavy modules load when a function needs them, so `plan` stays torch-free
    from budgetlm.data.prepare import PrepareConfig
    from budgetlm.data.shards import Dataset
    from budgetlm.train.checkpoint import CheckpointMeta
    from budgetlm.train.pretrain import RunResult, TrainConfig

# --------------------------------------------------------------------------------------------------
# plan

# --------------------------------------------------------------------------------------------------
# prepare


def prepare(inputs: list[str] | tuple[str, ...] = (), out: str = "", config: PrepareConfig | None = None,
            val_inputs: list[str] | None = None, **settings: Any) -> Dataset:
    """Clean, tokenize and pack raw text into a dataset folder at `out` (see `data.prepare`).
    `settings` are PrepareConfig fields, e.g. `prepare(out="runs/data", builtin="python-docs")`."""
    from budgetlm.data.prepare import PrepareConfig, prepare_dataset
    from budgetlm.data.shards import Dataset

    cfg = dataclasses.replace(config or PrepareConfig(), **settings)
    summary = prepare_dataset(list(inputs), out, cfg, val_inputs)
    return dataclasses.replace(Dataset.open(summary["out"]), summary=summary)

# --------------------------------------------------------------------------------------------------
# train


def train(config: TrainConfig | None = None, given: dict[str, Any] | None = None, **settings: Any) -> RunResult:
    """Pre-train a causal or masked model under a budget; see `train.pretrain`.
    `budgetlm.train(TrainConfig(data=..., out=..., budget="10m"))` or `budgetlm.train(data=..., ...)`.
    `given`: the settings the user gave explicitly (a resumed run keeps its saved config otherwise)."""
    from budgetlm.train.pretrain import TrainConfig, train as run_training

    cfg = dataclasses.replace(config or TrainConfig(), **settings)
    return run_training(cfg, given)


def calibrate(config=None, **settings: Any) -> dict[str, Any]:
    """Measure training steps on this device and update the calibration file (`budgetlm bench`)."""
    from budgetlm.train.calibrate import CalibrationConfig, calibrate as measure

    return measure(dataclasses.replace(config or CalibrationConfig(), **settings))

# --------------------------------------------------------------------------------------------------
# finetune

# --------------------------------------------------------------------------------------------------
# load: a trained run as a model with its tokenizer


@dataclass
class LoadedModel:
    """A trained or fine-tuned run, ready to use: `generate`, `evaluate`, `classify`."""

    model: Any  # the torch module, in eval mode
    meta: CheckpointMeta  # what the checkpoint says about itself
    tokenizer: Any  # a `tokenizers.Tokenizer` (None for wrapped Hugging Face classifiers)
    device: str  # where the model lives

    @property
    def kind(self) -> str:
        """causal | masked | classifier"""
        if self.meta.is_classifier:
            return "classifier"
        return "causal" if self.meta.causal else "masked"

    def generate(self, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 200,
                 top_p: float = 1.0, seed: int | None = None) -> str:
        """The prompt's continuation (text only, without the prompt)."""
        from budgetlm.generate import complete

        if self.kind != "causal":
            raise BudgetError(f"{self.meta.run_dir} holds a {self.kind} model: generation needs a causal model")
        return complete(self.model, self.tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed).text

    def evaluate(self, data: str | None = None, texts: list[str] | None = None, split: str = "val",
                 batch_size: int = 8, max_tokens: int = 0) -> dict[str, Any]:
        """Loss, perplexity and bits per byte (causal) or masked accuracy, on a prepared dataset's
        split (`data`) or on text files (`texts`)."""
        from budgetlm.evaluate import evaluate_run

        return evaluate_run(self.model, self.meta, self.tokenizer, self.device, data, texts, split,
                            batch_size, max_tokens)

    def classify(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64) -> list[dict[str, Any]]:
        """[{"label": ..., "probs": {label: p}}] for each text (fine-tuned classifiers)."""
        from budgetlm.classify import load_classifier

        if self.kind != "classifier":
            raise BudgetError(f"{self.meta.run_dir} is a {self.kind} language model, not a fine-tuned classifier")
        clf = load_classifier(self.meta.run_dir, device=self.device)
        probs = clf.predict(texts, pairs, batch_size)
        return [{"label": clf.labels[int(row.argmax())], "probs": dict(zip(clf.labels, map(float, row)))}
                for row in probs]


def load(run: str | Path, device: str = "cpu", which: str = "latest") -> LoadedModel:
    """A run folder (or one of its checkpoints) as a model with its tokenizer."""
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.runtime import detect_device_type
    from budgetlm.train.checkpoint import load_model

    dev = detect_device_type(device)
    model, meta = load_model(run, device=dev, which=which)
    tok = load_tokenizer(meta.tokenizer_path) if meta.tokenizer_path else None
    return LoadedModel(model, meta, tok, dev)
