"""The calibration file: measured throughput per local device, written by `budgetlm bench`, read
by `plan` and `train`. No torch.

Location: ``$BUDGETLM_HOME/calibration.json`` (default ``~/.cache/budgetlm``). Layout::

    {"version": 1, "devices": {"<device key>": {
        "name": ..., "kind": "cpu", "catalog_id": ..., "measured": "2026-11-23T15:00:00Z",
        "precisions": {"bf16": [{"depth": 2, "seq_len": 128, "micro_batch": 8,
                                 "flops_per_token": ..., "tokens_per_second": ...,
                                 "achieved_flops": ..., "mfu": ...}, ...]},
        "disk_read_bytes_per_second": ...,
        "measured_peak_flops": {"fp32": ...}}}}

The device key is the local device's name (e.g. ``cpu:AMD EPYC`` or ``cuda:NVIDIA H100 80GB HBM3``),
so one file serves several machines sharing a home directory.

Peak FLOP/s, one rule for `plan` and training's MFU (`runtime.peak_flops`): the catalog's datasheet
figure when the device is in the catalog; otherwise (a CPU, an accelerator the catalog lacks) the
measured dense-matmul peak, which `runtime.peak_flops` measures at the start of each training run,
keeping the highest figure seen under ``measured_peak_flops`` (other work on the machine only slows
a measurement); until something was measured, a CPU's ISA estimate (cores x GHz x FLOP/cycle,
`hardware.cpu_flops_per_cycle`). The plan says which (`Plan.peak_source`). A dense matmul is the
most a CPU sustains (no model outruns it), where the ISA figure is a guess about FMA units and clocks.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from budgetlm.catalog import Device, load_catalog
from budgetlm.config import BudgetError
from budgetlm.fsio import atomic_write_json
from budgetlm.hardware import device_key, local_device

VERSION = 1
MEASURED_PEAK = "measured_peak_flops"  # entry key: precision -> measured dense-matmul FLOP/s

# torch.compile on CPU pays tens of seconds of compile time (measured ~20 s for the 6.9M benchmark
# model on 2 cores) for ~14% more tokens/s there (docs/bench/training.md): worth it only when the
# budget is long enough to win that time back several times over.
CPU_COMPILE_MIN_BUDGET_S = 300.0


def compiles_by_default(kind: str, budget_s: float | None) -> bool:
    """Whether `train --compile auto` compiles on a device of this kind for this budget: on CUDA, and
    on a CPU for budgets of CPU_COMPILE_MIN_BUDGET_S or more (`runtime.compile_wanted` also needs a
    C++ compiler there). Plans use the points measured under the same setting."""
    if kind == "cpu":
        return bool(budget_s) and budget_s >= CPU_COMPILE_MIN_BUDGET_S
    return kind == "gpu"


def setting(point: dict[str, Any]) -> tuple[int, bool, float]:
    """What a calibration point was measured under, besides its shape: (seq_len, compiled, dropout)."""
    return point.get("seq_len"), bool(point.get("compile")), float(point.get("dropout") or 0.0)


def points_for(entry: dict[str, Any], precision: str, seq_len: int, compile: bool,
               dropout: float = 0.0) -> dict[str, Any]:
    """The calibration entry reduced to the points measured as the run will train (same precision,
    sequence length, compile setting and dropout); empty when there are none."""
    points = [p for p in (entry.get("precisions") or {}).get(precision) or []
              if setting(p) == (seq_len, compile, dropout)]
    return {**entry, "precisions": {precision: points}} if points else {}


def one_setting(points: list[dict[str, Any]], seq_len: int, compile: bool = False) -> list[dict[str, Any]]:
    """The points of one setting, or a speed line would join points that trained differently: those
    measured at `seq_len`, then of those the ones without dropout (as a plan's model trains), then
    the ones with this compile setting, each step applied only when it leaves any."""
    points = [p for p in points if p.get("seq_len") == seq_len] or points
    points = [p for p in points if not p.get("dropout")] or points
    return [p for p in points if bool(p.get("compile")) == compile] or points


def prefer_setting(entry: dict[str, Any] | None, seq_len: int, compile: bool) -> dict[str, Any] | None:
    """`entry` with each precision's points reduced to the setting `train` would run a plan under
    (`one_setting`: this sequence length and compile setting, no dropout)."""
    if not entry:
        return entry
    precisions = {precision: one_setting(points, seq_len, compile)
                  for precision, points in (entry.get("precisions") or {}).items()}
    return {**entry, "precisions": precisions}


def home() -> Path:
    return Path(os.environ.get("BUDGETLM_HOME") or Path.home() / ".cache" / "budgetlm")


def default_path() -> Path:
    return home() / "calibration.json"


def load(path: str | Path | None = None) -> dict[str, Any]:
    """The whole calibration file; an empty one when it does not exist; BudgetError when corrupt."""
    path = Path(path) if path else default_path()
    if not path.exists():
        return {"version": VERSION, "devices": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BudgetError(
            f"calibration file {path} is corrupt ({type(e).__name__}); delete it and run `budgetlm bench`"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        raise BudgetError(f"calibration file {path} is corrupt (no 'devices' table); delete it and run `budgetlm bench`")
    if data.get("version") != VERSION:
        raise BudgetError(f"calibration file {path} has version {data.get('version')}, expected {VERSION}; "
                          "run `budgetlm bench` to rewrite it")
    for key, entry in data["devices"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("precisions", {}), dict):
            raise BudgetError(f"calibration file {path}: entry {key!r} is corrupt; delete it and run `budgetlm bench`")
        for prec, points in entry.get("precisions", {}).items():
            if not isinstance(points, list) or not all(
                isinstance(p, dict) and isinstance(p.get("flops_per_token"), (int, float))
                and isinstance(p.get("achieved_flops"), (int, float)) for p in points
            ):
                raise BudgetError(f"calibration file {path}: {key!r}/{prec} points are corrupt; "
                                  "delete it and run `budgetlm bench`")
        peaks = entry.get(MEASURED_PEAK, {})
        if not isinstance(peaks, dict) or not all(isinstance(v, (int, float)) for v in peaks.values()):
            raise BudgetError(f"calibration file {path}: {key!r} has a corrupt {MEASURED_PEAK}; delete it")
    return data


def for_device(key: str, path: str | Path | None = None) -> dict[str, Any] | None:
    return load(path)["devices"].get(key)


def save_device(key: str, entry: dict[str, Any], path: str | Path | None = None) -> Path:
    """Merge one device's entry into the file (atomic write; other devices are kept, and so is the
    device's measured peak when `entry` does not carry one)."""
    path = Path(path) if path else default_path()
    data = load(path)
    old = data["devices"].get(key) or {}
    if MEASURED_PEAK in old and MEASURED_PEAK not in entry:
        entry = {**entry, MEASURED_PEAK: old[MEASURED_PEAK]}
    data["devices"][key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)
    return path


# --------------------------------------------------------------------------------------------------
# measured peak FLOP/s (see the module docstring for the rule)


def measured_peak(key: str, precision: str, path: str | Path | None = None) -> float | None:
    """The stored dense-matmul FLOP/s of a device in a precision, None when none was measured."""
    return ((for_device(key, path) or {}).get(MEASURED_PEAK) or {}).get(precision)


def save_measured_peak(key: str, name: str, kind: str, precision: str, flops: float,
                       path: str | Path | None = None) -> Path:
    """Store a measured dense-matmul peak (the higher one, when the precision was measured before:
    a measurement disturbed by other work only reads low)."""
    entry = dict(for_device(key, path) or {"name": name, "kind": kind, "precisions": {}})
    peaks = dict(entry.get(MEASURED_PEAK) or {})
    peaks[precision] = max(float(flops), peaks.get(precision) or 0.0)
    return save_device(key, {**entry, MEASURED_PEAK: peaks}, path)


def with_measured_peaks(device: Device, entry: dict[str, Any] | None) -> Device:
    """`device` with the measured peaks of its calibration entry where the catalog has no figure
    (a CPU's ISA estimate counts as none)."""
    peaks = dict(device.peak_flops)
    notes = dict(device.peak_notes)
    for precision, flops in ((entry or {}).get(MEASURED_PEAK) or {}).items():
        if precision in peaks and (device.kind == "cpu" or not peaks[precision]):
            peaks[precision] = float(flops)
            notes[precision] = f"measured {precision} dense matmul on this device (calibration file)"
    return replace(device, peak_flops=peaks, peak_notes=notes)


def local(catalog: dict[str, Device] | None = None, path: str | Path | None = None,
          devices: list[dict[str, Any]] | None = None) -> tuple[Device, dict[str, Any], dict[str, Any] | None]:
    """(device, detected info, calibration entry or None) of this machine: what `plan --device
    local`, `budgetlm hardware` and `train` plan for, with the peak rule above applied."""
    device, info = local_device(catalog if catalog is not None else load_catalog(), devices)
    entry = load(path)["devices"].get(device_key(info))
    return with_measured_peaks(device, entry), info, entry
