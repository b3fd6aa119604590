"""Model code: shapes, losses, sparse prediction, padding, KV cache, presets, parameter counts,
the classifier head, and logits parity with transformers' Llama / ModernBERT.

Run: .venv/bin/python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from budgetlm.models.config import ModelConfig
from budgetlm.models.heads import ALLOWED_POOLING, POOLINGS, SequenceClassifier
from budgetlm.models.presets import PRESETS, depth_of, model_config, num_params
from budgetlm.planning import flops_per_token
from budgetlm.models.transformer import ACTIVATIONS, FAMILIES, NORMS, Dropout, Transformer, apply_rope, family

V = 97


def tiny(causal: bool = True, **kw) -> ModelConfig:
    base = dict(vocab_size=V, n_layer=2, n_embd=32, n_head=2, max_seq_len=32, causal=causal)
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# -- registries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", sorted(FAMILIES))
def test_every_family_builds_and_trains(causal):
    m = Transformer(tiny(causal))
    idx = torch.randint(0, V, (2, 8))
    targets = torch.randint(0, V, (2, 8))
    if not causal:
        targets[:, ::2] = -100
    logits, loss = m(idx, targets)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    # Untrained: loss near ln(V) (init std 0.02 keeps logits small).
    assert abs(loss.item() - math.log(V)) < 0.5


@pytest.mark.parametrize("name", sorted(NORMS))
def test_norms_normalise(name):
    norm = NORMS[name](16, 1e-5)
    y = norm(torch.randn(4, 16) * 7 + 3)
    if name == "rms":
        assert torch.allclose(y.pow(2).mean(-1), torch.ones(4), atol=1e-3)
    else:
        assert torch.allclose(y.mean(-1), torch.zeros(4), atol=1e-5)
        assert torch.allclose(y.var(-1, unbiased=False), torch.ones(4), atol=1e-3)
    assert not any(n.endswith("bias") for n, _ in norm.named_parameters())


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_match_reference(name):
    x = torch.linspace(-4, 4, 101)
    ref = {"silu": x * torch.sigmoid(x), "gelu": 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))}[name]
    assert torch.allclose(ACTIVATIONS[name](x), ref, atol=1e-6)


def test_family_layout_differences():
    llama, bert = Transformer(tiny(True)), Transformer(tiny(False))
    assert llama.embed_norm is None and llama.head is None
    assert isinstance(llama.blocks[0].attn_norm, torch.nn.RMSNorm)
    assert isinstance(bert.embed_norm, torch.nn.LayerNorm) and bert.head is not None
    assert isinstance(bert.blocks[0].attn_norm, torch.nn.Identity)
    assert isinstance(bert.blocks[1].attn_norm, torch.nn.LayerNorm)
    assert not any("bias" in n for n, _ in llama.named_parameters())
    assert not any("bias" in n for n, _ in bert.named_parameters())


# -- forward contract ------------------------------------------------------------------------------


def test_causal_loss_is_mean_ce_with_ignore_index():
    m = Transformer(tiny(True)).eval()
    idx = torch.randint(0, V, (2, 10))
    targets = torch.randint(0, V, (2, 10))
    targets[0, :4] = -100
    logits, loss = m(idx, targets)
    assert logits.shape == (2, 10, V)
    keep = targets != -100
    ref = F.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(loss, ref, atol=1e-6)


def test_causal_model_does_not_see_the_future():
    m = Transformer(tiny(True)).eval()
    a = torch.randint(0, V, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % V
    la, _ = m(a)
    lb, _ = m(b)
    assert torch.allclose(la[0, :8], lb[0, :8], atol=1e-6)
    assert not torch.allclose(la[0, 8:], lb[0, 8:], atol=1e-4)


def test_masked_sparse_prediction_equals_dense_at_masked_positions():
    m = Transformer(tiny(False)).eval()
    idx = torch.randint(0, V, (2, 12))
    targets = torch.full((2, 12), -100)
    pos = torch.tensor([[0, 3], [1, 7], [1, 11]])  # (N, 2): (batch, time)
    targets[pos[:, 0], pos[:, 1]] = torch.tensor([5, 6, 7])
    sparse, loss = m(idx, targets)
    dense, none = m(idx)
    assert none is None and dense.shape == (2, 12, V)
    assert sparse.shape == (3, V)  # only the masked positions reach the output projection
    assert torch.allclose(sparse, dense[pos[:, 0], pos[:, 1]], atol=1e-5)
    assert torch.allclose(loss, F.cross_entropy(sparse, torch.tensor([5, 6, 7])), atol=1e-6)


def test_masked_with_nothing_masked_gives_zero_loss_with_graph():
    m = Transformer(tiny(False))
    logits, loss = m(torch.randint(0, V, (1, 6)), torch.full((1, 6), -100))
    assert logits.shape == (0, V) and loss.item() == 0.0
    loss.backward()


def test_masked_model_is_bidirectional():
    m = Transformer(tiny(False)).eval()
    a = torch.randint(0, V, (1, 10))
    b = a.clone()
    b[0, 9] = (b[0, 9] + 1) % V
    assert not torch.allclose(m(a)[0][0, 0], m(b)[0][0, 0], atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_right_padding_does_not_change_real_positions(causal):
    m = Transformer(tiny(causal)).eval()
    short = torch.randint(0, V, (1, 7))
    padded = torch.cat([short, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    ref = m.encode(short)
    got = m.encode(padded, attention_mask=mask)
    assert torch.isfinite(got).all()
    assert torch.allclose(got[:, :7], ref, atol=1e-5)


def test_left_padding_stays_finite():
    m = Transformer(tiny(True)).eval()
    mask = torch.tensor([[0, 0, 0, 1, 1, 1]])
    h = m.encode(torch.randint(0, V, (1, 6)), attention_mask=mask)
    assert torch.isfinite(h).all()


def test_encode_is_final_normed_hidden_state():
    cfg = tiny(True)
    m = Transformer(cfg).eval()
    h = m.encode(torch.randint(0, V, (3, 5)))
    assert h.shape == (3, 5, cfg.n_embd)
    # RMSNorm with unit scale at init: unit root-mean-square (eps=1e-5 against tiny activations
    # of a 0.02-std init costs a few percent).
    assert torch.allclose(h.pow(2).mean(-1), torch.ones(3, 5), atol=0.05)


def test_tied_embeddings_share_one_tensor_and_untied_do_not():
    tied, untied = Transformer(tiny(True)), Transformer(tiny(True, tie_embeddings=False))
    assert tied.output_weight is tied.embed.weight and "lm_head.weight" not in tied.state_dict()
    assert untied.output_weight is not untied.embed.weight


def test_init_scales_residual_projections():
    cfg = tiny(True, n_embd=128, n_head=2, n_layer=8)
    m = Transformer(cfg)
    assert abs(m.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    out_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert abs(m.blocks[0].attn.proj.weight.std().item() - out_std) < 0.1 * out_std
    assert abs(m.blocks[0].mlp.w_out.weight.std().item() - out_std) < 0.1 * out_std


def test_rope_rotates_pairs_and_preserves_norm():
    x = torch.randn(1, 3, 2, 8)
    cos, sin = torch.ones(3, 4), torch.zeros(3, 4)
    assert torch.equal(apply_rope(x, cos, sin), x)  # angle 0 = identity
    ang = torch.rand(3, 4)
    y = apply_rope(x, ang.cos(), ang.sin())
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_positions_beyond_max_seq_len_still_work():
    m = Transformer(tiny(True, max_seq_len=8)).eval()
    logits, _ = m(torch.randint(0, V, (1, 12)))
    assert logits.shape == (1, 12, V) and torch.isfinite(logits).all()


# -- KV cache ----------------------------------------------------------------------------------------


def test_kv_cache_matches_full_forward():
    m = Transformer(tiny(True)).eval()
    idx = torch.randint(0, V, (2, 14))
    full, _ = m(idx)
    cache = m.new_kv_cache(batch_size=2)
    steps = [m.step(idx[:, :5], cache)]  # prefill
    steps.append(m.step(idx[:, 5:9], cache))  # a chunk after a filled cache (explicit mask)
    steps += [m.step(idx[:, t : t + 1], cache) for t in range(9, 14)]  # single-token decode
    assert cache.pos == 14
    got = torch.stack(steps, dim=1)  # (B, 7, V)
    want = full[:, [4, 8, 9, 10, 11, 12, 13]]
    assert torch.allclose(got, want, atol=1e-5)


def test_kv_cache_refuses_masked_models_and_overflow():
    with pytest.raises(ValueError):
        Transformer(tiny(False)).new_kv_cache()
    m = Transformer(tiny(True)).eval()
    cache = m.new_kv_cache(max_len=4)
    with pytest.raises(ValueError, match="full"):
        m.step(torch.randint(0, V, (1, 5)), cache)


# -- presets and counting ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_derives_from_its_depth(name):
    cfg = model_config(name, vocab_size=1000)
    d = PRESETS[name]
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim) == (d, 64 * d, d, 64)
    assert cfg == model_config(d, vocab_size=1000) == model_config(str(d), vocab_size=1000)


def test_model_config_overrides_and_errors():
    cfg = model_config("mini", 500, causal=False, max_seq_len=128, n_head=2, intermediate_size=96)
    assert (cfg.causal, cfg.max_seq_len, cfg.n_head, cfg.ffn_dim) == (False, 128, 2, 96)
    assert depth_of(" 3 ") == 3
    for bad in ("huge", "0", 0, "-1"):
        with pytest.raises(ValueError):
            model_config(bad, 100)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("size", ["tiny", 3, "custom"])
def test_num_params_is_exact(causal, tie, size):
    if size == "custom":
        cfg = tiny(causal, tie_embeddings=tie, intermediate_size=48, n_layer=3)
    else:
        cfg = model_config(size, 300, causal=causal, max_seq_len=16, tie_embeddings=tie)
    m = Transformer(cfg)
    assert num_params(cfg) == sum(p.numel() for p in m.parameters())
    emb = sum(p.numel() for n, p in m.named_parameters() if n in ("embed.weight", "lm_head.weight"))
    assert num_params(cfg, embeddings=False) == num_params(cfg) - emb


def test_benchmark_model_size():
    """The issue's throughput benchmark model: width 256, 6 layers, MLP 704, vocab 8192 = 6.9M."""
    cfg = ModelConfig(vocab_size=8192, n_layer=6, n_embd=256, n_head=8, max_seq_len=512)
    assert cfg.ffn_dim == 704
    assert round(num_params(cfg) / 1e6, 1) == 6.9
    n = num_params(cfg) + 0  # flops: 6N (tied projection counted as a matmul) + attention
    assert flops_per_token(cfg, 512) == 6 * (n - 2 * 6 * 256 - 256) + 12 * 6 * 256 * 512


