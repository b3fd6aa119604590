"""Process state: the one module that touches torch.cuda, torch.distributed, torch_xla and mps.

Everything device-, precision- or rank-specific goes through here, so the model and the training
loop stay device-agnostic (torchtitan keeps parallelism apart from the model; nanochat's
`common.compute_init` plays the same role). What lives here:

- `init_runtime(device="auto", precision="auto", seed=0, distributed=False)` -> `Runtime`: device detection, DDP
  initialisation from the torchrun environment (gloo on CPU, nccl on CUDA), precision choice;
- `autocast(rt)`, `attention_fp32(rt)` (`set_attention_precision`), `make_grad_scaler(rt)`, `optimizer_step`, `mark_step`;
- `maybe_compile(model, mode)`, `wrap_ddp(model, rt)`, `unwrap(model)`;
- `peak_flops(rt)` for MFU (the planner's peak: catalog, else a measured matmul, said so);
- `seed_everything`, `rng_state`/`set_rng_state` (for exact resume), `print0`, `all_reduce`, `all_reduce_mean`.

The xla path (TPU through torch_xla) is small and UNVERIFIED: no TPU was available while writing it;
only its dispatch logic is tested, with torch_xla mocked.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from budgetlm import ui
from budgetlm.calibration import CPU_COMPILE_MIN_BUDGET_S, compiles_by_default
from budgetlm.config import BudgetError, refuse_torchrun

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    device: torch.device  # where tensors live
    device_type: str  # cpu | cuda | mps | xla
    precision: str  # fp32 | bf16 | fp16: the autocast compute dtype
    precision_reason: str  # one line: why this precision was chosen
    rank: int = 0  # global rank under torchrun, 0 otherwise
    local_rank: int = 0  # rank on this host
    world_size: int = 1  # number of processes
    ddp: bool = False  # True when torch.distributed was initialised by us

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]


# --------------------------------------------------------------------------------------------------
# devices


def _xla_available() -> bool:
    try:
        import torch_xla  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "no xla"
        return False
    return True


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


# device type -> "is it usable here"; auto picks the first available in this order.
DEVICE_CHECKS: dict[str, Callable[[], bool]] = {
    "cuda": torch.cuda.is_available,
    "xla": _xla_available,
    "mps": _mps_available,
    "cpu": lambda: True,
}


def detect_device_type(requested: str = "auto") -> str:
    if requested == "auto":
        return next(name for name, ok in DEVICE_CHECKS.items() if ok())
    if requested not in DEVICE_CHECKS:
        raise BudgetError(f"unknown device {requested!r}: choose auto, {', '.join(DEVICE_CHECKS)}")
    if not DEVICE_CHECKS[requested]():
        raise BudgetError(f"--device {requested} requested but no {requested} device is available here")
    return requested


def _torch_device(device_type: str, local_rank: int) -> torch.device:
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if device_type == "xla":
        import torch_xla.core.xla_model as xm

        return xm.xla_device()
    return torch.device(device_type)


# --------------------------------------------------------------------------------------------------
# precision


def _time_matmul(dtype: torch.dtype, n: int, reps: int, budget_s: float = 0.05) -> float:
    """FLOP/s of an (n x n) @ (n x n) matmul on CPU; stops early when one rep exceeds budget_s."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    best = float("inf")
    for _ in range(reps + 1):  # the first rep warms up the kernel
        t0 = time.perf_counter()
        a @ b
        dt = time.perf_counter() - t0
        best = min(best, dt)
        if dt > budget_s:  # a slow (emulated) dtype: no need to time it precisely
            break
    return 2 * n**3 / best


@functools.lru_cache(maxsize=None)
def cpu_matmul_flops(precision: str, n: int = 512, reps: int = 5) -> float:
    """Measured CPU matmul throughput for a precision (cached per process, a few ms each)."""
    return _time_matmul(DTYPES[precision], n, reps)


