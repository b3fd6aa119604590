"""`budgetlm bench`: short measured training steps on this device; writes the calibration file.

For a few model sizes (the depth dial) and each precision: tokens/s, achieved FLOP/s and MFU
(FLOPs per token from `budgetlm.plan`, peak from the catalog or, on a CPU, the core x clock x
vector-width estimate), and peak memory: on CUDA the allocator's peak; on a CPU the bytes of
parameters, gradients and optimizer state plus the activations autograd saved, counted with
`torch.autograd.graph.saved_tensors_hooks` (unique storages, parameters excluded). The plan's
prediction is shown beside each measurement.

`auto_configure(...)` is what `budgetlm train` calls when it is given no model: calibrate once per
device (a few seconds, cached), then `plan.auto_plan` for the budget and the data.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from budgetlm import calibration as calib
from budgetlm import plan as P
from budgetlm import ui
from budgetlm.config import BudgetError, add_dataclass_args, from_args


@dataclass
class BenchConfig:
    depths: list[int] = field(default_factory=lambda: [1, 2, 3])  # model sizes to measure (presets depth dial)
    seq_len: int = 128  # tokens per sequence
    micro_batch: int = 0  # sequences per step (0 = 2048 tokens on CPU, 16384 on accelerators)
    vocab_size: int = 8192  # vocabulary of the measured models
    objective: str = "causal"  # causal | masked
    precisions: list[str] = field(default_factory=list)  # fp32 / bf16 / fp16 (empty = what the device supports)
    seconds: float = 2.0  # measured seconds per model size and precision (after warm-up), split over rounds
    rounds: int = 2  # interleaved measuring rounds; each size keeps its fastest (robust on a shared machine)
    optimizer: str = "adamw"  # adamw | muon
    calibration: str = ""  # calibration file to update (default: $BUDGETLM_HOME/calibration.json)
    write: bool = True  # write the measurements to the calibration file
    disk: bool = True  # also measure how fast this disk reads (for plan's input-bandwidth check)


# --------------------------------------------------------------------------------------------------
# measurement


def _batch(cfg, micro_batch: int, seq_len: int, device, mask_rate: float = 0.25):
    import torch

    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len), generator=g)
    if cfg.causal:
        targets = idx.clone()
    else:  # every 1/mask_rate-th position predicted: the planner's pred_fraction exactly
        targets = torch.full_like(idx, -100)
        step = max(1, round(1 / mask_rate))
        targets[:, ::step] = idx[:, ::step]
    return idx.to(device), targets.to(device)


def saved_tensor_bytes(model, idx, targets, autocast_ctx) -> int:
    """Bytes of the tensors autograd saves for backward in one forward pass: unique storages,
    parameters and buffers excluded (they are model state, not activations)."""
    import torch

    owned = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in owned:
            seen.setdefault(s.data_ptr(), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_ctx():
        _, loss = model(idx, targets)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def state_tensor_bytes(model, optimizer) -> dict[str, int]:
    import torch

    params = list(model.parameters())
    opt = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
              if torch.is_tensor(v))
    return {
        "weights": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.numel() * p.element_size() for p in params if p.grad is not None),
        "optimizer": opt,
    }


def measure(cfg, micro_batch: int, seq_len: int, precision: str, device_type: str = "cpu",
            seconds: float = 2.0, optimizer: str = "adamw", warmup: int = 2, min_steps: int = 2,
            memory: bool = True) -> dict[str, Any]:
    """Time training steps (forward, backward, optimizer) of a fresh model; return the step time,
    throughput and memory, measured."""
    import contextlib

    import torch

    from budgetlm.models.transformer import Transformer
    from budgetlm.train.optim import OptimConfig, build_optimizer

    dev = torch.device(device_type)
    torch.manual_seed(0)
    model = Transformer(cfg).to(dev)
    opt = build_optimizer(optimizer, model, OptimConfig())
    idx, targets = _batch(cfg, micro_batch, seq_len, dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast_ctx():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=dtype)

    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device_type == "cuda" else None
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)

    def step():
        with autocast_ctx():
            _, loss = model(idx, targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)

    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    sync()
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_steps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = micro_batch * seq_len
    pred_fraction = None if cfg.causal else 0.25
    fpt = P.flops_per_token(cfg, seq_len, pred_fraction)
    out: dict[str, Any] = {
        "depth": cfg.n_layer, "params": sum(p.numel() for p in model.parameters()), "seq_len": seq_len,
        "micro_batch": micro_batch, "precision": precision, "steps": len(times), "step_seconds": step_s,
        "tokens_per_second": tokens / step_s, "flops_per_token": fpt, "achieved_flops": fpt * tokens / step_s,
    }
    if memory:
        if device_type == "cuda":
            out["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
            out["memory_method"] = "torch.cuda.max_memory_allocated"
        else:
            # one extra (untimed) step with the hooks: parameters/grads/state exist from the steps above
            with autocast_ctx():
                _, loss = model(idx, targets)
            loss.backward()  # leave gradients allocated, as they are at the peak
            states = state_tensor_bytes(model, opt)
            model.zero_grad(set_to_none=True)
            saved = saved_tensor_bytes(model, idx, targets, autocast_ctx)
            out.update(states)
            out["saved_activation_bytes"] = saved
            out["peak_memory_bytes"] = sum(states.values()) + saved
            out["memory_method"] = "params + grads + optimizer state + saved_tensors_hooks"
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
        try:
            os.unlink(name)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------
# calibration


def _device_type(info: dict[str, Any]) -> str:
    return {"cuda": "cuda", "cpu": "cpu", "mps": "mps"}.get(info["type"], "cpu")


def default_micro_batch(kind: str, seq_len: int) -> int:
    tokens = P.MAX_MICRO_TOKENS.get(kind, 16384)
    return max(1, tokens // seq_len)


def calibrate(depths: list[int], seq_len: int, precisions: list[str] | None = None, micro_batch: int = 0,
              vocab_size: int = 8192, objective: str = "causal", seconds: float = 2.0, optimizer: str = "adamw",
              path: str | Path | None = None, write: bool = True, disk: bool = True,
              show: bool = True, memory: bool = True, rounds: int = 2) -> dict[str, Any]:
    """Measure the local device and (by default) merge the result into the calibration file."""
    from budgetlm.catalog import load_catalog
    from budgetlm.hardware import device_key, local_device
    from budgetlm.models.presets import model_config

    calib.load(path)  # a corrupt file fails here, before minutes of measuring
    device, info = local_device(load_catalog())
    dtype = _device_type(info)
    supported = [p for p in P.PRECISIONS if P.peak_flops(device, p)]
    if dtype == "cpu":
        supported = [p for p in supported if p != "fp16"]  # the runtime refuses fp16 autocast on CPU
    precisions = precisions or supported
    bad = [p for p in precisions if p not in supported]
    if bad:
        raise BudgetError(f"{device.id} cannot run {', '.join(bad)}: it supports {', '.join(supported) or 'none'}")
    mb = micro_batch or default_micro_batch(device.kind, seq_len)
    if dtype == "cpu":
        from budgetlm.runtime import keep_freed_cpu_memory

        keep_freed_cpu_memory()  # as training does (runtime.init_runtime), so the speeds match
    results: dict[str, list[dict[str, Any]]] = {}
    rows = []
    for precision in precisions:
        best: dict[int, dict[str, Any]] = {}
        # Sizes are measured in interleaved rounds and each keeps its fastest round: on a shared
        # machine a burst of other work then slows one round, not one model size.
        for rnd in range(rounds):
            for depth in depths:
                cfg = model_config(depth, vocab_size, causal=objective == "causal", max_seq_len=seq_len)
                r = measure(cfg, mb, seq_len, precision, dtype, seconds / rounds, optimizer,
                            memory=memory and rnd == 0)
                if depth not in best or r["step_seconds"] < best[depth]["step_seconds"]:
                    best[depth] = {**best.get(depth, {}), **r}
        for depth in depths:
            cfg = model_config(depth, vocab_size, causal=objective == "causal", max_seq_len=seq_len)
            r = best[depth]
            peak = P.peak_flops(device, precision)
            r["mfu"] = r["achieved_flops"] / peak if peak else None
            predicted = P.memory_breakdown(cfg, device, mb, seq_len, precision, False, optimizer,
                                           pred_fraction=None if cfg.causal else 0.25)
            act = P.activation_bytes(cfg, mb, seq_len, precision, pred_fraction=None if cfg.causal else 0.25)
            r["predicted_saved_activation_bytes"] = sum(act.values()) + predicted["weight_copies"]
            r["predicted_state_bytes"] = predicted["weights"] + predicted["gradients"] + predicted["optimizer"]
            results.setdefault(precision, []).append(r)
            rows.append([precision, depth, f"{r['params'] / 1e6:.2f}M", f"{r['step_seconds'] * 1000:.0f} ms",
                         f"{r['tokens_per_second']:,.0f}", f"{r['achieved_flops'] / 1e9:,.1f}",
                         "-" if r["mfu"] is None else f"{r['mfu']:.2f}",
                         f"{r['peak_memory_bytes'] / 2**20:,.0f} MiB" if memory else "-"])
    if show:
        ui.table(f"bench on {info['name']} ({mb} x {seq_len} tokens per step, {optimizer})",
                 ["precision", "depth", "params", "step", "tokens/s", "GFLOP/s", "MFU", "peak memory"], rows)
    entry = {
        "name": info["name"], "kind": device.kind, "catalog_id": info.get("catalog_id"),
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "peak_flops": {p: device.peak_flops.get(p) for p in precisions},
        "precisions": results,
    }
    old = calib.load(path)["devices"].get(device_key(info)) or {}
    if disk:
        speed = disk_read_speed(calib.home() if not path else Path(path).parent)
        if speed:
            entry["disk_read_bytes_per_second"] = speed
    elif old.get("disk_read_bytes_per_second"):
        entry["disk_read_bytes_per_second"] = old["disk_read_bytes_per_second"]
    # a new measurement replaces the old points of its precision at its sequence length and keeps
    # those of other lengths (mfu_for prefers points at the planned length)
    kept = {p: [r for r in pts if r.get("seq_len") != seq_len] for p, pts in (old.get("precisions") or {}).items()}
    merged = {**old, **entry, "precisions": {**kept, **{p: kept.get(p, []) + r for p, r in results.items()}}}
    out = {"device": device.id, "device_key": device_key(info), **merged}
    if write:
        written = calib.save_device(device_key(info), merged, path)
        out["calibration_file"] = str(written)
        if show:
            ui.info(f"calibration written to {written}")
    return out


def auto_configure(budget_s: float, tokens_available: int | None, seq_len: int, objective: str = "causal",
                   vocab_size: int = 8192, precision: str = "auto", num_devices: int = 1,
                   optimizer: str = "adamw", calibration_path: str | Path | None = None,
                   calibrate_seconds: float = 1.5) -> P.Plan:
    """For `budgetlm train` without a model: calibrate this device once (cached per device and
    precision in the calibration file; ~10 s), then plan the compute-optimal model for the budget
    and the data. `precision` is the runtime's choice (fp32/bf16/fp16) or auto."""
    from budgetlm.catalog import load_catalog
    from budgetlm.hardware import device_key, local_device

    device, info = local_device(load_catalog())
    if precision == "auto":
        from budgetlm.runtime import choose_precision

        precision, _ = choose_precision(_device_type(info))
    entry = calib.load(calibration_path)["devices"].get(device_key(info)) or {}
    points = (entry.get("precisions") or {}).get(precision) or []
    if not any(p.get("seq_len") == seq_len for p in points):
        ui.info(f"calibrating {info['name']} ({precision}, seq len {seq_len}): a few seconds, once per device")
        entry = calibrate([1, 3], seq_len, [precision], 0, vocab_size, objective, calibrate_seconds,
                          optimizer, calibration_path, write=True, disk=False, show=False, memory=False,
                          rounds=3)
    return P.auto_plan(device, budget_s, tokens_available, seq_len, objective, vocab_size, entry,
                       num_devices, optimizer, precisions=(precision,),
                       pred_fraction=None if objective == "causal" else 0.25,
                       allow_checkpointing=P.TRAINER_CHECKPOINTING)


