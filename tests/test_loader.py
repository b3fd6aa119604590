"""Data loader: determinism, resumable position, DDP slices, masking statistics."""

import numpy as np
import pytest
import torch

from budgetlm.config import BudgetError
from budgetlm.data.loader import MaskingCollator, MaskingConfig, TokenLoader

TOKENS = np.arange(10_000, dtype=np.uint16) % 500


def test_causal_windows_are_shifted_and_deterministic():
    a = TokenLoader(TOKENS, 16, 4, seed=1)()
    b = TokenLoader(TOKENS, 16, 4, seed=1)()
    assert a["idx"].shape == (4, 16) and a["idx"].dtype == torch.int64
    assert torch.equal(a["idx"][:, 1:], a["targets"][:, :-1])
    assert torch.equal(a["idx"], b["idx"])
    assert not torch.equal(a["idx"], TokenLoader(TOKENS, 16, 4, seed=2)()["idx"])


@pytest.mark.parametrize("mode", ["random", "sequential"])
def test_state_dict_resumes_with_the_next_batch(mode):
    ld = TokenLoader(TOKENS, 16, 4, seed=0, mode=mode)
    for _ in range(3):
        ld()
    state = ld.state_dict()
    expected = [ld()["idx"] for _ in range(2)]
    ld2 = TokenLoader(TOKENS, 16, 4, seed=0, mode=mode)
    ld2.load_state_dict(state)
    assert all(torch.equal(e, ld2()["idx"]) for e in expected)


def test_sequential_pass_covers_the_data_in_order_and_wraps():
    toks = np.arange(100, dtype=np.uint16)
    ld = TokenLoader(toks, 10, 3, mode="sequential")
    starts = [int(r[0]) for _ in range(4) for r in ld()["idx"]]
    assert starts[:9] == [0, 10, 20, 30, 40, 50, 60, 70, 80]  # 9 windows of 10+1 fit in 100
    assert starts[9] == 0  # next epoch


def test_ddp_ranks_split_the_global_batch():
    full = TokenLoader(TOKENS, 16, 4, seed=5)()
    r0 = TokenLoader(TOKENS, 16, 2, seed=5, rank=0, world_size=2)()
    r1 = TokenLoader(TOKENS, 16, 2, seed=5, rank=1, world_size=2)()
    assert torch.equal(torch.cat([r0["idx"], r1["idx"]]), full["idx"])


def test_input_noise_replaces_a_fraction_of_the_inputs_with_tokens_of_the_data():
    """Targets stay the true next tokens; about `input_noise` of the inputs change, to tokens that occur
    in the data; the noise follows the seed, splits across DDP ranks and resumes like the windows."""
    toks = (np.arange(100_000) * 7 % 1000 + 1000).astype(np.uint16)  # ids 1000-1999 only
    clean, noisy = TokenLoader(toks, 64, 32, seed=3)(), TokenLoader(toks, 64, 32, seed=3, input_noise=0.2)()
    changed = clean["idx"] != noisy["idx"]  # the same windows: the noise draws after the window starts
    assert torch.equal(clean["targets"], noisy["targets"])
    assert changed.float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert noisy["idx"].min().item() >= 1000 and noisy["idx"].max().item() < 2000
    assert torch.equal(noisy["idx"], TokenLoader(toks, 64, 32, seed=3, input_noise=0.2)()["idx"])
    halves = [TokenLoader(toks, 64, 16, seed=3, input_noise=0.2, rank=r, world_size=2)()["idx"] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), noisy["idx"])
    ld = TokenLoader(toks, 64, 4, seed=0, input_noise=0.2)
    ld()
    state, expected = ld.state_dict(), ld()["idx"]
    ld2 = TokenLoader(toks, 64, 4, seed=0, input_noise=0.2)
    ld2.load_state_dict(state)
    assert torch.equal(ld2()["idx"], expected)
    with pytest.raises(BudgetError, match="causal"):
        TokenLoader(toks, 64, 4, collator=MaskingCollator(MaskingConfig(), 0, 2000, [0]), input_noise=0.1)


def test_masking_statistics_and_specials():
    vocab, mask_id, specials = 500, 499, [0, 1, 499]
    rng = np.random.default_rng(0)
    windows = rng.integers(0, vocab, size=(400, 128))
    coll = MaskingCollator(MaskingConfig(rate=0.25), mask_id, vocab, specials)
    out = coll(windows, np.random.default_rng(1))
    sel = out["targets"] != -100
    eligible = ~np.isin(windows, specials)
    assert not (sel & ~eligible).any()  # special tokens are never selected
    assert sel.sum() / eligible.sum() == pytest.approx(0.25, abs=0.01)
    assert (out["targets"][sel] == windows[sel]).all()  # targets are the original tokens
    changed_to_mask = (out["idx"] == mask_id) & sel
    unchanged = (out["idx"] == windows) & sel
    n = sel.sum()
    assert changed_to_mask.sum() / n == pytest.approx(0.8, abs=0.02)
    # 10% random (a random draw equal to the original counts as unchanged: +0.1/vocab) + 10% kept
    assert unchanged.sum() / n == pytest.approx(0.1, abs=0.02)
    assert (out["idx"][~sel] == windows[~sel]).all()


def test_masked_loader_batches():
    coll = MaskingCollator(MaskingConfig(rate=0.3), 499, 500, [499])
    b = TokenLoader(TOKENS, 32, 4, collator=coll, seed=0)()
    assert b["idx"].shape == b["targets"].shape == (4, 32)
    assert (b["targets"] != -100).any()


def test_bad_inputs():
    with pytest.raises(BudgetError, match="fewer than one window"):
        TokenLoader(np.arange(10, dtype=np.uint16), 16, 2)
    with pytest.raises(BudgetError):
        MaskingConfig(rate=0.0)
