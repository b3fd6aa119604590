"""LR schedule: progress from elapsed time / steps / tokens; warm-up; decay to ~0 at the deadline."""

import pytest

from budgetlm.training.schedule import DECAYS, ScheduleConfig, lr_multiplier, progress


def test_progress_is_the_most_advanced_limit():
    assert progress(30.0, 0, 0, budget_s=120.0) == pytest.approx(0.25)
    assert progress(30.0, 50, 0, budget_s=120.0, max_steps=100) == pytest.approx(0.5)
    assert progress(1.0, 1, 900, budget_s=120.0, max_steps=100, max_tokens=1000) == pytest.approx(0.9)
    assert progress(500.0, 0, 0, budget_s=120.0) == 1.0  # clipped


@pytest.mark.parametrize("decay", [*DECAYS, "wsd"])
def test_every_decay_warms_up_and_ends_at_final(decay):
    cfg = ScheduleConfig(warmup=0.1, decay=decay, final_lr_frac=0.0)
    assert lr_multiplier(0.0, cfg) == 0.0
    assert lr_multiplier(0.05, cfg) == pytest.approx(0.5)
    assert lr_multiplier(0.1, cfg) == pytest.approx(1.0)
    end = lr_multiplier(1.0, cfg)
    assert end == (1.0 if decay == "constant" else pytest.approx(0.0, abs=1e-9))


def test_wsd_holds_then_cools_down_linearly():
    cfg = ScheduleConfig(warmup=0.0, decay="wsd", cooldown=0.4)
    assert lr_multiplier(0.3, cfg) == 1.0 and lr_multiplier(0.6, cfg) == 1.0
    assert lr_multiplier(0.8, cfg) == pytest.approx(0.5)


def test_time_driven_schedule_reaches_zero_exactly_at_budget():
    cfg = ScheduleConfig(warmup=0.02, decay="linear")
    # the same elapsed fraction gives the same LR whatever the step count
    a = lr_multiplier(progress(60.0, 10, 0, budget_s=120.0), cfg)
    b = lr_multiplier(progress(60.0, 10_000, 0, budget_s=120.0), cfg)
    assert a == b
    assert lr_multiplier(progress(120.0, 10, 0, budget_s=120.0), cfg) == 0.0


def test_bad_schedule_values():
    with pytest.raises(ValueError):
        ScheduleConfig(warmup=1.5)
    with pytest.raises(ValueError):
        ScheduleConfig(cooldown=0.0)
