"""The calibration file: measured throughput per local device, written by `budgetlm bench`, read
by `plan` and `train`. No torch.

Location: ``$BUDGETLM_HOME/calibration.json`` (default ``~/.cache/budgetlm``). Layout::

    {"version": 1, "devices": {"<device key>": {
        "name": ..., "kind": "cpu", "catalog_id": ..., "measured": "2026-11-23T15:00:00Z",
        "precisions": {"bf16": [{"depth": 2, "seq_len": 128, "micro_batch": 8,
                                 "flops_per_token": ..., "tokens_per_second": ...,
                                 "achieved_flops": ..., "mfu": ...}, ...]},
        "disk_read_bytes_per_second": ...}}}

The device key is the local device's name (e.g. ``cpu:AMD EPYC`` or ``cuda:NVIDIA H100 80GB HBM3``),
so one file serves several machines sharing a home directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from budgetlm.config import BudgetError, write_json_atomic

VERSION = 1


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
    return data


def for_device(key: str, path: str | Path | None = None) -> dict[str, Any] | None:
    return load(path)["devices"].get(key)


def save_device(key: str, entry: dict[str, Any], path: str | Path | None = None) -> Path:
    """Merge one device's entry into the file (atomic write; other devices are kept)."""
    path = Path(path) if path else default_path()
    data = load(path)
    data["devices"][key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data)
    return path
