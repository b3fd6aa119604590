"""hardware.py and catalog.py: the packaged catalog, name matching, detection (CUDA/TPU mocked),
and the command."""

import json
import subprocess
import sys
import types

import pytest

from budgetlm import cli, hardware
from budgetlm.catalog import PRECISIONS, catalog_info, load_catalog

CATALOG = load_catalog()

REQUIRED = [
    "nvidia-t4", "nvidia-v100-sxm2-16gb", "nvidia-a10g", "nvidia-l4", "nvidia-a100-sxm4-40gb",
    "nvidia-a100-sxm4-80gb", "nvidia-h100-sxm", "nvidia-h100-pcie", "nvidia-h200-sxm", "nvidia-b200",
    "nvidia-rtx-2080-ti", "nvidia-rtx-3080", "nvidia-rtx-3090", "nvidia-rtx-4090", "nvidia-rtx-a6000",
    "google-tpu-v2", "google-tpu-v3", "google-tpu-v4", "google-tpu-v5e", "google-tpu-v5p", "google-tpu-v6e",
    "apple-m1", "apple-m2", "apple-m2-ultra", "cpu",
]


def test_catalog_has_the_devices_with_sources_and_dates():
    info = catalog_info()
    assert info["version"] >= 1 and info["updated"]
    for cid in REQUIRED:
        d = CATALOG[cid]
        assert d.memory_bytes > 0 and set(d.peak_flops) == set(PRECISIONS)
        assert d.extra["sources"] and d.extra["specs_as_of"], cid
    # dense figures (sparsity halved) and unsupported precisions as None
    assert CATALOG["nvidia-h100-sxm"].peak_flops["bf16"] == 989.5e12
    assert CATALOG["nvidia-t4"].peak_flops["bf16"] is None
    assert CATALOG["google-tpu-v5e"].peak_flops["fp32"] is None
    assert all(d.price_usd_per_hour is None or d.price_usd_per_hour > 0 for d in CATALOG.values())


@pytest.mark.parametrize("fragment, cid", sorted(hardware.CUDA_NAMES.items()))
def test_every_cuda_name_maps_to_a_catalog_entry(fragment, cid):
    assert cid in CATALOG
    assert hardware.match_cuda(f"NVIDIA {fragment}", 10**10) in CATALOG


def test_cuda_matching_prefers_specific_names():
    assert hardware.match_cuda("NVIDIA H100 PCIe", 80e9) == "nvidia-h100-pcie"
    assert hardware.match_cuda("NVIDIA H100 80GB HBM3", 80e9) == "nvidia-h100-sxm"
    assert hardware.match_cuda("NVIDIA A100-SXM4-80GB", 80e9) == "nvidia-a100-sxm4-80gb"
    assert hardware.match_cuda("Tesla V100-SXM2-32GB", 32e9) == "nvidia-v100-sxm2-32gb"
    assert hardware.match_cuda("NVIDIA GeForce RTX 4090", 24e9) == "nvidia-rtx-4090"
    assert hardware.match_cuda("Some Future GPU", 24e9) is None


@pytest.mark.parametrize("fragment, cid", sorted(hardware.TPU_NAMES.items()))
def test_every_tpu_name_maps_to_a_catalog_entry(fragment, cid):
    assert cid in CATALOG and hardware.match_name(f"TPU {fragment}", hardware.TPU_NAMES) == cid


def test_cpu_info_and_flops_per_cycle():
    info = hardware.cpu_info()
    assert info["cores"] >= 1 and info["memory_bytes"] > 2**28 and info["peak_flops_estimate"]["fp32"] > 0
    assert hardware.cpu_flops_per_cycle({"avx2", "fma"}) == {"fp32": 32.0, "bf16": None}
    assert hardware.cpu_flops_per_cycle({"avx512f", "avx512_bf16"})["bf16"] == 64.0
    assert hardware.cpu_flops_per_cycle({"avx512f", "amx_bf16"})["bf16"] == 256.0
    assert hardware.cpu_flops_per_cycle(set())["fp32"] == 8.0


def test_local_device_prefers_a_matched_accelerator(monkeypatch):
    fake = {"type": "cuda", "index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85_000_000_000,
            "compute_capability": "9.0", "precisions": ["fp32", "bf16"], "catalog_id": "nvidia-h100-sxm"}
    monkeypatch.setitem(hardware.DETECTORS, "cuda", lambda: [fake])
    dev, info = hardware.local_device(CATALOG)
    assert dev.id == "nvidia-h100-sxm" and dev.memory_bytes == 85_000_000_000 and info is not None
    assert hardware.device_key(info) == "cuda:NVIDIA H100 80GB HBM3"
    monkeypatch.setitem(hardware.DETECTORS, "cuda", lambda: [])
    cpu, _ = hardware.local_device(CATALOG)
    assert cpu.id == "local-cpu" and cpu.kind == "cpu" and cpu.peak_flops["fp32"] > 0


def test_tpu_detection_with_torch_xla_mocked(monkeypatch):
    xm = types.SimpleNamespace(xla_device=lambda: "xla:0", xla_device_hw=lambda d: "TPU")
    runtime = types.SimpleNamespace(device_type=lambda: "TPU v5 lite")
    core = types.ModuleType("torch_xla.core")
    core.xla_model = xm
    pkg = types.ModuleType("torch_xla")
    pkg.core, pkg.runtime = core, runtime
    monkeypatch.setitem(sys.modules, "torch_xla", pkg)
    monkeypatch.setitem(sys.modules, "torch_xla.core", core)
    monkeypatch.setitem(sys.modules, "torch_xla.core.xla_model", xm)
    monkeypatch.setitem(sys.modules, "torch_xla.runtime", runtime)
    found = hardware.tpu_devices()
    assert found == [{"type": "xla", "name": "TPU v5 lite", "precisions": ["bf16"], "catalog_id": "google-tpu-v5e"}]


def test_hardware_command_json(capsys):
    assert cli.main(["hardware", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["devices"][-1]["type"] == "cpu" and out["plan_device"]
    assert {"name", "cores", "memory_bytes", "isa"} <= set(out["devices"][-1])


def test_hardware_catalog_lists_everything_without_torch(tmp_path):
    code = ("import sys, json, io, contextlib; from budgetlm import cli; buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf): rc = cli.main(['hardware', '--catalog', '--json'])\n"
            "d = json.loads(buf.getvalue()); print(len(d['devices']), 'torch' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    assert out == [str(len(CATALOG)), "False", "0"]


def test_bad_catalog_file_is_one_line(capsys, tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("[{oops")
    assert cli.main(["hardware", "--catalog", "--catalog-file", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid JSON" in err[0]
    assert cli.main(["hardware", "--catalog", "--catalog-file", str(tmp_path / "missing.json")]) == 2


def test_cuda_devices_with_torch_cuda_mocked(monkeypatch):
    import torch

    props = types.SimpleNamespace(name="NVIDIA GeForce RTX 3090", total_memory=24 * 2**30, major=8, minor=6,
                                  multi_processor_count=82)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    (d,) = hardware.cuda_devices()
    assert d["catalog_id"] == "nvidia-rtx-3090" and d["compute_capability"] == "8.6"
    assert d["precisions"] == ["fp32", "tf32", "fp16", "bf16"]  # no fp8 below compute capability 8.9
    props.major, props.minor, props.name = 7, 5, "Tesla T4"
    (t4,) = hardware.cuda_devices()
    assert t4["precisions"] == ["fp32", "fp16"] and t4["catalog_id"] == "nvidia-t4"
