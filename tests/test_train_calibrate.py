"""train/calibrate.py and calibration.py: measured training steps (through the training loop itself),
CPU memory accounting, the calibration file (write, merge, corrupt), and the hook `train` uses
(auto_plan)."""

import json

import pytest

from budgetlm import calibration, cli, runtime
from budgetlm.training import calibrate as bench
from budgetlm import planning as P
from budgetlm.models.presets import model_config

CPU_FP32 = runtime.Runtime(runtime.torch.device("cpu"), "cpu", "fp32", "test")
TINY = ["--depths", "1", "2", "--seq-len", "16", "--micro-batch", "2", "--vocab-size", "64",
        "--seconds", "0.05", "--precisions", "fp32", "--no-disk"]


def test_measure_counts_memory_exactly_on_cpu():
    cfg = model_config(2, 64, max_seq_len=16)
    r = bench.measure(cfg, 2, 16, CPU_FP32, seconds=0.05)
    assert r["steps"] >= 2 and r["tokens_per_second"] > 0
    assert r["achieved_flops"] == pytest.approx(r["tokens_per_second"] * P.flops_per_token(cfg, 16))
    s = P.state_bytes(cfg, "fp32")
    assert (r["weights"], r["gradients"], r["optimizer"]) == (s["weights"], s["gradients"], s["optimizer"])
    assert r["saved_activation_bytes"] == sum(P.activation_bytes(cfg, 2, 16, "fp32").values())
    assert r["peak_memory_bytes"] == r["weights"] + r["gradients"] + r["optimizer"] + r["saved_activation_bytes"]


