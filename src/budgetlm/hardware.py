"""Local device detection: the accelerators and the CPU of this machine, matched to the catalog.
No argparse and no printing (`budgetlm.commands.hardware` shows what is found).

torch is imported only inside the detection functions (CUDA, MPS); CPU facts come from
/proc/cpuinfo and psutil. Which catalog entry a detected name is lives in catalog.json (each
entry's `match` fragments, resolved by `catalog.match_device`), not here.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Callable

from budgetlm.catalog import PRECISIONS, Device, load_catalog, match_device

# ISA features worth reporting: what they mean for training on a CPU
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16")


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
    """fp32 FLOPs per cycle per core, FMA units x vector lanes x 2: AVX-512 server cores with two
    512-bit FMA units (Xeon Scalable, Sapphire Rapids) 2 x 16 x 2 = 64, parts with one unit reach
    half; AVX2 with FMA 2 x 8 x 2 = 32; neither 8. bf16 doubles fp32 with AVX512-BF16 dot products
    and AMX multiplies it further. Only a fallback until a matmul has been measured (the rule is in
    `budgetlm.calibration`)."""
    fp32 = 8.0
    if "avx512f" in flags:
        fp32 = 64.0
    elif "avx2" in flags and "fma" in flags:
        fp32 = 32.0
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
        "peak_notes": {p: f"ISA estimate, no matmul measured yet: {compute_cores} cores x {ghz:.2f} GHz x "
                          f"{v:.0f} {p} FLOP/cycle" for p, v in per_cycle.items() if v},
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
            "precisions": precisions,
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
        return [{"type": "xla", "name": kind, "precisions": ["bf16"]}]
    except Exception as e:  # noqa: BLE001
        return [{"type": "xla", "name": f"unavailable ({type(e).__name__})", "precisions": []}]


def mps_devices() -> list[dict[str, Any]]:
    try:
        import torch
    except ImportError:
        return []
    mps = getattr(torch.backends, "mps", None)
    if not (mps and mps.is_available()):
        return []
    return [{"type": "mps", "name": f"Apple {platform.machine()} GPU (MPS)", "precisions": ["fp32", "fp16"]}]


# detector registry: device type -> function returning the devices of that type found here
DETECTORS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "cuda": cuda_devices,
    "xla": tpu_devices,
    "mps": mps_devices,
}


# detected device type -> catalog kind its name is matched against (MPS: no entry matches yet)
MATCH_KIND = {"cuda": "gpu", "xla": "tpu"}


def local_devices(catalog: dict[str, Device] | None = None) -> list[dict[str, Any]]:
    """Accelerators first (CUDA, TPU, MPS), then the CPU; each with the `catalog_id` its name
    matches (`catalog.match_device`), None when the catalog does not know it."""
    catalog = catalog if catalog is not None else load_catalog()
    found: list[dict[str, Any]] = []
    for dtype, detect in DETECTORS.items():
        for info in detect():
            kind = MATCH_KIND.get(dtype)
            cid = match_device(info["name"], catalog, int(info.get("memory_bytes") or 0), kind) if kind else None
            found.append({**info, "catalog_id": cid})
    found.append(cpu_info())
    return found


def device_key(info: dict[str, Any]) -> str:
    """The calibration key of a local device."""
    return f"{info['type']}:{info['name']}"


def local_device(catalog: dict[str, Device] | None = None, devices: list[dict[str, Any]] | None = None
                 ) -> tuple[Device, dict[str, Any]]:
    """The first accelerator (its catalog entry, with the real memory), else this CPU (real RAM,
    peak FLOP/s estimated from its ISA). `calibration.local` puts measured peaks where the catalog
    has none: that is the device `plan --device local` and `train` plan for."""
    catalog = catalog if catalog is not None else load_catalog()
    devices = devices if devices is not None else local_devices(catalog)
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
                      peak_flops=peaks, price_usd_per_hour=None, peak_notes=dict(info["peak_notes"])), info
    # an accelerator the catalog does not know: its memory, and no peak until one is measured
    return Device(id=f"local-{info['type']}", name=info["name"], kind="gpu", vendor="local",
                  memory_bytes=int(info.get("memory_bytes") or 0), bandwidth_bytes_s=None,
                  peak_flops={p: None for p in PRECISIONS}, price_usd_per_hour=None), info
