"""`plan --choose`: rentable options ranked for a job (planning/choose.py, api.choose)."""

import json

import pytest

from budgetlm import api, cli
from budgetlm.config import BudgetError
from budgetlm.planning.choose import RANKS, ChooseConfig, counts_for, launch_spec, rank, sky_accelerator

JOB_124M = dict(budget="1d", model="12", n_embd=768, vocab_size=50257, tokens=10e9, seq_len=1024)


def test_counts_follow_the_smallest_rentable_slice():
    assert counts_for(1, [1, 2, 4, 8]) == [1, 2, 4, 8]
    assert counts_for(4, [1, 2, 4, 8]) == [4, 8]  # a v4-8 slice is 4 chips; 2 chips cannot be rented
    assert counts_for(4, [1, 2]) == [4]  # the smallest slice stands in when no count asked for can be rented


def test_fixed_job_every_option_trains_the_same_tokens_and_the_cheapest_comes_first():
    options = api.choose(market="cloud", **JOB_124M)
    ok = [o for o in options if o.ok]
    assert ok and all(o.plan.tokens == 10_000_000_000 for o in options if o.plan.fits)
    assert all(o.plan.seconds <= 86400 * 1.0001 and o.plan.price["market"] == "cloud" for o in ok)
    costs = [o.plan.cost_usd for o in ok]
    assert costs == sorted(costs)
    # the options left out say why: too slow, no fit, or no price in this market
    assert any(o.why.startswith("needs") for o in options)
    assert all(o.why for o in options if not o.ok)
    # more devices of one kind: faster, never cheaper per token (same MFU, more device-hours)
    h100 = {o.count: o for o in options if o.device == "nvidia-h100-sxm"}
    assert h100[8].plan.seconds < h100[1].plan.seconds


def test_rank_by_time_and_by_quality_within_a_cost_cap():
    fast = api.choose(choice=ChooseConfig(rank="time"), market="cloud", **JOB_124M)
    ok = [o for o in fast if o.ok]
    assert [o.plan.seconds for o in ok] == sorted(o.plan.seconds for o in ok)
    capped = api.choose(None, ChooseConfig(rank="quality", max_cost=20, only="h100,a100,rtx-4090,tpu-v5e"),
                        budget="1d", objective="masked", seq_len=128, market="cloud")
    ok = [o for o in capped if o.ok]
    assert ok and all(o.plan.cost_usd <= 20 * 1.0001 for o in ok)
    losses = [o.predicted_loss for o in ok]
    assert losses == sorted(losses)
    # with model=auto the cap buys hours: dear options train a shorter time, for $20, than the day
    h100 = next(o for o in capped if o.device == "nvidia-h100-sxm" and o.count == 1)
    assert h100.plan.seconds == pytest.approx(20 / h100.plan.price["usd_per_hour"] * 3600, rel=1e-3)
    # a fixed job over the cap is kept, after the others, with the reason
    fixed = api.choose(None, ChooseConfig(max_cost=1), market="cloud", **JOB_124M)
    assert all(not o.ok for o in fixed) and any(o.why.startswith("costs $") for o in fixed)


def test_only_min_memory_and_counts_filter_the_options():
    opts = api.choose(None, ChooseConfig(only="rtx", counts=[1]), budget="1d", objective="masked", seq_len=128)
    assert {o.count for o in opts} == {1} and all("rtx" in o.device for o in opts)
    big = api.choose(None, ChooseConfig(min_memory_gb=70), market="cloud", **JOB_124M)
    assert all(o.plan.device_memory_bytes >= 70e9 for o in big)
    with pytest.raises(BudgetError, match="no catalog device matches"):
        api.choose(None, ChooseConfig(only="no-such-gpu"), **JOB_124M)
    with pytest.raises(BudgetError, match="--tokens"):
        api.choose(budget="1d", model="12")
    with pytest.raises(BudgetError, match="--counts"):
        ChooseConfig(counts=[0])


def test_every_rank_in_the_registry_orders_options():
    opts = api.choose(None, ChooseConfig(counts=[1, 2], only="h100,rtx-4090"), budget="2h", seq_len=256)
    for name, key in RANKS.items():
        ranked = rank(opts, ChooseConfig(rank=name))
        assert sorted(map(id, ranked)) == sorted(map(id, opts))
        ok = [o for o in ranked if o.ok]
        assert [key(o) for o in ok] == sorted(key(o) for o in ok) and all(not o.ok for o in ranked[len(ok):])


def test_launch_specs_torchrun_and_skypilot():
    options = api.choose(choice=ChooseConfig(rank="time"), market="cloud", **JOB_124M)
    best = options[0]
    cmd = launch_spec(best, "torchrun", "data/fineweb", "1d", "causal", fixed_tokens=True)
    assert cmd.endswith(" --max-tokens 10000000000")  # a job of fixed size stops at its tokens
    assert f"--model 12 --n-embd 768 --seq-len 1024" in cmd and "--data data/fineweb" in cmd
    if best.count > 1:
        assert cmd.startswith(f"torchrun --standalone --nproc_per_node {best.count} -m budgetlm train")
        assert "--fsdp" in cmd
    sky = launch_spec(best, "skypilot", None, "1d", "causal")
    assert "resources:" in sky and f"accelerators: {sky_accelerator(best.device, best.count)}" in sky
    assert sky_accelerator("nvidia-h100-sxm", 8) == "H100:8"
    assert sky_accelerator("google-tpu-v4", 4) == "tpu-v4-8" and sky_accelerator("google-tpu-v5e", 4) == "tpu-v5litepod-4"


def test_cli_choose_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    code = cli.main(["plan", "--budget", "1d", "--model", "12", "--n-embd", "768", "--vocab-size", "50257",
                         "--tokens", "10e9", "--seq-len", "1024", "--choose", "--rank", "cost", "--top", "5",
                         "--launch", "torchrun", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["options"]) == 5 and doc["options"][0]["ok"]
    assert doc["launch"] and "budgetlm" in doc["launch"]
    assert {"device", "count", "predicted_loss", "seconds", "cost_usd", "price", "fits"} <= set(doc["options"][0])


def test_launched_commands_name_the_optimizer_the_plan_counted():
    """`train` refuses --fsdp with Muon, so options on several devices are planned (and launched) with
    AdamW; one device gets Muon, `train`'s default."""
    options = api.choose(choice=ChooseConfig(counts=[1, 4], only="h100-sxm"), market="cloud", **JOB_124M)
    by_count = {o.count: o for o in options}
    assert by_count[1].plan.optimizer == "muon" and by_count[4].plan.optimizer == "adamw"
    one = launch_spec(by_count[1], "torchrun", None, "1d", "causal")
    four = launch_spec(by_count[4], "torchrun", None, "1d", "causal")
    assert "--optimizer muon" in one and "--fsdp" not in one
    assert "--optimizer adamw" in four and "--fsdp" in four
    # AdamW keeps two moments per parameter where Muon keeps one per hidden-matrix parameter
    assert by_count[4].plan.memory["optimizer"] * 4 > by_count[1].plan.memory["optimizer"]
    forced = api.choose(choice=ChooseConfig(counts=[4], only="h100-sxm"), market="cloud", optimizer="muon", **JOB_124M)
    assert forced[0].plan.optimizer == "muon"
