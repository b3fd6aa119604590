"""The generic training loop with a stand-in model: budgets, accumulation, NaN handling, stop signal."""

import math
import time

import pytest
import torch
from torch import nn

from budgetlm import runtime
from budgetlm.config import BudgetError
from budgetlm.training.loop import LoopConfig, LoopHooks, LoopState, StopFlag, train_loop
from budgetlm.training.optim import OptimConfig, build_optimizer
from budgetlm.training.schedule import ScheduleConfig
from train_helpers import one_thread  # noqa: F401 - autouse fixture


class TinyLM(nn.Module):
    """Bigram stand-in with the project's forward contract: logits, loss = model(idx, targets)."""

    def __init__(self, vocab=16, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.poison = set()  # calls (by count) that return a NaN loss
        self.calls = 0

    def forward(self, idx, targets=None):
        self.calls += 1
        logits = self.out(torch.tanh(self.proj(self.embed(idx))))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        if self.calls in self.poison:
            loss = loss * float("nan")
        return logits, loss


def batches(seed=0, B=4, T=8, vocab=16):
    g = torch.Generator().manual_seed(seed)

    def next_batch():
        x = torch.randint(0, vocab, (B, T + 1), generator=g)
        x[:, 1::2] = (x[:, 0::2][:, : x[:, 1::2].shape[1]] + 1) % vocab  # learnable structure
        return {"idx": x[:, :-1], "targets": x[:, 1:]}

    return next_batch


def rt_cpu():
    return runtime.Runtime(torch.device("cpu"), "cpu", "fp32", "test")


def make(lr=1e-2):
    torch.manual_seed(0)
    m = TinyLM()
    return m, build_optimizer("adamw", m, OptimConfig(lr=lr, weight_decay=0.0))


def test_max_steps_and_learning():
    m, opt = make()
    res = train_loop(m, batches(), opt, rt_cpu(), LoopConfig(max_steps=60, log_every=10), ScheduleConfig(),
                     show_progress=False)
    assert res.state.step == 60 and res.state.tokens == 60 * 32
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert losses[-1] < losses[0] - 0.3  # it actually trains


def test_deadline_stop_counts_only_training_time():
    m, opt = make()
    evals = []

    def slow_eval(model, state):  # evaluation time must not eat the budget
        time.sleep(0.2)
        evals.append(1)
        return {"val_loss": 1.0}

    t0 = time.perf_counter()
    res = train_loop(m, batches(), opt, rt_cpu(), LoopConfig(budget_s=0.6, eval_every=0.25), ScheduleConfig(),
                     hooks=LoopHooks(evaluate=slow_eval), show_progress=False)
    wall = time.perf_counter() - t0
    assert 0.5 <= res.state.elapsed_s <= 0.75
    assert len(evals) == 3  # at 25%, 50%, 75%
    assert wall >= res.state.elapsed_s + 0.5  # the 3 x 0.2 s of evaluation were off the clock


def test_lr_follows_progress_and_ends_near_zero():
    m, opt = make()
    res = train_loop(m, batches(), opt, rt_cpu(), LoopConfig(max_steps=50, log_every=1),
                     ScheduleConfig(warmup=0.1, decay="linear"), show_progress=False)
    lrs = [h["lr"] for h in res.history if "lr" in h]
    assert lrs[0] == pytest.approx(1e-2 * 0.0)  # step 1 runs at progress 0 -> warm-up starts at 0
    assert max(lrs) == pytest.approx(1e-2, rel=1e-6)
    assert lrs[-1] < 1e-2 * 0.05


def test_grad_accumulation_matches_big_batch():
    results = []
    for accum, B in ((1, 8), (4, 2)):
        m, opt = make()
        src = batches(B=8)
        cache = {}

        def micro(src=src, B=B, cache=cache):  # split each 8-row batch into micro-batches of B rows
            if not cache.get("rows"):
                b = src()
                cache["rows"] = [{k: v[i : i + B] for k, v in b.items()} for i in range(0, 8, B)]
            return cache["rows"].pop(0)

        train_loop(m, micro, opt, rt_cpu(), LoopConfig(max_steps=3, grad_accum=accum), ScheduleConfig(warmup=0),
                   show_progress=False)
        results.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_nan_steps_are_skipped_and_counted():
    m, opt = make()
    m.poison = {3, 4}
    res = train_loop(m, batches(), opt, rt_cpu(), LoopConfig(max_steps=8), ScheduleConfig(), show_progress=False)
    assert res.state.nan_skipped == 2
    assert all(math.isfinite(p.detach().sum().item()) for p in m.parameters())


def test_nan_streak_rolls_back_with_lower_lr():
    m, opt = make()
    m.poison = set(range(5, 8))  # three in a row
    rolled = []

    def rollback():
        rolled.append(1)
        return LoopState(step=2, tokens=64)

    res = train_loop(m, batches(), opt, rt_cpu(), LoopConfig(max_steps=10, nan_patience=3, nan_lr_factor=0.5),
                     ScheduleConfig(), hooks=LoopHooks(rollback=rollback), show_progress=False)
    assert rolled == [1]
    assert res.state.rollbacks == 1 and res.state.lr_scale == 0.5 and res.state.nan_skipped == 3
    assert res.state.step == 10


def test_nan_streak_without_checkpoint_is_a_clear_error():
    m, opt = make()
    m.poison = set(range(1, 100))
    with pytest.raises(BudgetError, match="non-finite"):
        train_loop(m, batches(), opt, rt_cpu(), LoopConfig(max_steps=10, nan_patience=3), ScheduleConfig(),
                   show_progress=False)


def test_budget_too_small_for_one_step():
    m, opt = make()

    def slow():
        time.sleep(0.05)
        return batches()()

    with pytest.raises(BudgetError, match="too small"):
        train_loop(m, slow, opt, rt_cpu(), LoopConfig(budget_s=0.01), ScheduleConfig(), show_progress=False)


def test_stop_flag_interrupts_and_checkpoints_are_called():
    m, opt = make()
    stop = StopFlag()
    saved = []
    src = batches()

    def counting():
        if len(saved) >= 2:
            stop.set(15)
        return src()

    res = train_loop(m, counting, opt, rt_cpu(), LoopConfig(max_steps=100, checkpoint_every_steps=3),
                     ScheduleConfig(), hooks=LoopHooks(checkpoint=lambda st, ev: saved.append(st.step)), stop=stop,
                     show_progress=False)
    assert res.interrupted and saved == [3, 6] and res.state.step == 7


def test_loop_config_needs_a_budget():
    with pytest.raises(BudgetError):
        LoopConfig()


def test_eval_every_steps_and_early_stop_from_the_eval_result():
    """Evaluations every N steps; a result with "stop": True ends the run (not as an interruption)."""
    m, opt = make()
    seen = []

    def evaluate(model, state):
        seen.append(model.calls)
        return {"val_loss": 1.0, "stop": len(seen) == 3}

    res = train_loop(m, batches(), opt, rt_cpu(), LoopConfig(max_steps=50, eval_every=0.0, eval_every_steps=4),
                     ScheduleConfig(), hooks=LoopHooks(evaluate=evaluate), show_progress=False)
    assert seen == [4, 8, 12]  # one micro-batch per step: the model was called 4, 8, 12 times
    assert res.stopped_early and not res.interrupted
    assert res.state.step == 12


def test_hooks_see_the_loop_state_and_on_step_runs_after_each_applied_step():
    """Evaluation receives the loop state (no step counting in forward); on_step follows every applied
    optimizer step (weight averaging lives there) and is skipped for a skipped (NaN) step."""
    torch.manual_seed(0)
    m = TinyLM()
    m.poison = {4}
    opt = build_optimizer("adamw", m, OptimConfig(lr=1e-2))
    stepped, evaluated = [], []

    def on_step(model, state):
        assert model is m
        stepped.append(state.step)

    res = train_loop(m, batches(), opt, rt_cpu(), LoopConfig(max_steps=8, eval_every=0, eval_every_steps=2),
                     ScheduleConfig(), hooks=LoopHooks(on_step=on_step,
                                                       evaluate=lambda model, st: evaluated.append(st.step) or {}),
                     show_progress=False)
    assert res.state.nan_skipped == 1
    assert stepped == [1, 2, 3, 5, 6, 7, 8]  # step 4's loss was NaN: no update, no hook
    assert evaluated == [2, 6]  # every 2nd step; not the skipped 4th, and the last is the caller's