# --------------------------------------------------------------------------------------------------
# command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, BenchConfig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = from_args(BenchConfig, args)
    if cfg.objective not in ("causal", "masked"):
        raise BudgetError(f"--objective must be causal or masked, got {cfg.objective!r}")
    if cfg.optimizer not in P.OPTIMIZERS:
        raise BudgetError(f"--optimizer must be one of {', '.join(P.OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.seq_len < 1 or cfg.micro_batch < 0 or cfg.seconds <= 0 or not cfg.depths or min(cfg.depths) < 1:
        raise BudgetError("--seq-len and --depths must be positive, --micro-batch >= 0, --seconds > 0")
    unknown = [p for p in cfg.precisions if p not in P.PRECISIONS]
    if unknown:
        raise BudgetError(f"unknown precision {unknown[0]!r}: choose from {', '.join(P.PRECISIONS)}")
    if cfg.rounds < 1:
        raise BudgetError(f"--rounds must be at least 1, got {cfg.rounds}")
    return calibrate(cfg.depths, cfg.seq_len, cfg.precisions or None, cfg.micro_batch, cfg.vocab_size,
                     cfg.objective, cfg.seconds, cfg.optimizer, cfg.calibration or None, cfg.write, cfg.disk,
                     rounds=cfg.rounds)