# -- classifier -------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal,pooling", [(c, p) for c in (True, False) for p in ALLOWED_POOLING[c]])
def test_classifier_poolings(causal, pooling):
    clf = SequenceClassifier(tiny(causal), num_labels=3, pooling=pooling).eval()
    idx = torch.randint(1, V, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    logits, loss = clf(idx, labels=torch.tensor([0, 2]), attention_mask=mask)
    assert logits.shape == (2, 3) and loss.item() > 0
    # Padding must not matter: row 1 alone, unpadded, gives the same logits.
    alone, _ = clf(idx[1:, :6])
    assert torch.allclose(logits[1], alone[0], atol=1e-5)
    loss.backward()
    head = clf.score if causal else clf.classifier
    assert head.weight.grad is not None


def test_pooling_registry_entries():
    h = torch.arange(24.0).view(1, 4, 6)
    mask = torch.tensor([[1, 1, 1, 0]])
    assert torch.equal(POOLINGS["last"](h, mask), h[:, 2])
    assert torch.equal(POOLINGS["cls"](h, mask), h[:, 0])
    assert torch.allclose(POOLINGS["mean"](h, mask), h[:, :3].mean(1))
    assert torch.equal(POOLINGS["last"](h, None), h[:, 3])


def test_classifier_rejects_wrong_pooling_and_label_count():
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(tiny(True), 2, pooling="mean")
    with pytest.raises(ValueError):
        SequenceClassifier(tiny(False), 0)


@pytest.mark.parametrize("causal", [True, False])
def test_classifier_from_lm_copies_backbone(causal):
    lm = Transformer(tiny(causal)).eval()
    clf = SequenceClassifier.from_lm(lm, num_labels=2, dropout=0.1).eval()
    idx = torch.randint(0, V, (1, 6))
    assert torch.allclose(clf.backbone.encode(idx), lm.encode(idx), atol=1e-6)
    assert clf.dropout == 0.1 and clf.cfg.dropout == 0.1
    if not causal:
        assert torch.equal(clf.head.dense.weight, lm.head.dense.weight)
    assert "lm_head.weight" not in clf.state_dict()
    assert family(clf.cfg) is family(lm.cfg)


# -- parity with transformers ---------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_transformers(causal, tie):
    pytest.importorskip("transformers")
    from budgetlm.export import logits_pair, to_hf

    m = Transformer(tiny(causal, tie_embeddings=tie)).eval()
    hf = to_hf(m, {"pad_token_id": 0})
    assert type(hf).__name__ == family(m.cfg).hf_architecture
    idx = torch.randint(1, V, (2, 11))
    mask = torch.ones_like(idx)
    mask[1, 7:] = 0
    idx[1, 7:] = 0
    ours, theirs = logits_pair(m, hf, idx)
    assert (ours - theirs).abs().max().item() < 1e-4
    ours, theirs = logits_pair(m, hf, idx, mask)
    assert (ours - theirs)[mask.bool()].abs().max().item() < 1e-4


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_dropout_keeps_a_fraction_and_backward_uses_the_same_mask(compiled):
    """p is rounded to 51/256 on CPU; kept values are scaled by 256/205 and the gradient flows through
    exactly the kept positions (compiled: the random op must not be re-drawn for backward)."""
    drop = Dropout(0.2).train()
    fn = torch.compile(drop) if compiled else drop
    x = torch.randn(64, 64, 64, requires_grad=True)
    y = fn(x)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(205 / 256, abs=0.005)
    torch.testing.assert_close(y[kept], x[kept] * 256 / 205)
    torch.testing.assert_close(x.grad, kept.float() * 256 / 205)
    assert torch.equal(drop.eval()(x), x)


def test_dropout_masks_follow_the_seed_and_odd_p_falls_back_to_torch():
    drop = Dropout(0.5).train()
    x = torch.ones(1001)  # not a multiple of 4 random bytes
    torch.manual_seed(1)
    a = drop(x)
    torch.manual_seed(1)
    assert torch.equal(a, drop(x)) and not torch.equal(a, drop(x))
    assert set(a.unique().tolist()) == {0.0, 2.0}
    drop.p = 0.001  # rounds to 0/256: torch's own dropout, not none
    torch.manual_seed(0)
    assert (drop(torch.ones(100_000)) == 0).sum().item() > 0


@pytest.mark.parametrize("causal", sorted(FAMILIES))
def test_activation_checkpointing_recomputes_the_same_dropout(causal):
    """Recomputed blocks must draw the same dropout masks as the forward pass did."""
    model = Transformer(tiny(causal, dropout=0.3)).train()
    idx = torch.randint(0, V, (2, 16))
    targets = idx.clone() if causal else torch.where(torch.rand(2, 16) < 0.5, idx, torch.full_like(idx, -100))

    def grads(flag):
        model.zero_grad()
        model.activation_checkpointing = flag
        torch.manual_seed(7)
        model(idx, targets)[1].backward()
        return [p.grad.clone() for p in model.parameters()]

    for g0, g1 in zip(grads(False), grads(True)):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_activation_checkpointing_same_gradients_fewer_saved_bytes(causal):
    """Recomputing blocks in backward gives the same loss and gradients, and saves less for backward."""
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import Transformer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=2, max_seq_len=16, causal=causal)
    model = Transformer(cfg)
    idx = torch.randint(0, 64, (2, 16))
    targets = idx.clone() if causal else torch.where(torch.rand(2, 16) < 0.3, idx, torch.full_like(idx, -100))
    targets[0, 0] = idx[0, 0]  # at least one target for the masked case

    def run(flag):
        model.zero_grad()
        model.activation_checkpointing = flag
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            _, loss = model(idx, targets)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()], sum(saved)

    loss0, grads0, saved0 = run(False)
    loss1, grads1, saved1 = run(True)
    assert loss0 == pytest.approx(loss1, abs=1e-6)
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-6)
    assert saved1 < saved0


