"""Optimizer registry: every entry trains; parameter grouping (decay, muon) is right."""

import pytest
import torch

from budgetlm.config import BudgetError
from budgetlm.models.config import ModelConfig
from budgetlm.models.transformer import build_model
from budgetlm.training.optim import (OPTIMIZERS, Muon, OptimConfig, build_optimizer, muon_precision, orthogonalise, set_lr,
                                     split_params)
from train_helpers import one_thread  # noqa: F401


def tiny():
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=2, max_seq_len=16))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_reduces_loss_and_round_trips(name):
    m = tiny()
    opt = build_optimizer(name, m, OptimConfig(lr=3e-3))
    x = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(15):
        _, loss = m(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    sd = opt.state_dict()
    opt2 = build_optimizer(name, m, OptimConfig(lr=3e-3))
    opt2.load_state_dict(sd)
    assert set_lr(opt2, 0.5) == pytest.approx(1.5e-3)
    assert all(g["lr"] == pytest.approx(g["base_lr"] * 0.5) for g in opt2.param_groups)


def test_weight_decay_only_on_matrices():
    m = tiny()
    opt = build_optimizer("adamw", m, OptimConfig(weight_decay=0.1))
    for g in opt.param_groups:
        dims = {p.ndim for p in g["params"]}
        assert (g["weight_decay"] > 0) == (dims == {2})


def test_muon_gets_hidden_matrices_only():
    m = tiny()
    groups = split_params(m)
    names = {n for n, _ in groups["hidden"]}
    assert names and all(".attn." in n or ".mlp." in n for n in names)
    assert "embed.weight" in {n for n, _ in groups["decay"]}
    opt = build_optimizer("muon", m, OptimConfig())
    muon = opt.optimizers[0]
    assert isinstance(muon, torch.optim.Muon)
    assert {id(p) for g in muon.param_groups for p in g["params"]} == {id(p) for _, p in groups["hidden"]}


def test_unknown_optimizer():
    with pytest.raises(BudgetError, match="unknown optimizer"):
        build_optimizer("sgdx", tiny(), OptimConfig())


def _muon_pair(ns_precision: str):
    m = tiny()
    opt = build_optimizer("muon", m, OptimConfig(lr=1e-2, muon_precision=ns_precision)).optimizers[0]
    return m, opt


def _muon_steps(make):
    """The parameter change of one Muon step from the same start, for the optimizer `make(params)`."""
    m = tiny()
    params = [p for _, p in split_params(m)["hidden"]]
    opt = make(params)
    before = [p.detach().clone() for p in params]
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    m(x, x)[1].backward()
    opt.step()
    return [p.detach() - b for p, b in zip(params, before)]


def test_muon_takes_torch_muons_step_in_bf16_and_its_direction_in_fp32():
    kw = dict(lr=1e-2, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw")
    reference = _muon_steps(lambda ps: torch.optim.Muon(ps, **kw))  # one matrix at a time, bf16
    ours_bf16 = _muon_steps(lambda ps: Muon(ps, ns_dtype=torch.bfloat16, **kw))  # batched by shape
    ours_fp32 = _muon_steps(lambda ps: Muon(ps, ns_dtype=torch.float32, **kw))
    assert len(reference) == 8  # 2 layers x (qkv, proj, w_in, w_out): four stacks of two
    for r, a, b in zip(reference, ours_bf16, ours_fp32):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-7)
        # same direction and size; bf16 rounding (8 bits of mantissa) is the only difference
        assert torch.nn.functional.cosine_similarity(r.flatten(), b.flatten(), dim=0) > 0.98
        assert abs(r.norm() / b.norm() - 1) < 0.05


def test_orthogonalise_a_stack_as_each_matrix_alone():
    coefficients = torch.optim.Muon([torch.zeros(2, 2, requires_grad=True)]).defaults["ns_coefficients"]
    g = torch.randn(3, 48, 16, generator=torch.Generator().manual_seed(0))
    stack = orthogonalise(g, coefficients, 5, 1e-7, torch.float32)
    assert stack.shape == g.shape
    for k in range(3):
        alone = orthogonalise(g[k], coefficients, 5, 1e-7, torch.float32)
        torch.testing.assert_close(stack[k], alone)
        s = torch.linalg.svdvals(alone)
        assert 0.5 < s.min() and s.max() < 1.3  # Muon's iteration: singular values pushed near 1


def test_muon_state_moves_between_the_bf16_and_fp32_variants():
    x = torch.randint(0, 64, (2, 16))
    m, opt = _muon_pair("bf16")
    _, loss = m(x, x)
    loss.backward()
    opt.step()
    _, other = _muon_pair("fp32")
    other.load_state_dict(opt.state_dict())  # a checkpoint of one resumes with the other
    bufs = [other.state[p]["momentum_buffer"] for g in other.param_groups for p in g["params"]]
    assert bufs and all(b.abs().sum() > 0 for b in bufs)


def test_muon_orthogonalises_in_the_training_precision():
    assert muon_precision("bf16") == "bf16"
    assert muon_precision("fp32") == "fp32" and muon_precision("fp16") == "fp32"