def test_bench_writes_and_merges_calibration(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"version": 1, "devices": {"cuda:other": {"precisions": {}}}}))
    assert cli.main(["bench", "--json", *TINY]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["calibration_file"] == str(path)
    points = out["precisions"]["fp32"]
    assert [p["depth"] for p in points] == [1, 2] and all(p["mfu"] > 0 for p in points)
    for p in points:  # the plan's prediction beside the measurement
        assert p["predicted_saved_activation_bytes"] == p["saved_activation_bytes"]
    data = calibration.load(path)
    assert "cuda:other" in data["devices"] and out["device_key"] in data["devices"]
    # plan --device local now uses the measurement
    assert cli.main(["plan", "--device", "local", "--budget", "30s", "--seq-len", "16", "--vocab-size", "64",
                     "--precision", "fp32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mfu_source"] == "calibration"


def test_calibration_keeps_other_sequence_lengths_and_plans_prefer_their_own(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    assert cli.main(["bench", "--json", *TINY]) == 0
    assert cli.main(["bench", "--json", *TINY[:4], "32", *TINY[5:]]) == 0  # --seq-len 32
    assert cli.main(["bench", "--json", *TINY]) == 0  # seq 16 again: replaces seq 16 only
    capsys.readouterr()
    entry = next(iter(calibration.load(tmp_path / "calibration.json")["devices"].values()))
    points = entry["precisions"]["fp32"]
    assert sorted((p["seq_len"], p["depth"]) for p in points) == [(16, 1), (16, 2), (32, 1), (32, 2)]
    # a plan at seq 32 uses the seq-32 points alone: scaling their speed moves its MFU, the others do not
    from budgetlm.catalog import get_device, load_catalog

    dev = get_device("cpu", load_catalog())
    cfg = model_config(2, 64, max_seq_len=32)
    before = P.mfu_for(dev, "fp32", cfg, 32, entry)[0]
    for p in points:
        p["achieved_flops"] *= 2 if p["seq_len"] == 32 else 10
    assert P.mfu_for(dev, "fp32", cfg, 32, entry)[0] == pytest.approx(2 * before)


def test_bench_refuses_a_corrupt_calibration_without_touching_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    path = tmp_path / "calibration.json"
    path.write_text('{"version": 1, "devices": [')
    assert cli.main(["bench", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt" in err[0]
    assert path.read_text() == '{"version": 1, "devices": ['


@pytest.mark.parametrize("argv, needle", [
    (["--objective", "prefix"], "invalid choice"),
    (["--precisions", "fp64"], "unknown precision"),
    (["--seconds", "0"], "--seconds must be > 0"),
])
def test_bench_bad_input(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    try:
        code = cli.main(["bench", *TINY, *argv])
    except SystemExit as e:  # argparse refuses a bad choice itself
        code = e.code
    assert code == 2
    assert needle in capsys.readouterr().err


def test_auto_plan_calibrates_once_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    calls = []
    real = bench.calibrate

    def counting(cfg, rt=None):
        calls.append(cfg)
        assert cfg.precisions == ["fp32"] and cfg.seq_len == 16 and cfg.compile == "off"
        return real(bench.dataclasses.replace(cfg, depths=[1], micro_batch=2, seconds=0.02, rounds=1), rt)

    monkeypatch.setattr(bench, "calibrate", counting)
    p1 = bench.auto_plan(20, 5000, 16, CPU_FP32, "causal", 64)
    p2 = bench.auto_plan(20, 5000, 16, CPU_FP32, "causal", 64)
    assert len(calls) == 1
    assert p1.mfu_source == p2.mfu_source == "calibration" and p1.precision == "fp32"
    assert p2.model.vocab_size == 64 and p2.micro_batch * p2.grad_accum >= 1 and p2.fits
    # a compiled run is calibrated compiled: the eager points do not serve it
    assert not bench.points_for(calibration.load()["devices"].popitem()[1], "fp32", 16, compile=True)


def test_measure_runs_what_training_runs(monkeypatch):
    """The measured steps go through runtime.prepare_training and the training loop."""
    seen = {}
    real_prepare, real_loop = bench.runtime.prepare_training, bench.train_loop

    def prepare(model, rt, compile="auto", **kw):
        seen["compile"] = compile
        return real_prepare(model, rt, compile=compile, **kw)

    def loop(*a, **k):
        seen["loop"] = seen.get("loop", 0) + 1
        return real_loop(*a, **k)

    monkeypatch.setattr(bench.runtime, "prepare_training", prepare)
    monkeypatch.setattr(bench, "train_loop", loop)
    bench.measure(model_config(1, 64, max_seq_len=16), 2, 16, CPU_FP32, seconds=0.02, compile="off", memory=False)
    assert seen == {"compile": "off", "loop": 2}  # warm-up, then the timed steps


def test_disk_read_speed_is_positive(tmp_path):
    speed = bench.disk_read_speed(tmp_path, size_bytes=2 * 2**20)
    assert speed is None or speed > 0
    assert not list(tmp_path.iterdir())  # the temporary file is gone


def test_a_noisy_calibration_is_measured_again(monkeypatch, tmp_path):
    """Rounds that disagree (another process took the cores) are re-measured, not kept."""
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    times = iter([0.1, 0.3] + [0.1, 0.102] * 5)  # first attempt disagrees 3x, the second agrees

    timed_optimizer = []

    def fake_measure(cfg, mb, seq_len, rt, seconds, optimizer, compile, memory=True, dropout=0.0, optimizer_time=True):
        t = next(times)
        timed_optimizer.append(optimizer_time)
        return {"depth": cfg.n_layer, "seq_len": seq_len, "step_seconds": t, "tokens_per_second": mb * seq_len / t,
                "flops_per_token": 1.0, "achieved_flops": mb * seq_len / t, "params": 1,
                **({"optimizer_seconds": 0.01} if optimizer_time else {})}

    monkeypatch.setattr(bench, "measure", fake_measure)
    out = bench.calibrate(bench.CalibrationConfig(depths=[1], seq_len=16, precisions=["fp32"], vocab_size=64,
                                                  rounds=2, disk=False, memory=False), CPU_FP32)
    (point,) = out["precisions"]["fp32"]
    assert point["round_spread"] == pytest.approx(1.02) and point["step_seconds"] == 0.1
    # the optimizer step is timed in the first round of each attempt only, and kept with the fastest round
    assert timed_optimizer == [True, False, True, False] and point["optimizer_seconds"] == 0.01


def test_a_run_far_from_its_plan_corrects_the_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    from budgetlm.catalog import load_catalog
    from budgetlm.hardware import local_device

    cfg = model_config(3, 64, max_seq_len=16, width=64)
    fpt = P.flops_per_token(cfg, 16)
    for tps in (1000.0, 500.0):  # a second run of the same shape replaces the first one's point
        bench.record_run({"depth": 3, "width": 64, "seq_len": 16, "compile": False, "tokens_per_second": tps,
                          "flops_per_token": fpt, "achieved_flops": fpt * tps}, "fp32")
    entry = next(iter(calibration.load()["devices"].values()))
    assert [p["tokens_per_second"] for p in entry["precisions"]["fp32"]] == [500.0]
    device, _ = local_device(load_catalog())
    plan = P.estimate(cfg, device, 1e6, 16, calibration=bench.points_for(entry, "fp32", 16, False),
                      precisions=("fp32",))
    assert plan.tokens_per_second == pytest.approx(500.0)


def _planned_run(batch_size: int, grad_accum: int):
    """A finished run of a 3 x 64 model with micro-batches of 8 x 16 tokens, planned at 1,000 tokens/s
    with `grad_accum` micro-batches per step and a 0.01 s optimizer step, that trained `batch_size`
    sequences per step at 1,600 tokens/s: what `pretrain._correct_plan` reads."""
    from types import SimpleNamespace

    plan = SimpleNamespace(global_batch_tokens=grad_accum * 8 * 16, micro_batch=8, grad_accum=grad_accum,
                           optimizer_seconds=0.01, tokens_per_second=1000.0)
    run = SimpleNamespace(choice=SimpleNamespace(plan=plan), rt=CPU_FP32, mcfg=model_config(3, 64, max_seq_len=16, width=64),
                          micro=8, cfg=SimpleNamespace(batch_size=batch_size, optimizer="muon"), fpt=1.0)
    result = SimpleNamespace(interrupted=False, steps=100, tokens_per_s=1600.0, params=1, compiled=False)
    return run, result


def test_only_a_run_with_the_plans_batch_corrects_the_calibration(tmp_path, monkeypatch):
    """A batch given by hand changes the speed (fewer optimizer steps per token), so that run's speed
    must not become the plan's calibration point for its shape."""
    from budgetlm.training.pretrain import _correct_plan

    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    assert _correct_plan(*_planned_run(16, grad_accum=1)) == ""  # twice the plan's batch: not recorded
    assert not (tmp_path / "calibration.json").exists()
    assert "160%" in _correct_plan(*_planned_run(8, grad_accum=1))  # the plan's batch, 1.6x its speed: recorded
    entry = next(iter(calibration.load()["devices"].values()))
    assert [p["tokens_per_second"] for p in entry["precisions"]["fp32"]] == [1600.0]


def test_an_unwritable_calibration_home_warns_and_the_run_still_ends(tmp_path, monkeypatch, capsys):
    from budgetlm.training.pretrain import _correct_plan

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path / "file" / "home"))  # mkdir fails: NotADirectoryError
    assert _correct_plan(*_planned_run(8, grad_accum=1)) == ""
    assert "could not record this run's speed" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_run_with_accumulation_is_recorded_as_single_steps(tmp_path, monkeypatch):
    """Calibration points time one micro-batch per optimizer step and plans amortise the optimizer
    step over their accumulation; a run with accumulation is kept in the points' form, so the next
    plan does not amortise it twice."""
    from budgetlm.training.pretrain import _correct_plan

    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path))
    assert "160%" in _correct_plan(*_planned_run(32, grad_accum=4))
    (point,) = next(iter(calibration.load()["devices"].values()))["precisions"]["fp32"]
    # 4 x 128 tokens per 0.32 s step, 0.01 s of it the optimizer: one micro-batch + its step 0.0875 s
    assert point["tokens_per_second"] == pytest.approx(128 / 0.0875)
    assert point["achieved_flops"] == pytest.approx(128 / 0.0875)
    assert (point["grad_accum"], point["optimizer_seconds"]) == (4, 0.01)


def test_measure_times_the_optimizer_step():
    r = bench.measure(model_config(2, 64, max_seq_len=16), 2, 16, CPU_FP32, seconds=0.05, memory=False)
    assert 0 < r["optimizer_seconds"] < r["step_seconds"]
    skipped = bench.measure(model_config(1, 64, max_seq_len=16), 2, 16, CPU_FP32, seconds=0.02, memory=False,
                            optimizer_time=False)
    assert "optimizer_seconds" not in skipped
