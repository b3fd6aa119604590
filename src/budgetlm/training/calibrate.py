"""Calibration: measured training steps on this device, written to the calibration file that
`plan` and `train` read.

Each measurement runs real training steps through the same set-up and loop as `budgetlm train`
(`runtime.prepare_training` + `train.loop.train_loop`: autocast, grad scaler, compile, optimizer),
so the plan predicts the speed of what training runs. For a few model sizes (the depth dial) and
each precision it records tokens/s, achieved FLOP/s (FLOPs per token from `plan.flops_per_token`)
and peak memory: on CUDA the allocator's peak; on a CPU the bytes of parameters, gradients and
optimizer state plus the activations autograd saved, counted with
`torch.autograd.graph.saved_tensors_hooks` (unique storages, parameters excluded).

`auto_plan(...)` is what `train` calls when it is given no model: calibrate once per device,
precision, sequence length and compile setting (a few seconds, cached), then `plan.auto_plan`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from budgetlm import calibration as calib
from budgetlm.calibration import points_for, setting
from budgetlm import planning as P
from budgetlm import runtime, ui
from budgetlm.config import BudgetError, ranged
from budgetlm.models.config import ModelConfig
from budgetlm.models.presets import model_config
from budgetlm.models.transformer import Transformer
from budgetlm.training.loop import LoopConfig, LoopHooks, apply_update, train_loop
from budgetlm.training.optim import OptimConfig, build_optimizer, muon_precision
from budgetlm.training.schedule import ScheduleConfig

MASK_RATE = 0.25  # masked models are measured predicting every fourth position (Cramming's rate)


@dataclass
class CalibrationConfig:
    depths: list[int] = field(default_factory=lambda: [1, 2, 3])  # model sizes to measure (the presets' depth dial)
    aspect: int = ranged(64, 16, 256)  # channels per layer of the measured models (64: the depth dial; plans use 16-48)
    seq_len: int = 128  # tokens per sequence
    micro_batch: int = 0  # sequences per step (0 = 2048 tokens on CPU, 16384 on accelerators)
    vocab_size: int = 8192  # vocabulary of the measured models
    objective: Literal["causal", "masked"] = "causal"  # causal (next-token) or masked (BERT-style) models
    precisions: list[str] = field(default_factory=list)  # fp32 / bf16 / fp16 (empty = what the device supports)
    seconds: float = 2.0  # measured seconds per model size and precision (after warm-up), split over rounds
    rounds: int = 2  # interleaved measuring rounds; each size keeps its fastest (robust on a shared machine)
    optimizer: Literal["adamw", "muon"] = "adamw"  # optimizer whose step is part of the measured step
    compile: Literal["on", "off"] = "off"  # torch.compile the measured models, as training does for long budgets
    dropout: float = ranged(0.0, 0.0, 0.95)  # residual dropout of the measured models (it costs time at small sizes)
    calibration: str = ""  # calibration file to update (default: $BUDGETLM_HOME/calibration.json)
    write: bool = True  # write the measurements to the calibration file
    disk: bool = True  # also measure how fast this disk reads (for plan's input-bandwidth check)
    memory: bool = True  # also measure peak memory (one extra step per size)

    def __post_init__(self) -> None:
        if self.seq_len < 1 or self.micro_batch < 0 or not self.depths or min(self.depths) < 1:
            raise BudgetError("--seq-len and --depths must be positive and --micro-batch >= 0")
        if not self.seconds > 0 or self.rounds < 1:
            raise BudgetError(f"--seconds must be > 0 and --rounds at least 1, got {self.seconds:g} and {self.rounds}")
        unknown = [p for p in self.precisions if p not in P.PRECISIONS]
        if unknown:
            raise BudgetError(f"unknown precision {unknown[0]!r}: choose from {', '.join(P.PRECISIONS)}")


# --------------------------------------------------------------------------------------------------
# one measurement


def _batch(cfg: ModelConfig, micro_batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len), generator=g)
    if cfg.causal:
        targets = idx.clone()
    else:  # every 1/MASK_RATE-th position predicted: the planner's pred_fraction exactly
        targets = torch.full_like(idx, -100)
        step = max(1, round(1 / MASK_RATE))
        targets[:, ::step] = idx[:, ::step]
    return {"idx": idx, "targets": targets}


def saved_tensor_bytes(model, batch: dict[str, torch.Tensor], rt: runtime.Runtime) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass: unique storages,
    parameters and buffers excluded (they are model state, not activations)."""
    owned = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in owned:
            seen.setdefault(s.data_ptr(), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), runtime.autocast(rt):
        _, loss = model(**batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def state_tensor_bytes(model, optimizer) -> dict[str, int]:
    params = list(model.parameters())
    opt = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
              if torch.is_tensor(v))
    return {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.numel() * p.element_size() for p in params if p.grad is not None),
        "optimizer": opt,
    }


