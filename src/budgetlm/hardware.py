"""`budgetlm hardware`: the local devices, matched to the catalog; `--catalog` lists the catalog.

torch is imported only inside the detection functions (CUDA, MPS); CPU facts come from
/proc/cpuinfo and psutil, so listing the catalog never loads torch.
"""

from __future__ import annotations

import argparse
import os
import platform
from typing import Any, Callable

from budgetlm import ui
from budgetlm.catalog import PRECISIONS, Device, catalog_info, load_catalog

# CUDA device name fragment -> catalog id; the first fragment found in the name wins, so more
# specific names come first. V100s are told apart by memory in `match_cuda`.
CUDA_NAMES: dict[str, str] = {
    "H100 PCIe": "nvidia-h100-pcie",
    "H100": "nvidia-h100-sxm",
    "H200": "nvidia-h200-sxm",
    "B200": "nvidia-b200",
    "A100-SXM4-80GB": "nvidia-a100-sxm4-80gb",
    "A100 80GB": "nvidia-a100-sxm4-80gb",
    "A100": "nvidia-a100-sxm4-40gb",
    "A10G": "nvidia-a10g",
    "L4": "nvidia-l4",
    "T4": "nvidia-t4",
    "V100": "nvidia-v100-sxm2-16gb",
    "RTX 4090": "nvidia-rtx-4090",
    "RTX 3090": "nvidia-rtx-3090",
    "RTX 3080": "nvidia-rtx-3080",
    "RTX A6000": "nvidia-rtx-a6000",
    "2080 Ti": "nvidia-rtx-2080-ti",
}

# TPU device kind fragment (torch_xla's xla_device_hw / device_kind) -> catalog id
TPU_NAMES: dict[str, str] = {
    "v6e": "google-tpu-v6e", "v6 lite": "google-tpu-v6e",
    "v5p": "google-tpu-v5p", "v5e": "google-tpu-v5e", "v5 lite": "google-tpu-v5e",
    "v4": "google-tpu-v4", "v3": "google-tpu-v3", "v2": "google-tpu-v2",
}

# ISA features worth reporting: what they mean for training on a CPU
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16")


def match_name(name: str, table: dict[str, str]) -> str | None:
    low = name.lower()
    return next((cid for frag, cid in table.items() if frag.lower() in low), None)


def match_cuda(name: str, memory_bytes: int) -> str | None:
    cid = match_name(name, CUDA_NAMES)
    if cid == "nvidia-v100-sxm2-16gb" and memory_bytes > 20e9:
        cid = "nvidia-v100-sxm2-32gb"
    return cid


# --------------------------------------------------------------------------------------------------
# CPU


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if ":" in line:
                    k, v = line.split(":", 1)
                    out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def cpu_flops_per_cycle(flags: set[str]) -> dict[str, float]:
    """fp32 FLOPs per cycle per core: two FMA units x vector lanes x 2 (AVX2/AVX-512 as executed by
    current x86 cores: 32; without FMA: 8). bf16 doubles it with AVX512-BF16 dot products and AMX
    multiplies it further; both are rough: `budgetlm bench` measures what matters."""
    fp32 = 32.0 if ("avx2" in flags and "fma" in flags) or "avx512f" in flags else 8.0
    if "asimd" in flags:  # Arm NEON: 2-4 128-bit FMA pipes; take 4 x 4 lanes x 2
        fp32 = 32.0
    bf16 = None
    if "amx_bf16" in flags:
        bf16 = fp32 * 8
    elif "avx512_bf16" in flags or "bf16" in flags:
        bf16 = fp32 * 2
    return {"fp32": fp32, "bf16": bf16}


def cpu_info() -> dict[str, Any]:
    import psutil

    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    threads = os.cpu_count() or cores
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        usable = threads
    mhz = None
    freq = psutil.cpu_freq() if hasattr(psutil, "cpu_freq") else None
    if freq and (freq.max or freq.current):
        mhz = freq.max or freq.current
    elif info.get("cpu MHz"):
        mhz = float(info["cpu MHz"])
    per_cycle = cpu_flops_per_cycle(flags)
    ghz = (mhz or 2500.0) / 1000
    compute_cores = min(cores, usable)
    peak = {p: (v * ghz * 1e9 * compute_cores if v else None) for p, v in per_cycle.items()}
    return {
        "type": "cpu",
        "name": info.get("model name") or platform.processor() or platform.machine(),
        "architecture": platform.machine(),
        "cores": cores,
        "threads": threads,
        "usable_cpus": usable,
        "mhz": mhz,
        "memory_bytes": psutil.virtual_memory().total,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "peak_flops_estimate": peak,
        "peak_note": f"{compute_cores} cores x {ghz:.2f} GHz x {per_cycle['fp32']:.0f} fp32 FLOP/cycle (estimate)",
        "catalog_id": "cpu",
    }


# --------------------------------------------------------------------------------------------------
# accelerators (torch imported here only)


