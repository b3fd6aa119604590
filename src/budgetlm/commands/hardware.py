"""`budgetlm hardware`: the local devices, matched to the catalog; `--catalog` lists the catalog.

Listing the catalog never loads torch; detecting local devices loads it only to look for GPUs.
"""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import calibration, ui
from budgetlm.catalog import PRECISIONS, Device, catalog_info, load_catalog
from budgetlm.hardware import local_devices


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", action="store_true",
                        help="list the accelerator catalog instead of the local devices (default: off)")
    parser.add_argument("--catalog-file", default=None, metavar="FILE",
                        help="your own devices/prices (JSON) on top of the packaged catalog "
                             "(default: $BUDGETLM_CATALOG, else none)")


def _tflops(v: float | None) -> str:
    return "-" if not v else f"{v / 1e12:,.1f}"


def _list_catalog(catalog: dict[str, Device]) -> dict[str, Any]:
    rows = [[d.id, f"{d.memory_bytes / 1e9:,.0f}",
             "-" if not d.bandwidth_bytes_s else f"{d.bandwidth_bytes_s / 1e9:,.0f}",
             *[_tflops(d.peak_flops.get(p)) for p in PRECISIONS],
             "-" if d.price_usd_per_hour is None else f"{d.price_usd_per_hour:.2f}"] for d in catalog.values()]
    ui.table("accelerator catalog (dense peak TFLOP/s)", ["id", "GB", "GB/s", *PRECISIONS, "$/h"], rows)
    return {
        **catalog_info(),
        "devices": [{**d.extra, "id": d.id, "peak_flops": d.peak_flops, "memory_bytes": d.memory_bytes}
                    for d in catalog.values()],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    catalog = load_catalog(args.catalog_file)
    if args.catalog:
        return _list_catalog(catalog)
    devices = local_devices(catalog)
    rows = []
    for d in devices:
        mem = d.get("memory_bytes")
        if d["type"] == "cpu":
            detail = f"{d['cores']} cores ({d['usable_cpus']} usable), ISA {' '.join(d['isa']) or '-'}"
            precisions = ", ".join(p for p, v in d["peak_flops_estimate"].items() if v)
        else:
            detail = f"compute capability {d['compute_capability']}" if "compute_capability" in d else ""
            precisions = ", ".join(d.get("precisions", []))
        rows.append([d["type"], d["name"], "-" if not mem else f"{mem / 2**30:,.1f} GiB", precisions,
                     d.get("catalog_id") or "-", detail])
    ui.table("local devices", ["type", "name", "memory", "precisions", "catalog", "detail"], rows)
    planned, _, _ = calibration.local(catalog, devices=devices)
    peaks = {p: planned.training_peak(p) for p in ("fp32", "bf16", "fp16")}
    ui.info(f"`budgetlm plan --device local` plans for: {planned.id} ({planned.name})")
    for p, v in peaks.items():
        if v:
            ui.info(f"  {p} peak {v / 1e12:,.3g} TFLOP/s: {planned.peak_note(p)}")
    return {"devices": devices, "plan_device": planned.id,
            "plan_peak_flops": peaks, "plan_peak_sources": {p: planned.peak_note(p) for p, v in peaks.items() if v}}