def _memory(setup: runtime.TrainSetup, optimizer, batch, rt: runtime.Runtime) -> dict[str, Any]:
    if rt.device_type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated()),
                "memory_method": "torch.cuda.max_memory_allocated"}
    model = setup.model
    # one extra (untimed) step with the hooks: parameters/grads/state exist from the timed steps
    with runtime.autocast(rt):
        _, loss = model(**batch)
    loss.backward()  # leave gradients allocated, as they are at the peak
    states = state_tensor_bytes(model, optimizer)
    model.zero_grad(set_to_none=True)
    saved = saved_tensor_bytes(model, batch, rt)
    return {**states, "saved_activation_bytes": saved, "peak_memory_bytes": sum(states.values()) + saved,
            "memory_method": "params + grads + optimizer state + saved_tensors_hooks"}


def _timed_steps(setup, optimizer, batch, rt, steps: int) -> list[float]:
    """Seconds of each of `steps` optimizer steps, run by the training loop itself."""
    ends: list[float] = []
    hooks = LoopHooks(on_step=lambda m, s: ends.append(s.elapsed_s))
    train_loop(setup, lambda: batch, optimizer, rt, LoopConfig(max_steps=steps, eval_every=0, checkpoint_every_s=0,
               log_every=10**9), ScheduleConfig(warmup=0.0, decay="constant"), hooks=hooks, show_progress=False)
    return [b - a for a, b in zip([0.0] + ends[:-1], ends)]