def cuda_devices() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        cc = (p.major, p.minor)
        precisions = ["fp32"] + (["tf32"] if cc >= (8, 0) else []) + (["fp16"] if cc >= (7, 0) else []) \
            + (["bf16"] if cc >= (8, 0) else []) + (["fp8"] if cc >= (8, 9) else [])
        out.append({
            "type": "cuda", "index": i, "name": p.name, "memory_bytes": int(p.total_memory),
            "compute_capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
            "precisions": precisions, "catalog_id": match_cuda(p.name, int(p.total_memory)),
        })
    return out


def tpu_devices() -> list[dict[str, Any]]:
    try:
        import torch_xla.core.xla_model as xm
    except Exception:  # noqa: BLE001 - torch_xla absent or broken: no TPU path
        return []
    try:
        kind = str(xm.xla_device_hw(xm.xla_device()))
        try:
            import torch_xla.runtime as xr

            kind = str(xr.device_type() or kind)
        except Exception:  # noqa: BLE001
            pass
        return [{"type": "xla", "name": kind, "precisions": ["bf16"], "catalog_id": match_name(kind, TPU_NAMES)}]
    except Exception as e:  # noqa: BLE001
        return [{"type": "xla", "name": f"unavailable ({type(e).__name__})", "precisions": [], "catalog_id": None}]


def mps_devices() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    mps = getattr(torch.backends, "mps", None)
    if not (mps and mps.is_available()):
        return []
    return [{"type": "mps", "name": f"Apple {platform.machine()} GPU (MPS)", "precisions": ["fp32", "fp16"],
             "catalog_id": None}]


# detector registry: device type -> function returning the devices of that type found here
DETECTORS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "cuda": cuda_devices,
    "xla": tpu_devices,
    "mps": mps_devices,
}


def local_devices() -> list[dict[str, Any]]:
    """Accelerators first (CUDA, TPU, MPS), then the CPU."""
    found: list[dict[str, Any]] = []
    for detect in DETECTORS.values():
        found.extend(detect())
    found.append(cpu_info())
    return found


def device_key(info: dict[str, Any]) -> str:
    """The calibration key of a local device."""
    return f"{info['type']}:{info['name']}"


def local_device(catalog: dict[str, Device] | None = None, devices: list[dict[str, Any]] | None = None
                 ) -> tuple[Device, dict[str, Any]]:
    """The device `plan --device local` and `train` plan for: the first accelerator (its catalog
    entry, with the real memory), else this CPU (estimated peak, real RAM)."""
    catalog = catalog if catalog is not None else load_catalog()
    devices = devices if devices is not None else local_devices()
    info = devices[0]
    if info["type"] != "cpu" and info.get("catalog_id") in catalog:
        base = catalog[info["catalog_id"]]
        dev = Device(**{**base.__dict__, "memory_bytes": info.get("memory_bytes") or base.memory_bytes})
        return dev, info
    if info["type"] == "cpu":
        peaks = {p: info["peak_flops_estimate"].get(p) for p in PRECISIONS}
        generic = catalog.get("cpu")
        return Device(id="local-cpu", name=info["name"], kind="cpu", vendor="local",
                      memory_bytes=int(info["memory_bytes"]),
                      bandwidth_bytes_s=generic.bandwidth_bytes_s if generic else None,
                      peak_flops=peaks, price_usd_per_hour=None,
                      extra={"peak_note": info["peak_note"]}), info
    # an accelerator the catalog does not know: plan on its memory, with no peak (bench calibrates)
    return Device(id=f"local-{info['type']}", name=info["name"], kind="gpu", vendor="local",
                  memory_bytes=int(info.get("memory_bytes") or 0), bandwidth_bytes_s=None,
                  peak_flops={p: None for p in PRECISIONS}, price_usd_per_hour=None), info


# --------------------------------------------------------------------------------------------------
# command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", action="store_true", help="list the accelerator catalog instead")
    parser.add_argument("--catalog-file", default=None, metavar="FILE",
                        help="your own devices/prices (JSON) on top of the packaged catalog "
                             "(default: $BUDGETLM_CATALOG)")


def _tflops(v: float | None) -> str:
    return "-" if not v else f"{v / 1e12:,.1f}"


def _list_catalog(catalog: dict[str, Device]) -> dict[str, Any]:
    rows = []
    for d in catalog.values():
        rows.append([d.id, f"{d.memory_bytes / 1e9:,.0f}",
                     "-" if not d.bandwidth_bytes_s else f"{d.bandwidth_bytes_s / 1e9:,.0f}",
                     *[_tflops(d.peak_flops.get(p)) for p in PRECISIONS],
                     "-" if d.price_usd_per_hour is None else f"{d.price_usd_per_hour:.2f}"])
    ui.table("accelerator catalog (dense peak TFLOP/s)", ["id", "GB", "GB/s", *PRECISIONS, "$/h"], rows)
    return {
        **catalog_info(),
        "devices": [{**{k: v for k, v in d.extra.items()}, "id": d.id,
                     "peak_flops": d.peak_flops, "memory_bytes": d.memory_bytes} for d in catalog.values()],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    catalog = load_catalog(args.catalog_file)
    if args.catalog:
        return _list_catalog(catalog)
    devices = local_devices()
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
    planned, _ = local_device(catalog, devices)
    ui.info(f"`budgetlm plan --device local` plans for: {planned.id} ({planned.name})")
    return {"devices": devices, "plan_device": planned.id}
