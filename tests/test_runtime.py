"""runtime: device and precision choice (incl. the CPU bf16 probe), compile fallback, xla dispatch."""

import sys
import types

import pytest
import torch

from budgetlm import runtime
from budgetlm.config import BudgetError


def test_cpu_auto_precision_follows_the_measured_matmul_speed(monkeypatch):
    speeds = {torch.float32: 190e9, torch.bfloat16: 420e9}
    monkeypatch.setattr(runtime, "_time_matmul", lambda dtype, n, reps, budget_s=0.05: speeds[dtype])
    prec, why = runtime.choose_precision("cpu", "auto")
    assert prec == "bf16" and "faster" in why
    speeds[torch.bfloat16] = 1e9  # emulated bf16 (no AVX512-BF16/AMX): ~1 GFLOP/s
    prec, why = runtime.choose_precision("cpu", "auto")
    assert prec == "fp32" and "staying in fp32" in why


def test_cpu_probe_survives_one_slow_round(monkeypatch):
    """A burst of load during one round (bf16 timed slow once) must not flip the choice to fp32."""
    calls = {"n": 0}

    def timed(dtype, n, reps, budget_s=0.05):
        if dtype == torch.bfloat16:
            calls["n"] += 1
            return 50e9 if calls["n"] == 1 else 400e9
        return 190e9

    monkeypatch.setattr(runtime, "_time_matmul", timed)
    assert runtime.choose_precision("cpu", "auto")[0] == "bf16"


def test_real_probe_is_fast_and_positive():
    runtime.cpu_matmul_flops.cache_clear()
    assert runtime.cpu_matmul_flops("fp32", 128, 2) > 1e8
    prec, _ = runtime.choose_precision("cpu", "auto")
    assert prec in ("fp32", "bf16")


def test_explicit_precision_and_errors():
    assert runtime.choose_precision("cpu", "fp32")[0] == "fp32"
    assert runtime.choose_precision("cuda", "fp16")[0] == "fp16"
    with pytest.raises(BudgetError):
        runtime.choose_precision("cpu", "fp16")
    with pytest.raises(BudgetError):
        runtime.choose_precision("cpu", "fp8")