def optimizer_step_seconds(setup, optimizer, batch, rt, reps: int = 5) -> float:
    """Median seconds of the part of a training step that accumulation pays once per optimizer step
    (the loop's `apply_update` at its default clipping norm), timed on real gradients."""
    times = []
    for _ in range(reps):
        with runtime.autocast(rt):
            _, loss = setup.model(**batch)
        (setup.scaler.scale(loss) if setup.scaler is not None else loss).backward()
        runtime.synchronize(rt)
        t0 = time.perf_counter()
        apply_update(setup.module, optimizer, setup.scaler, rt, LoopConfig.grad_clip)
        runtime.synchronize(rt)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(cfg: ModelConfig, micro_batch: int, seq_len: int, rt: runtime.Runtime, seconds: float = 2.0,
            optimizer: str = "adamw", compile: str = "off", warmup: int = 2, min_steps: int = 2,
            memory: bool = True, dropout: float = 0.0, optimizer_time: bool = True) -> dict[str, Any]:
    """Time training steps (forward, backward, optimizer) of a fresh model as training runs them."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg, dropout=dropout)
    setup = runtime.prepare_training(Transformer(cfg), rt, compile=compile)
    opt = build_optimizer(optimizer, setup.model, OptimConfig(muon_precision=muon_precision(rt.precision)))
    batch = {k: v.to(rt.device) for k, v in _batch(cfg, micro_batch, seq_len).items()}
    if rt.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    warm = _timed_steps(setup, opt, batch, rt, warmup)  # compiles, allocates, warms caches
    n = max(min_steps, math.ceil(seconds / max(warm[-1], 1e-6)))
    times = _timed_steps(setup, opt, batch, rt, n)
    step_s = statistics.median(times)
    tokens = micro_batch * seq_len
    fpt = P.flops_per_token(cfg, seq_len, None if cfg.causal else MASK_RATE)
    out: dict[str, Any] = {
        "depth": cfg.n_layer, "width": cfg.n_embd, "params": sum(p.numel() for p in setup.model.parameters()),
        "seq_len": seq_len, "micro_batch": micro_batch, "precision": rt.precision, "compile": setup.compiled, "dropout": dropout,
        "optimizer": optimizer, "steps": len(times), "step_seconds": step_s, "tokens_per_second": tokens / step_s,
        "flops_per_token": fpt, "achieved_flops": fpt * tokens / step_s,
    }
    if optimizer_time:  # five more forward and backward passes: once per calibration is enough
        out["optimizer_seconds"] = optimizer_step_seconds(setup, opt, batch, rt)
    if memory:
        out.update(_memory(setup, opt, batch, rt))
    return out


def disk_read_speed(folder: Path, size_bytes: int = 64 * 2**20) -> float | None:
    """Bytes/s reading a fresh file from `folder` after asking the OS to drop it from the page cache
    (posix_fadvise DONTNEED; where that is unavailable the figure may be the cache's speed)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".diskbench-")
    try:
        with os.fdopen(fd, "wb") as fh:
            block = os.urandom(1 << 20)
            for _ in range(size_bytes >> 20):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        with open(name, "rb") as fh:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            while fh.read(1 << 22):
                pass
            return size_bytes / (time.perf_counter() - t0)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


# --------------------------------------------------------------------------------------------------
# calibrating the local device


def default_micro_batch(kind: str, seq_len: int) -> int:
    return max(1, P.MAX_MICRO_TOKENS.get(kind, 16384) // seq_len)


def _supported(device, device_type: str, asked: list[str]) -> list[str]:
    supported = [p for p in P.PRECISIONS if P.peak_flops(device, p)]
    if device_type == "cpu":
        supported = [p for p in supported if p != "fp16"]  # the runtime refuses fp16 autocast on CPU
    bad = [p for p in asked if p not in supported]
    if bad:
        raise BudgetError(f"{device.id} cannot run {', '.join(bad)}: it supports {', '.join(supported) or 'none'}")
    return asked or supported


# Rounds of one size whose step times differ by more than this were disturbed (another process took
# the cores): such a calibration is measured again rather than kept.
NOISY_SPREAD = 1.25
NOISY_RETRIES = 2


def _rounds(cfg: CalibrationConfig, rt: runtime.Runtime, mb: int) -> dict[int, list[dict[str, Any]]]:
    """Every depth measured in interleaved rounds: a burst of other work then slows one round of
    every size, not all rounds of one size."""
    found: dict[int, list[dict[str, Any]]] = {d: [] for d in cfg.depths}
    for rnd in range(cfg.rounds):
        for depth in cfg.depths:
            mcfg = _shape(cfg, depth)
            found[depth].append(measure(mcfg, mb, cfg.seq_len, rt, cfg.seconds / cfg.rounds, cfg.optimizer,
                                        cfg.compile, memory=cfg.memory and rnd == 0, dropout=cfg.dropout,
                                        optimizer_time=rnd == 0))
    return found


def _shape(cfg: CalibrationConfig, depth: int) -> ModelConfig:
    width = max(32, round(cfg.aspect * depth / 32) * 32)  # heads of 32 or 64 channels
    return model_config(depth, cfg.vocab_size, causal=cfg.objective == "causal", max_seq_len=cfg.seq_len, width=width)


def spread(rounds: list[dict[str, Any]]) -> float:
    times = [r["step_seconds"] for r in rounds]
    return max(times) / min(times)


def _measure_precision(cfg: CalibrationConfig, rt: runtime.Runtime, device, mb: int) -> list[dict[str, Any]]:
    """Every depth at one precision; each keeps its fastest round, and a measurement whose rounds
    disagree by more than NOISY_SPREAD is taken again (up to NOISY_RETRIES times)."""
    for attempt in range(NOISY_RETRIES + 1):
        found = _rounds(cfg, rt, mb)
        worst = max(spread(v) for v in found.values())
        if cfg.rounds < 2 or worst <= NOISY_SPREAD:
            break
        if attempt < NOISY_RETRIES:
            ui.warn(f"calibration rounds disagree by {worst:.2f}x (a busy machine?): measuring again")
        else:
            ui.warn(f"calibration rounds still disagree by {worst:.2f}x: keeping the fastest; plans may be off")
    points = []
    for depth, rounds in found.items():
        r = {**rounds[0], **min(rounds, key=lambda x: x["step_seconds"])}
        r["round_spread"] = round(spread(rounds), 3)
        mcfg = _shape(cfg, depth)
        peak = P.peak_flops(device, rt.precision)
        r["mfu"] = r["achieved_flops"] / peak if peak else None
        pred = None if mcfg.causal else MASK_RATE
        predicted = P.memory_breakdown(mcfg, device, mb, cfg.seq_len, rt.precision, False, cfg.optimizer,
                                       pred_fraction=pred)
        act = P.activation_bytes(mcfg, mb, cfg.seq_len, rt.precision, pred_fraction=pred)
        r["predicted_saved_activation_bytes"] = sum(act.values()) + predicted["weight_copies"]
        r["predicted_state_bytes"] = predicted["weights"] + predicted["gradients"] + predicted["optimizer"]
        points.append(r)
    return points


def calibrate(cfg: CalibrationConfig, rt: runtime.Runtime | None = None) -> dict[str, Any]:
    """Measure the local device and (by default) merge the result into the calibration file.
    Returns the device entry with `device`, `device_key`, `micro_batch` and `calibration_file`."""
    from budgetlm.hardware import device_key

    path = cfg.calibration or None
    device, info, _ = calib.local(path=path)  # a corrupt file fails here, before minutes of measuring
    # measured by this process alone: under torchrun only rank 0 calibrates while the others wait
    rt = runtime.single_process(rt or runtime.init_runtime("auto", "fp32", seed=0))
    precisions = _supported(device, rt.device_type, cfg.precisions)
    mb = cfg.micro_batch or default_micro_batch(device.kind, cfg.seq_len)
    results = {p: _measure_precision(cfg, dataclasses.replace(rt, precision=p), device, mb) for p in precisions}
    entry = {
        "name": info["name"], "kind": device.kind, "catalog_id": info.get("catalog_id"),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "peak_flops": {p: device.peak_flops.get(p) for p in precisions},
        "precisions": results,
    }
    old = calib.load(path)["devices"].get(device_key(info)) or {}
    speed = disk_read_speed(calib.home() if not path else Path(path).parent) if cfg.disk else None
    if speed or old.get("disk_read_bytes_per_second"):
        entry["disk_read_bytes_per_second"] = speed or old["disk_read_bytes_per_second"]
    # a new measurement replaces the old points of its precision and setting (sequence length,
    # compile, dropout) and keeps the others (plans use points measured as they will train)
    here = (cfg.seq_len, cfg.compile == "on", cfg.dropout)
    same = lambda p: setting(p) == here  # noqa: E731
    kept = {p: [r for r in pts if not same(r)] for p, pts in (old.get("precisions") or {}).items()}
    merged = {**old, **entry, "precisions": {**kept, **{p: kept.get(p, []) + r for p, r in results.items()}}}
    out = {"device": device.id, "device_key": device_key(info), "micro_batch": mb, **merged}
    if cfg.write:
        out["calibration_file"] = str(calib.save_device(device_key(info), merged, path))
    return out


def auto_plan(budget_s: float, tokens_available: int | None, seq_len: int, rt: runtime.Runtime,
              objective: str = "causal", vocab_size: int = 8192, optimizer: str = "adamw",
              compile: bool = False, calibration_path: str | None = None, seconds: float = 1.5,
              dropout: float = 0.0) -> P.Plan:
    """For `budgetlm train` without a model: calibrate this device once for this precision, sequence
    length and compile setting (cached in the calibration file), then plan the compute-optimal model
    for the budget and the data (`plan.auto_plan`)."""
    device, info, entry = calib.local(path=calibration_path)
    entry = entry or {}
    usable = points_for(entry, rt.precision, seq_len, compile, dropout)
    if not usable:
        what = f"{rt.precision}, seq len {seq_len}" + (", compiled" if compile else "") + (f", dropout {dropout:g}" if dropout else "")
        ui.info(f"calibrating {info['name']} ({what}): {'about a minute' if compile else 'a few seconds'}, once")
        # shapes like the planner's candidates (32 channels per layer, inside its 16-48 range), which
        # predicted their speed better than the depth dial's wide 1 x 64 and 3 x 192
        cfg = CalibrationConfig(depths=[2, 4], aspect=32, seq_len=seq_len, precisions=[rt.precision], vocab_size=vocab_size,
                                objective=objective, seconds=seconds, rounds=3, optimizer=optimizer,
                                compile="on" if compile else "off", calibration=calibration_path or "",
                                disk=False, memory=False, dropout=dropout)
        usable = points_for(calibrate(cfg, rt), rt.precision, seq_len, compile, dropout)
    return P.auto_plan(device, budget_s, tokens_available, seq_len, objective, vocab_size, usable,
                       rt.world_size, optimizer, precisions=(rt.precision,),
                       pred_fraction=None if objective == "causal" else MASK_RATE,
                       allow_checkpointing=P.TRAINER_CHECKPOINTING)


# A run whose speed is this far from its plan's corrects the calibration (with its own measurement).
CORRECT_BEYOND = 0.15


def record_run(point: dict[str, Any], precision: str, calibration_path: str | None = None) -> None:
    """Add a training run's measured speed to this device's calibration, replacing earlier points of
    the same shape and setting (sequence length, compile, dropout): the next plan predicts from
    what ran."""
    from budgetlm.hardware import device_key

    device, info, _ = calib.local(path=calibration_path)
    data = calib.load(calibration_path)
    entry = data["devices"].get(device_key(info)) or {"name": info["name"], "kind": device.kind,
                                                      "catalog_id": info.get("catalog_id"), "precisions": {}}
    same = lambda p: (p.get("depth"), p.get("width"), setting(p)) == (point.get("depth"), point.get("width"), setting(point))  # noqa: E731
    points = [p for p in (entry.get("precisions") or {}).get(precision, []) if not same(p)] + [point]
    entry.setdefault("precisions", {})[precision] = points
    calib.save_device(device_key(info), entry, calibration_path)
