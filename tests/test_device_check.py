"""benchmarks/device_check.py in its tiny CPU mode, so the GPU check never rots."""

import json

from bench_helpers import load_benchmark


def test_device_check_cpu_mode_runs_every_check(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLM_HOME", str(tmp_path / "home"))
    mod = load_benchmark("device_check")
    out = tmp_path / "dc.json"
    assert mod.main(["--device", "cpu", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    doc = json.loads(out.read_text())
    checks = doc["checks"]
    assert all(c["ok"] for c in checks.values()), {n: c.get("error") for n, c in checks.items()}
    names = set(checks)
    assert {"prepare", "generate", "export parity", "serve smoke"} <= names
    assert {n for n in names if n.startswith("pretrain")} == {
        f"pretrain {o} {p} compile=off" for o in ("causal", "masked") for p in ("fp32", "bf16")}
    run = checks["pretrain causal fp32 compile=off"]["result"]
    assert run["tokens_per_s"] > 0 and run["plan"]["tokens_per_s"] > 0 and run["plan"]["memory_bytes"] > 0
    assert checks["export parity"]["result"]["max_abs_logit_diff"] <= 1e-4
    assert checks["serve smoke"]["result"]["status"] == 200


def test_device_check_without_cuda_refuses_the_gpu_mode(capsys):
    mod = load_benchmark("device_check")
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the GPU mode is the real check: run the script itself")
    assert mod.main(["--device", "cuda"]) == 2
    assert "--device cpu" in capsys.readouterr().err
