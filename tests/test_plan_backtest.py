"""The planner's default GPU MFU against published runs (planning/published.py, benchmarks/plan_backtest.py)."""

import math
import sys

import pytest

import budgetlm.planning  # noqa: F401  (the package re-exports a function named like the module)
from budgetlm.catalog import load_catalog
from budgetlm.planning.published import FEATURES, RUNS, fit, mfu_class
from bench_helpers import load_benchmark

E = sys.modules["budgetlm.planning.estimate"]


def _backtest():
    return load_benchmark("plan_backtest")


def test_at_least_ten_sourced_runs_and_the_leave_one_out_target(capsys):
    assert len(RUNS) >= 10 and all(r.source and r.how and r.tokens_per_s > 0 for r in RUNS)
    doc = _backtest().main([])
    assert doc["count"] == len(RUNS)
    assert doc["within_25_percent"] / doc["count"] >= 0.75
    assert "leave-one-out:" in capsys.readouterr().out
    # the runs plain PyTorch trained at the published micro-batch fit in the plan's memory model
    plain = [r for r, run in zip(doc["runs"], RUNS) if run.micro_batch and not run.fused]
    assert plain and all(r["plan_says_fits"] for r in plain)


def test_the_planner_constants_are_the_fit_on_all_runs():
    mod = _backtest()
    rows = mod.points(load_catalog())
    coef = dict(zip(FEATURES, fit([(r["x"], r["mfu"]) for r in rows])))
    for name, value in E.FITTED_MFU.items():
        assert value == pytest.approx(coef[name], abs=5e-4), name


def test_default_mfu_by_device_class():
    cat = load_catalog()
    from budgetlm.models.presets import model_config

    wide = model_config(12, 8192, width=1024)
    h100 = E.default_mfu(cat["nvidia-h100-sxm"], wide)
    assert h100 == pytest.approx(math.exp(E.FITTED_MFU["intercept"]))
    assert E.default_mfu(cat["nvidia-rtx-4090"], wide) > h100  # GeForce peaks are the half-rate figure
    assert E.default_mfu(cat["nvidia-h100-sxm"], model_config(12, 8192, width=2048)) > h100
    assert E.default_mfu(cat["google-tpu-v5e"], wide) == E.DEFAULT_MFU["tpu"]  # no published TPU run: unchanged
    assert mfu_class("nvidia-rtx-3090") == "geforce" and mfu_class("nvidia-a100-sxm4-40gb") == "datacenter"


def test_a_tpu_plan_says_its_path_is_unverified():
    from budgetlm import api

    p = api.plan(device="google-tpu-v5e", budget="1h", model="2", seq_len=128)
    assert any("unverified" in n for n in p.notes)
    assert not any("unverified" in n for n in api.plan(device="nvidia-h100-sxm", budget="1h", model="2",
                                                       seq_len=128).notes)
