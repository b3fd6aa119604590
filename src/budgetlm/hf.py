"""Hugging Face interop that budgetlm's own code paths need: fine-tuned `transformers` classifiers and
question answerers behind budgetlm's forward contract, and their checkpoint kinds. `transformers` is imported lazily, so
budgetlm works without it until an HF model is used."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from budgetlm.config import BudgetError


FP32_SDPA = "budgetlm_sdpa_fp32"  # the name transformers' AttentionInterface knows it by


def _sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, computed in fp32 inside a bf16/fp16 autocast."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    with torch.autocast(query.device.type, enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


class _HFWrapper(nn.Module):
    def set_fp32_attention(self, on: bool) -> None:
        """Attention in fp32 under autocast where runtime.prepare_training measured it faster (as budgetlm's
        own Attention does). Only models on SDPA switch; the choice is not saved with the model."""
        current = self.hf.config._attn_implementation
        if on and current == "sdpa":
            require_transformers().AttentionInterface.register(FP32_SDPA, _sdpa_fp32)
            self.hf.set_attn_implementation(FP32_SDPA)
        elif not on and current == FP32_SDPA:
            self.hf.set_attn_implementation("sdpa")


class HFClassifier(_HFWrapper):
    """An `AutoModelForSequenceClassification` behind budgetlm's `logits, loss = model(idx, ...)`."""

    auto_class = "AutoModelForSequenceClassification"  # what loads its export

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        self.num_labels = hf_model.config.num_labels

    def forward(self, idx, labels=None, attention_mask=None, token_type_ids=None):
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.hf(input_ids=idx, attention_mask=attention_mask, labels=labels, **kwargs)
        return out.logits, out.loss


class HFQuestionAnswerer(_HFWrapper):
    """An `AutoModelForQuestionAnswering` (e.g. BERT's) behind budgetlm's span contract:
    `(start_logits, end_logits), loss = model(idx, attention_mask, start_positions, end_positions)`."""

    auto_class = "AutoModelForQuestionAnswering"  # what loads its export

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model

    def forward(self, idx, attention_mask=None, start_positions=None, end_positions=None, token_type_ids=None):
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.hf(input_ids=idx, attention_mask=attention_mask, start_positions=start_positions,
                      end_positions=end_positions, **kwargs)
        return (out.start_logits, out.end_logits), out.loss


# config fields that hold a dropout probability in transformers' encoder configs: BERT and RoBERTa
# (hidden_/attention_probs_, classifier_), DistilBERT (dropout, attention_, and its heads' seq_classif_
# and qa_dropout), ModernBERT (embedding_, mlp_, attention_, classifier_dropout)
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
                  "attention_dropout", "embedding_dropout", "mlp_dropout", "seq_classif_dropout", "qa_dropout")


def dropout_overrides(config: Any, p: float) -> dict[str, float]:
    """{field: p} for every dropout field `config` (a transformers config) has: `--dropout` for HF models."""
    return {name: p for name in DROPOUT_FIELDS if hasattr(config, name)}


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise BudgetError("this needs Hugging Face transformers: pip install 'budgetlm[hf]'") from None
    return transformers


def build_hf_classifier(model_config: dict[str, Any], head: dict[str, Any]) -> nn.Module:
    transformers = require_transformers()
    config = transformers.AutoConfig.for_model(**model_config)
    return HFClassifier(transformers.AutoModelForSequenceClassification.from_config(config))


def build_hf_qa(model_config: dict[str, Any], head: dict[str, Any]) -> nn.Module:
    transformers = require_transformers()
    config = transformers.AutoConfig.for_model(**model_config)
    return HFQuestionAnswerer(transformers.AutoModelForQuestionAnswering.from_config(config))


MODEL_KINDS: dict[str, Callable[[dict[str, Any], dict[str, Any]], nn.Module]] = {
    "hf-classifier": build_hf_classifier,
    "hf-qa": build_hf_qa,
}
