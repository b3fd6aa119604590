"""Int8 dynamic quantization: every linear layer, the tied output projection included, is int8;
the original model is untouched; logits stay close."""

import pytest
import torch

from budgetlm.config import BudgetError
from budgetlm.models.config import ModelConfig
from budgetlm.models.transformer import Transformer
from budgetlm.quantize import linear_count, maybe_quantize


@pytest.mark.parametrize("causal", [True, False])
def test_tied_output_projection_is_quantized_and_the_original_kept(causal):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=96, n_layer=2, n_embd=32, n_head=2, max_seq_len=16, causal=causal)
    model = Transformer(cfg).eval()
    assert model.lm_head is None  # tied
    q = maybe_quantize(model, "int8")
    fp, int8 = linear_count(q)
    assert fp == 0 and int8 == linear_count(model)[0] + 1  # every linear, plus the untied output projection
    assert model.lm_head is None and linear_count(model)[1] == 0  # the original is not changed
    idx = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        a, b = model(idx)[0], q(idx)[0]
    assert a.shape == b.shape
    assert (a - b).abs().max() < 0.1 * a.abs().max()  # int8 rounding, not a different model
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8


def test_unknown_choice_is_refused():
    with pytest.raises(BudgetError, match="--quantize"):
        maybe_quantize(Transformer(ModelConfig(vocab_size=32, n_layer=1, n_embd=32, n_head=2, max_seq_len=8)), "int4")