def _cuda_precision() -> tuple[str, str]:
    if torch.cuda.is_bf16_supported():
        return "bf16", "the GPU supports bf16"
    return "fp16", "the GPU has no bf16: fp16 autocast with a gradient scaler"


def _cpu_precision() -> tuple[str, str]:
    # Some CPUs run bf16 matmuls natively (AVX512-BF16, AMX) and twice as fast as fp32; others
    # emulate them ~100x slower. Only a measurement tells, so probe once (~10 ms) and require a
    # clear win before giving up fp32's accuracy.
    # Interleaved rounds, best of each: a burst of other load on a shared machine then slows one
    # round of both, not all of one (a single 256^3 probe once chose fp32 here under load).
    f32 = bf16 = 0.0
    for _ in range(3):
        f32 = max(f32, _time_matmul(DTYPES["fp32"], 384, 3))
        bf16 = max(bf16, _time_matmul(DTYPES["bf16"], 384, 3))
    ratio = bf16 / f32
    if ratio >= 1.3:
        return "bf16", f"measured bf16 matmul {ratio:.1f}x faster than fp32 on this CPU"
    return "fp32", f"measured bf16 matmul only {ratio:.2f}x fp32 on this CPU: staying in fp32"


def _time_attention(dtype: torch.dtype, reps: int = 3) -> float:
    """Seconds of one SDPA forward and backward at a small training shape (B 8, 2 heads of 64, T 128,
    with a padding mask, which fine-tuning uses), best of `reps`."""
    q, k, v = (torch.randn(8, 2, 128, 64, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.ones(8, 1, 1, 128, dtype=torch.bool)
    best = float("inf")
    for _ in range(reps + 1):  # the first rep warms up the kernel
        t0 = time.perf_counter()
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


@functools.lru_cache(maxsize=None)
def cpu_attention_fp32() -> tuple[bool, str]:
    """Whether attention should run in fp32 inside bf16 autocast on this CPU, and why (measured once
    per process, ~0.1 s). On some CPUs the flash-attention kernel's backward is several times slower
    in bf16 than in fp32 (docs/bench/downstream.md), on others bf16 wins: only a measurement tells."""
    f32 = bf16 = float("inf")
    for _ in range(2):  # interleaved rounds, as in _cpu_precision
        f32 = min(f32, _time_attention(torch.float32))
        bf16 = min(bf16, _time_attention(torch.bfloat16))
    if bf16 > 1.1 * f32:
        return True, f"attention in fp32: measured {bf16 / f32:.1f}x faster than bf16 on this CPU"
    return False, f"attention in bf16: measured {f32 / bf16:.2f}x the speed of fp32 on this CPU"


def attention_fp32(rt: Runtime) -> bool:
    """Run attention in fp32 under this runtime's autocast (CPU under bf16 only, where measured faster)."""
    return rt.device.type == "cpu" and rt.precision == "bf16" and cpu_attention_fp32()[0]


def set_attention_precision(model: torch.nn.Module, fp32: bool) -> None:
    """Attention in fp32 (or not) under autocast, in budgetlm's and HF models alike; training and
    `eval` both take `attention_fp32(rt)`, so `eval` reproduces the figure the run reported."""
    for module in model.modules():
        if hasattr(module, "set_fp32_attention"):
            module.set_fp32_attention(fp32)


def attention_note(rt: Runtime) -> str:
    """'; attention in fp32: measured ...' where attention_fp32(rt), else '' (for run headers)."""
    return f"; {cpu_attention_fp32()[1]}" if attention_fp32(rt) else ""


# device type -> automatic precision rule
AUTO_PRECISION: dict[str, Callable[[], tuple[str, str]]] = {
    "cuda": _cuda_precision,
    "cpu": _cpu_precision,
    "mps": lambda: ("fp32", "mps: fp32 (bf16 autocast support varies across macOS versions)"),
    "xla": lambda: ("bf16", "TPUs compute in bf16"),
}


def choose_precision(device_type: str, requested: str = "auto") -> tuple[str, str]:
    if requested == "auto":
        return AUTO_PRECISION[device_type]()
    if requested not in DTYPES:
        raise BudgetError(f"unknown precision {requested!r}: choose auto, fp32, bf16 or fp16")
    if requested == "fp16" and device_type == "cpu":
        raise BudgetError("--precision fp16 is not supported on CPU: use bf16 or fp32")
    return requested, f"--precision {requested} requested"


# --------------------------------------------------------------------------------------------------
# process set-up


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def keep_freed_cpu_memory() -> bool:
    """Stop glibc from handing large tensors back to the OS between training steps.

    glibc serves allocations above its mmap threshold (at most 32 MB: the logits and their gradients)
    from fresh mmap'd pages and unmaps them on free, so every step page-faults them back in. Serving
    everything from the heap and never trimming it cut a CPU training step by 5-9% and the fp32
    cross-entropy on 4096 x 8192 logits by 25% (docs/bench/models.md). Process-wide, Linux/glibc only;
    returns whether it was applied. The price: the process keeps its peak heap until it exits."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))


def init_runtime(device: str = "auto", precision: str = "auto", seed: int = 0, distributed: bool = False) -> Runtime:
    """Detect the device, join the process group when launched by torchrun (only where the caller
    trains across processes: `distributed`), choose precision."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if not distributed:
        refuse_torchrun()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device_type = detect_device_type(device)
    ddp = False
    if world > 1 and device_type != "xla":
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        ddp = True
    prec, reason = choose_precision(device_type, precision)
    rt = Runtime(_torch_device(device_type, local_rank), device_type, prec, reason,
                 rank, local_rank, world, ddp)
    # "auto" measures each process's CPU on its own; one rank must not train in bf16 while another
    # trains in fp32 (FSDP would all-gather mismatched dtypes), so every rank takes rank 0's choice.
    rt.precision, rt.precision_reason = broadcast_object(rt, (rt.precision, rt.precision_reason))
    seed_everything(seed)
    if device_type == "cpu":
        keep_freed_cpu_memory()
    if device_type == "cuda":
        # TF32 matmuls: ~8x the fp32 tensor-core rate on Ampere+ at negligible accuracy cost.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return rt


def shutdown(rt: Runtime) -> None:
    if rt.ddp:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def print0(rt: Runtime | None, message: str) -> None:
    if rt is None or rt.is_main:
        ui.info(message)


# --------------------------------------------------------------------------------------------------
# precision at run time


def autocast(rt: Runtime):
    """The mixed-precision context for forward passes (a no-op in fp32)."""
    if rt.precision == "fp32":
        return contextlib.nullcontext()
    # torch_xla registers an "xla" autocast device type (UNVERIFIED here: no TPU was available).
    return torch.autocast(device_type=rt.device_type, dtype=rt.dtype)


def make_grad_scaler(rt: Runtime):
    """fp16 needs loss scaling to keep small gradients representable (Micikevicius et al. 2018,
    "Mixed Precision Training"); bf16 and fp32 do not. GradScaler runs on any device type."""
    return torch.amp.GradScaler(rt.device_type) if rt.precision == "fp16" else None


def optimizer_step(rt: Runtime, optimizer: torch.optim.Optimizer, scaler=None) -> None:
    if rt.device_type == "xla":
        import torch_xla.core.xla_model as xm

        xm.optimizer_step(optimizer)  # all-reduces gradients across TPU cores, then steps
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def mark_step(rt: Runtime) -> None:
    """Cut the lazy xla graph once per optimizer step; nothing elsewhere."""
    if rt.device_type == "xla":
        import torch_xla.core.xla_model as xm

        xm.mark_step()


def synchronize(rt: Runtime) -> None:
    """Wait for queued device work so that wall-clock timings are honest."""
    if rt.device_type == "cuda":
        torch.cuda.synchronize(rt.device)
    elif rt.device_type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------------------------------
# model wrapping


def _have_cxx() -> bool:
    """Inductor's CPU backend compiles C++: without a compiler it cannot work."""
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++", "cl"))


def compile_wanted(rt: Runtime, mode: str = "auto", budget_s: float | None = None) -> tuple[bool, str]:
    """(compile?, why). auto: on for CUDA; on CPU only for budgets >= CPU_COMPILE_MIN_BUDGET_S with a
    C++ compiler present; off elsewhere (MPS/XLA have their own compilers)."""
    if mode in ("on", "off"):
        return mode == "on", f"--compile {mode}"
    if rt.device_type == "cuda":
        return True, "auto: CUDA"
    if rt.device_type == "cpu":
        if not compiles_by_default("cpu", budget_s):
            return False, f"auto: CPU budget under {CPU_COMPILE_MIN_BUDGET_S / 60:g} minutes"
        if not _have_cxx():
            return False, "auto: no C++ compiler for inductor"
        return True, f"auto: CPU budget of {CPU_COMPILE_MIN_BUDGET_S / 60:g} minutes or more"
    return False, f"auto: off on {rt.device_type}"


def maybe_compile(model: torch.nn.Module, rt: Runtime, mode: str = "auto",
                  budget_s: float | None = None) -> torch.nn.Module:
    """torch.compile the model when `compile_wanted` says so.

    Compilation is lazy (it happens on the first forward), so a failure there must not kill the run
    either: dynamo's `suppress_errors` makes a failed graph fall back to eager code with a warning.
    """
    want, _ = compile_wanted(rt, mode, budget_s)
    if not want:
        return model
    try:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        return torch.compile(model)
    except Exception as e:  # noqa: BLE001 - compile support varies by platform
        ui.warn(f"torch.compile failed ({type(e).__name__}: {e}); continuing without it")
        return model


def wrap_ddp(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    if not rt.ddp:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [rt.local_rank] if rt.device_type == "cuda" else None
    return DDP(model, device_ids=ids)


def shard_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """FSDP (FSDP2's `fully_shard`): each transformer block is one shard unit, the rest (embedding,
    final norm, head) the root; parameters become DTensors split across the ranks, and weights are
    all-gathered per block in forward/backward. The module is sharded in place and returned."""
    from torch.distributed.fsdp import fully_shard

    if not rt.ddp:
        return model
    for block in getattr(model, "blocks", []):
        fully_shard(block)
    fully_shard(model)
    return model


@dataclass
class TrainSetup:
    """A model made ready for training steps, the same way for pre-training, fine-tuning and the
    calibration that predicts their speed (so the calibration measures what training runs)."""

    module: torch.nn.Module  # what the loop calls: sharded (FSDP) or DDP-wrapped, maybe compiled
    model: torch.nn.Module  # the plain model underneath: state dicts, evaluation, checkpoints
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    parallel: str  # none | ddp | fsdp
    compiled: bool  # torch.compile applied
    compile_reason: str  # one line: why compile is on or off


def prepare_training(model: torch.nn.Module, rt: Runtime, compile: str = "auto", budget_s: float | None = None,
                     fsdp: bool = False) -> TrainSetup:
    """Move `model` to the device, shard it (FSDP, under torchrun) or wrap it in DDP, compile it when
    `compile_wanted` says so, and make the fp16 grad scaler. Build the optimizer from `.model`
    afterwards: with FSDP its parameters are the sharded ones."""
    model.to(rt.device)
    set_attention_precision(model, broadcast_object(rt, attention_fp32(rt)))  # all ranks take rank 0's
    parallel = "none"
    if rt.ddp:
        parallel = "fsdp" if fsdp else "ddp"
    if parallel == "fsdp":
        shard_model(model, rt)
    wrapped = wrap_ddp(model, rt) if parallel == "ddp" else model
    want, reason = compile_wanted(rt, compile, budget_s)
    module = maybe_compile(wrapped, rt, "on" if want else "off")
    return TrainSetup(module, model, make_grad_scaler(rt), parallel, module is not wrapped, reason)


def full_state(model: torch.nn.Module, optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unsharded model and optimizer state dicts of a sharded model, on CPU, on rank 0 (other ranks
    get empty dicts). A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, optimizer, model_state: dict[str, Any] | None,
                    optim_state: dict[str, Any] | None) -> None:
    """Load full (unsharded) state dicts, present on every rank, into a sharded model/optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    if model_state is not None:
        set_model_state_dict(model, model_state, options=opts)
    if optim_state is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=opts)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers (its state_dict has clean keys)."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def no_sync(model: torch.nn.Module, sync: bool):
    """Skip the DDP gradient all-reduce on all but the last micro-batch of an accumulation."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def all_reduce(rt: Runtime, values: list[float], op: str = "sum") -> list[float]:
    """Element-wise "sum" or "max" of `values` over the ranks (`values` itself in one process)."""
    if not rt.ddp:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=rt.device if rt.device_type == "cuda" else "cpu")
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t.tolist()


def all_reduce_mean(rt: Runtime, value: float) -> float:
    return all_reduce(rt, [value])[0] / rt.world_size if rt.ddp else value


def broadcast_object(rt: Runtime, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a picklable object; e.g. the plan every rank must train)."""
    if not rt.ddp:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def single_process(rt: Runtime) -> Runtime:
    """This process alone on the same device: no collectives, no DDP wrapper. For work one rank does
    while the others wait, such as measuring the device (a DDP wrapper there would wait forever for
    ranks that are not building the same model)."""
    return replace(rt, rank=0, world_size=1, ddp=False)


def barrier(rt: Runtime) -> None:
    if rt.ddp:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------------------------------
# peak FLOP/s for MFU

def peak_flops(rt: Runtime) -> tuple[float, str]:
    """(FLOP/s, where it comes from) of one device in the precision in use: the peak the planner uses
    (`calibration.local`, whose docstring has the rule), so training's MFU and the plan's agree.

    CUDA: the catalog entry the GPU's name matches (catalog.json "match"). A GPU the catalog does
    not know, and a CPU, get a measured dense matmul: the highest measured so far on this device,
    kept in the calibration file (rank 0 writes it), where `plan --device local` reads it too.
    """
    from budgetlm import calibration
    from budgetlm.catalog import load_catalog, match_device
    from budgetlm.hardware import device_key

    if rt.device_type == "cuda":
        props = torch.cuda.get_device_properties(rt.device)
        catalog = load_catalog()
        cid = match_device(props.name, catalog, int(props.total_memory), "gpu")
        peak = catalog[cid].training_peak(rt.precision) if cid else None
        if peak:
            return peak, f"{props.name}: {catalog[cid].peak_note(rt.precision)}"

        def measure(n: int = 4096, reps: int = 10) -> float:
            a = torch.randn(n, n, device=rt.device, dtype=rt.dtype)
            for _ in range(3):
                a @ a
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ a
            torch.cuda.synchronize()
            return reps * 2 * n**3 / (time.perf_counter() - t0)

        name, kind = props.name, "gpu"
    elif rt.device_type == "cpu":
        from budgetlm.hardware import cpu_info

        name, kind, measure = cpu_info()["name"], "cpu", lambda: cpu_matmul_flops(rt.precision, 1024, 8)
    else:
        return float("nan"), f"no peak known for {rt.device_type}"
    key = device_key({"type": rt.device_type, "name": name})
    flops = measure()  # CPU: best of 8 1024^3 matmuls; GPU: 10 4096^3 ones
    try:
        stored = calibration.measured_peak(key, rt.precision) or 0.0
        if flops > stored and rt.is_main:
            calibration.save_measured_peak(key, name, kind, rt.precision, flops)
    except BudgetError:  # a corrupt calibration file: leave it for plan and bench to report
        stored = 0.0
    # other work on the machine only slows a measurement: the highest one seen is the peak
    flops = max(flops, stored)
    return flops, f"measured {rt.precision} dense matmul on {name} ({flops / 1e12:,.3g} TFLOP/s, calibration file)"


# --------------------------------------------------------------------------------------------------
# RNG state (exact resume)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