def test_device_detection():
    assert runtime.detect_device_type("cpu") == "cpu"
    assert runtime.detect_device_type("auto") in runtime.DEVICE_CHECKS
    with pytest.raises(BudgetError, match="unknown device"):
        runtime.detect_device_type("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(BudgetError, match="no cuda"):
            runtime.detect_device_type("cuda")


@pytest.mark.parametrize("device_type", list(runtime.AUTO_PRECISION))
def test_every_auto_precision_rule_answers(device_type, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    prec, why = runtime.AUTO_PRECISION[device_type]()
    assert prec in runtime.DTYPES and why


def test_init_runtime_cpu_and_autocast():
    rt = runtime.init_runtime("cpu", "fp32", seed=3)
    assert rt.is_main and rt.world_size == 1 and not rt.ddp
    a = torch.rand(1)
    runtime.seed_everything(3)
    assert torch.equal(a, torch.rand(1))
    with runtime.autocast(rt):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    rt16 = runtime.Runtime(torch.device("cpu"), "cpu", "bf16", "test")
    with runtime.autocast(rt16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert runtime.make_grad_scaler(rt) is None


def test_rng_state_round_trip():
    s = runtime.rng_state()
    a = (torch.rand(3), __import__("random").random())
    runtime.set_rng_state(s)
    b = (torch.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_compile_is_off_on_cpu_by_default_and_falls_back(monkeypatch):
    rt = runtime.Runtime(torch.device("cpu"), "cpu", "fp32", "test")
    m = torch.nn.Linear(2, 2)
    assert runtime.maybe_compile(m, rt, "auto") is m

    def boom(*a, **k):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", boom)
    assert runtime.maybe_compile(m, rt, "on") is m  # clean fallback


def test_unwrap_peels_wrappers():
    inner = torch.nn.Linear(2, 2)
    outer = types.SimpleNamespace(module=types.SimpleNamespace(_orig_mod=inner))
    assert runtime.unwrap(outer) is inner


def test_peak_flops_cpu_is_the_highest_measured_and_the_plans_peak(monkeypatch):
    from budgetlm import api, hardware

    monkeypatch.setitem(hardware.DETECTORS, "cuda", lambda: [])
    rt = runtime.Runtime(torch.device("cpu"), "cpu", "fp32", "test")
    flops, note = runtime.peak_flops(rt)
    assert flops > 1e8 and "measured" in note
    monkeypatch.setattr(runtime, "cpu_matmul_flops", lambda *a: flops / 2)  # a run disturbed by other work
    assert runtime.peak_flops(rt)[0] == flops  # the highest measurement, kept in the calibration file
    plan = api.plan(device="local", budget="1m", precision="fp32", model="tiny")
    assert plan.peak_flops == flops and "measured" in plan.peak_source
    monkeypatch.setattr(runtime, "cpu_matmul_flops", lambda *a: flops * 2)
    assert runtime.peak_flops(rt)[0] == flops * 2
    assert api.plan(device="local", budget="1m", precision="fp32", model="tiny").peak_flops == flops * 2


def test_peak_flops_cuda_comes_from_the_catalog(monkeypatch):
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=85 * 10**9)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    rt = runtime.Runtime(torch.device("cpu"), "cuda", "bf16", "test")
    flops, note = runtime.peak_flops(rt)
    assert flops == 989.5e12 and "nvidia-h100-sxm" in note
    rt.precision = "fp32"
    assert runtime.peak_flops(rt)[0] == 494.5e12  # TF32 tensor cores


def test_xla_dispatch_with_mocked_torch_xla(monkeypatch):
    """Only the dispatch logic: torch_xla itself is not installed (no TPU here)."""
    calls = []
    xm = types.SimpleNamespace(
        optimizer_step=lambda opt: calls.append("optimizer_step"),
        mark_step=lambda: calls.append("mark_step"),
        xla_device=lambda: torch.device("cpu"),
    )
    pkg = types.ModuleType("torch_xla")
    core = types.ModuleType("torch_xla.core")
    core.xla_model = xm
    pkg.core = core
    monkeypatch.setitem(sys.modules, "torch_xla", pkg)
    monkeypatch.setitem(sys.modules, "torch_xla.core", core)
    monkeypatch.setitem(sys.modules, "torch_xla.core.xla_model", xm)
    monkeypatch.setitem(runtime.DEVICE_CHECKS, "xla", runtime._xla_available)
    assert runtime.detect_device_type("xla") == "xla"
    assert runtime.choose_precision("xla", "auto")[0] == "bf16"
    rt = runtime.Runtime(torch.device("cpu"), "xla", "bf16", "test")
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    runtime.optimizer_step(rt, opt)
    runtime.mark_step(rt)
    assert calls == ["optimizer_step", "mark_step"]


def test_compile_wanted_registry_of_cases(monkeypatch):
    """auto compiles on CUDA, and on CPU only for long budgets with a C++ compiler; flags win."""
    from types import SimpleNamespace

    from budgetlm.runtime import CPU_COMPILE_MIN_BUDGET_S, compile_wanted

    cpu, cuda, mps = (SimpleNamespace(device_type=t) for t in ("cpu", "cuda", "mps"))
    monkeypatch.setattr("budgetlm.runtime._have_cxx", lambda: True)
    assert compile_wanted(cuda, "auto", None)[0]
    assert not compile_wanted(cpu, "auto", None)[0]
    assert not compile_wanted(cpu, "auto", CPU_COMPILE_MIN_BUDGET_S - 1)[0]
    assert compile_wanted(cpu, "auto", CPU_COMPILE_MIN_BUDGET_S)[0]
    assert not compile_wanted(mps, "auto", 1e6)[0]
    assert compile_wanted(cpu, "on", 1)[0] and not compile_wanted(cuda, "off", 1e6)[0]
    monkeypatch.setattr("budgetlm.runtime._have_cxx", lambda: False)
    ok, why = compile_wanted(cpu, "auto", 1e6)
    assert not ok and "C++" in why


def test_attention_precision_follows_the_measured_kernel_speed(monkeypatch):
    """prepare_training upcasts attention only on CPU under bf16, and only where fp32 measured faster."""
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import Transformer

    speeds = {torch.float32: 1.0, torch.bfloat16: 4.0}  # seconds per fwd+bwd: bf16 4x slower
    monkeypatch.setattr(runtime, "_time_attention", lambda dtype, reps=3: speeds[dtype])
    cfg = ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=2, max_seq_len=16)
    rt16 = runtime.Runtime(torch.device("cpu"), "cpu", "bf16", "test")
    rt32 = runtime.Runtime(torch.device("cpu"), "cpu", "fp32", "test")
    for rt, fast_bf16, expected in [(rt16, False, True), (rt32, False, False), (rt16, True, False)]:
        runtime.cpu_attention_fp32.cache_clear()
        if fast_bf16:
            speeds[torch.bfloat16] = 0.5
        model = runtime.prepare_training(Transformer(cfg), rt, compile="off").model
        assert [b.attn.fp32 for b in model.blocks] == [expected, expected]
        assert ("attention in fp32" in runtime.attention_note(rt)) == expected
    runtime.cpu_attention_fp32.cache_clear()


def test_one_process_callers_refuse_a_torchrun_world(monkeypatch):
    """Through the Python API too: only a caller that trains across processes joins the group."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(BudgetError, match="launch it without torchrun"):
        runtime.init_runtime("cpu", "fp32")
