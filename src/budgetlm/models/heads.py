"""Sequence classification and extractive question answering on top of the backbone; imports only torch.

The head copies the layout of the `transformers` class for the backbone's family, so a fine-tuned
classifier exports with exact logits:

- causal backbone -> `LlamaForSequenceClassification`: the hidden state of the last real token
  (a causal model has seen the whole text only there) through `score`, a linear without bias.
- masked backbone -> `ModernBertForSequenceClassification`: pool the first token ("cls") or the
  mean over real tokens ("mean"), then dense + GELU + norm (`head`), dropout, and `classifier`, a
  linear with bias.

    logits, loss = clf(idx, labels=None, attention_mask=None)   # logits (B, num_labels)

`SpanExtractor` (question answering) scores every token as the start and the end of the answer,
laid out as `ModernBertForQuestionAnswering`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from budgetlm.models.config import ModelConfig
from budgetlm.models.transformer import Dropout, PredictionHead, Transformer


def _pool_last(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Hidden state of the rightmost real token (works for left and right padding)."""
    if mask is None:
        return h[:, -1]
    T = h.shape[1]
    pos = (torch.arange(T, device=h.device) * mask.to(torch.long)).argmax(-1)  # (B,)
    return h[torch.arange(h.shape[0], device=h.device), pos]


def _pool_cls(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return h[:, 0]


def _pool_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return h.mean(dim=1)
    m = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(dim=1) / m.sum(dim=1)


POOLINGS = {"last": _pool_last, "cls": _pool_cls, "mean": _pool_mean}
DEFAULT_POOLING = {True: "last", False: "cls"}  # what the matching transformers class does
ALLOWED_POOLING = {True: ("last",), False: ("cls", "mean")}


class SequenceClassifier(nn.Module):
    def __init__(self, backbone_cfg: ModelConfig, num_labels: int, pooling: str | None = None,
                 dropout: float | None = None):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}")
        causal = bool(backbone_cfg.causal)
        pooling = pooling or DEFAULT_POOLING[causal]
        if pooling not in ALLOWED_POOLING[causal]:
            kind = "causal" if causal else "masked"
            raise ValueError(f"pooling {pooling!r} is not available for a {kind} backbone "
                             f"(choose from {', '.join(ALLOWED_POOLING[causal])})")
        self.cfg, self.num_labels, self.pooling = backbone_cfg, num_labels, pooling
        self.dropout = backbone_cfg.dropout if dropout is None else dropout
        self.backbone = Transformer(backbone_cfg, lm_head=False)
        C = backbone_cfg.n_embd
        if causal:
            self.score = nn.Linear(C, num_labels, bias=False)
            nn.init.normal_(self.score.weight, std=0.02)
        else:
            self.head = PredictionHead(backbone_cfg)
            self.drop = Dropout(self.dropout)
            self.classifier = nn.Linear(C, num_labels, bias=True)
            nn.init.normal_(self.head.dense.weight, std=0.02)
            # ModernBERT initialises the classifier with std = hidden_size^-0.5.
            nn.init.normal_(self.classifier.weight, std=C**-0.5)
            nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_lm(cls, lm: Transformer, num_labels: int, pooling: str | None = None,
                dropout: float | None = None) -> "SequenceClassifier":
        """A classifier whose backbone (and, for masked models, `head`) start from a pre-trained LM.

        Reusing the MLM prediction head matches what `transformers` does when it loads a
        ModernBertForMaskedLM checkpoint into ModernBertForSequenceClassification."""
        cfg = lm.cfg if dropout is None else replace(lm.cfg, dropout=dropout)
        clf = cls(cfg, num_labels, pooling=pooling, dropout=dropout)
        state = {k: v for k, v in lm.state_dict().items() if not k.startswith(("head.", "lm_head."))}
        clf.backbone.load_state_dict(state)
        if lm.head is not None:
            clf.head.load_state_dict(lm.head.state_dict())
        return clf.to(lm.embed.weight.device)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None):
        h = self.backbone.encode(idx, attention_mask)  # (B, T, C)
        pooled = POOLINGS[self.pooling](h, attention_mask)  # (B, C)
        if self.cfg.causal:
            logits = self.score(pooled)  # (B, num_labels)
        else:
            logits = self.classifier(self.drop(self.head(pooled)))
        loss = None
        if labels is not None:
            if self.num_labels == 1:  # regression, as transformers does for one label
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return logits, loss


class SpanExtractor(nn.Module):
    """Extractive question answering on a masked backbone, laid out as transformers'
    `ModernBertForQuestionAnswering`: every token's hidden state through `head` (dense + GELU + norm),
    dropout and `classifier`, a linear to two logits: where the answer starts and where it ends.

        (start_logits, end_logits), loss = qa(idx, attention_mask, start_positions, end_positions)

    start/end logits are (B, T); the loss is the mean of the two cross-entropies (BERT's SQuAD loss,
    Devlin et al. 2019), positions clamped to the sequence as transformers does."""

    def __init__(self, backbone_cfg: ModelConfig, dropout: float | None = None):
        super().__init__()
        if backbone_cfg.causal:
            raise ValueError("question answering needs a masked (bidirectional) backbone: a causal model "
                             "sees only the text before each token")
        self.cfg = backbone_cfg
        self.dropout = backbone_cfg.dropout if dropout is None else dropout
        self.backbone = Transformer(backbone_cfg, lm_head=False)
        C = backbone_cfg.n_embd
        self.head = PredictionHead(backbone_cfg)
        self.drop = Dropout(self.dropout)
        self.classifier = nn.Linear(C, 2, bias=True)
        nn.init.normal_(self.head.dense.weight, std=0.02)
        nn.init.normal_(self.classifier.weight, std=C**-0.5)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_lm(cls, lm: Transformer, dropout: float | None = None) -> "SpanExtractor":
        """Backbone and `head` from a pre-trained masked LM (as transformers loads a
        ModernBertForMaskedLM checkpoint into ModernBertForQuestionAnswering)."""
        cfg = lm.cfg if dropout is None else replace(lm.cfg, dropout=dropout)
        qa = cls(cfg, dropout=dropout)
        qa.backbone.load_state_dict({k: v for k, v in lm.state_dict().items() if not k.startswith(("head.", "lm_head."))})
        if lm.head is not None:
            qa.head.load_state_dict(lm.head.state_dict())
        return qa.to(lm.embed.weight.device)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None):
        h = self.backbone.encode(idx, attention_mask)  # (B, T, C)
        logits = self.classifier(self.drop(self.head(h)))  # (B, T, 2)
        start, end = logits[..., 0], logits[..., 1]  # (B, T) each; spans are limited to the context later
        loss = None
        if start_positions is not None and end_positions is not None:
            T = idx.shape[1]
            loss = 0.5 * (F.cross_entropy(start.float(), start_positions.clamp(0, T - 1))
                          + F.cross_entropy(end.float(), end_positions.clamp(0, T - 1)))
        return (start, end), loss
