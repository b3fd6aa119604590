"""The accelerator catalog: packaged `catalog.json` plus the user's own overrides. No torch.

A user file (``--catalog-file PATH`` or ``$BUDGETLM_CATALOG``) is JSON, either a list of devices or
``{"devices": [...]}``. An entry whose ``id`` is already known overrides only the fields it gives (the
usual case: your negotiated price); a new ``id`` adds a device and must give at least
``memory_gb`` and ``tflops``.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from budgetlm.config import BudgetError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")
ENV_VAR = "BUDGETLM_CATALOG"


@dataclass
class Device:
    id: str  # catalog id, e.g. nvidia-h100-sxm
    name: str  # human name
    kind: str  # gpu | tpu | cpu
    vendor: str  # NVIDIA, Google, Apple, generic
    memory_bytes: int  # device memory (bytes)
    bandwidth_bytes_s: float | None  # memory bandwidth (bytes/s)
    peak_flops: dict[str, float | None]  # dense peak FLOP/s per precision; None = unsupported
    price_usd_per_hour: float | None  # on-demand USD per device-hour; None = not rented
    interconnect: str = ""  # links between devices
    extra: dict[str, Any] = field(default_factory=dict)  # sources, notes, dates (kept for --catalog)

    def supports(self, precision: str) -> bool:
        return bool(self.peak_flops.get(precision))


def _packaged() -> dict[str, Any]:
    text = resources.files("budgetlm").joinpath("catalog.json").read_text(encoding="utf-8")
    return json.loads(text)


def _device_from_entry(e: dict[str, Any]) -> Device:
    tflops = e.get("tflops") or {}
    mem = e.get("memory_gb")
    bw = e.get("bandwidth_gbs")
    return Device(
        id=str(e["id"]),
        name=str(e.get("name", e["id"])),
        kind=str(e.get("kind", "gpu")),
        vendor=str(e.get("vendor", "")),
        memory_bytes=int(float(mem) * 1e9) if mem else 0,
        bandwidth_bytes_s=float(bw) * 1e9 if bw else None,
        peak_flops={p: (float(tflops[p]) * 1e12 if tflops.get(p) else None) for p in PRECISIONS},
        price_usd_per_hour=e.get("price_usd_per_hour"),
        interconnect=str(e.get("interconnect", "")),
        extra={k: v for k, v in e.items() if k not in ("tflops",)},
    )


def _read_user_file(path: str | Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BudgetError(f"catalog file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BudgetError(f"catalog file {path} is not valid JSON ({e})") from None
    devices = data.get("devices") if isinstance(data, dict) else data
    if not isinstance(devices, list) or not all(isinstance(d, dict) and "id" in d for d in devices):
        raise BudgetError(f"catalog file {path}: expected a list of devices, each with an 'id'")
    return devices


def load_catalog(user_file: str | Path | None = None) -> dict[str, Device]:
    """id -> Device: the packaged catalog, then the user's file (argument, else $BUDGETLM_CATALOG)."""
    entries = {e["id"]: copy.deepcopy(e) for e in _packaged()["devices"]}
    user_file = user_file or os.environ.get(ENV_VAR) or None
    if user_file:
        for e in _read_user_file(user_file):
            if e["id"] in entries:
                base = entries[e["id"]]
                if isinstance(e.get("tflops"), dict):  # merge per precision, not wholesale
                    e = {**e, "tflops": {**(base.get("tflops") or {}), **e["tflops"]}}
                base.update(e)
            else:
                if "memory_gb" not in e or "tflops" not in e:
                    raise BudgetError(
                        f"catalog file {user_file}: new device {e['id']!r} needs 'memory_gb' and 'tflops'"
                    )
                entries[e["id"]] = e
    try:
        return {k: _device_from_entry(v) for k, v in entries.items()}
    except (TypeError, ValueError) as e:
        raise BudgetError(f"catalog entry has a bad value ({e})") from None


def catalog_info() -> dict[str, Any]:
    data = _packaged()
    return {k: v for k, v in data.items() if k != "devices"}


def get_device(device_id: str, catalog: dict[str, Device]) -> Device:
    """Look an id up; unknown ids fail with the nearest known ids as suggestions."""
    if device_id in catalog:
        return catalog[device_id]
    ids = sorted(catalog)
    # ids containing what was typed first ("h100" -> both H100s), then spelling neighbours
    near = [i for i in ids if device_id.lower() in i][:3]
    near += [i for i in difflib.get_close_matches(device_id, ids, n=3, cutoff=0.4) if i not in near]
    near = near[:3]
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    raise BudgetError(
        f"unknown device {device_id!r}{hint} (`budgetlm hardware --catalog` lists all {len(ids)} ids)"
    )