@pytest.mark.parametrize("causal", sorted(FAMILIES))
def test_fp32_attention_under_bf16_autocast(causal, monkeypatch):
    """Attention.fp32 (the runtime's choice on CPUs where it is faster) computes SDPA in fp32 inside
    bf16 autocast, with the same loss and gradients as bf16 attention up to bf16 rounding."""
    model = Transformer(tiny(causal))
    idx = torch.randint(0, V, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0  # a padded row: the masked SDPA path fine-tuning takes
    targets = idx.clone() if causal else torch.where(torch.rand(2, 16) < 0.3, idx, torch.full_like(idx, -100))
    targets[0, 1] = idx[0, 1]
    seen, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: seen.append(q.dtype) or real(q, *a, **k))

    def run(fp32):
        for block in model.blocks:
            block.attn.set_fp32_attention(fp32)
        model.zero_grad()
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(idx, targets, attention_mask=mask)
        loss.backward()
        return list(seen), loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    dtypes16, loss16, grad16 = run(False)
    dtypes32, loss32, grad32 = run(True)
    assert dtypes16 == [torch.bfloat16] * 2 and dtypes32 == [torch.float32] * 2
    assert abs(loss32 - loss16) < 0.02 and torch.isfinite(grad32).all()
    assert F.cosine_similarity(grad32, grad16, dim=0) > 0.99
