"""The model kinds a checkpoint can hold, and how to rebuild each from its saved shape.

`train.checkpoint` reads this registry (and `hf.MODEL_KINDS` for wrapped Hugging Face models) to
turn meta.json back into a module; weights are loaded afterwards. Builders take the saved model
config and the kind's head description (a classifier's labels and pooling) as plain dicts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn

from budgetlm.models.config import ModelConfig


def model_config_from(saved: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from a saved dict; keys this version does not know are ignored."""
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in saved.items() if k in names})


def build_lm(model_config: dict[str, Any], head: dict[str, Any]) -> nn.Module:
    from budgetlm.models.transformer import build_model

    return build_model(model_config_from(model_config))


def build_classifier(model_config: dict[str, Any], head: dict[str, Any]) -> nn.Module:
    from budgetlm.models.heads import SequenceClassifier

    return SequenceClassifier(model_config_from(model_config), len(head["labels"]), pooling=head.get("pooling"))


def build_qa(model_config: dict[str, Any], head: dict[str, Any]) -> nn.Module:
    from budgetlm.models.heads import SpanExtractor

    return SpanExtractor(model_config_from(model_config))


MODEL_KINDS: dict[str, Callable[[dict[str, Any], dict[str, Any]], nn.Module]] = {
    "lm": build_lm,
    "classifier": build_classifier,
    "qa": build_qa,
}
