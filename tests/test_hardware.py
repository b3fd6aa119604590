"""hardware.py, catalog.py and calibration's peak rule: the packaged catalog, name matching,
detection (CUDA/TPU mocked), measured CPU peaks, and the command."""

import json
import subprocess
import sys
import types

import pytest

from budgetlm import calibration, cli, hardware
from budgetlm.catalog import PRECISIONS, TRAINING_PEAK_COLUMNS, catalog_info, load_catalog, match_device

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


def test_every_match_fragment_names_its_own_entry():
    """Each entry's fragments, in a name as torch reports it, resolve to that entry; no two entries
    share a fragment and memory threshold (so the answer never depends on the catalog's order)."""
    seen = set()
    for d in CATALOG.values():
        for frag in d.match:
            assert (d.kind, frag.lower(), d.match_min_memory_bytes) not in seen, (d.id, frag)
            seen.add((d.kind, frag.lower(), d.match_min_memory_bytes))
            name = f"NVIDIA GeForce {frag}" if d.kind == "gpu" else f"TPU {frag}"
            assert match_device(name, CATALOG, d.memory_bytes, d.kind) == d.id, (d.id, frag)
    assert sum(bool(d.match) for d in CATALOG.values()) >= 22  # every NVIDIA GPU and TPU


@pytest.mark.parametrize("name, memory, cid", [
    ("NVIDIA H100 PCIe", 80e9, "nvidia-h100-pcie"),  # the longest fragment wins over "H100"
    ("NVIDIA H100 80GB HBM3", 85e9, "nvidia-h100-sxm"),
    ("NVIDIA A100-SXM4-80GB", 85e9, "nvidia-a100-sxm4-80gb"),  # memory tells the A100s apart
    ("NVIDIA A100-SXM4-40GB", 42.5e9, "nvidia-a100-sxm4-40gb"),
    ("Tesla V100-SXM2-32GB", 34e9, "nvidia-v100-sxm2-32gb"),  # ... and the V100s
    ("Tesla V100-SXM2-16GB", 16.9e9, "nvidia-v100-sxm2-16gb"),
    ("NVIDIA GeForce RTX 4090", 24e9, "nvidia-rtx-4090"),
    ("NVIDIA GeForce RTX 2080 Ti", 11e9, "nvidia-rtx-2080-ti"),
    ("Tesla T4", 15e9, "nvidia-t4"),
    ("NVIDIA L4", 24e9, "nvidia-l4"),
    ("NVIDIA L40S", 48e9, None),  # whole words: "L4" is not in "L40S"
    ("Some Future GPU", 24e9, None),
])
def test_cuda_names_match_the_catalog(name, memory, cid):
    assert match_device(name, CATALOG, int(memory), "gpu") == cid


@pytest.mark.parametrize("name, cid", [("TPU v5 lite", "google-tpu-v5e"), ("v5litepod-8", "google-tpu-v5e"),
                                       ("TPU v5p", "google-tpu-v5p"), ("TPU v4", "google-tpu-v4"),
                                       ("TPU v6e", "google-tpu-v6e"), ("TPU v2", "google-tpu-v2")])
def test_tpu_names_match_the_catalog(name, cid):
    assert match_device(name, CATALOG, 0, "tpu") == cid


def test_a_user_catalog_can_teach_a_new_card(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"devices": [{"id": "nvidia-l40s", "kind": "gpu", "match": ["L40S"],
                                             "memory_gb": 48, "tflops": {"bf16": 362}}]}))
    catalog = load_catalog(mine)
    assert match_device("NVIDIA L40S", catalog, 48_000_000_000) == "nvidia-l40s"
    assert catalog["nvidia-l40s"].training_peak("bf16") == 362e12


def test_training_peaks_come_from_the_catalog_columns():
    a100, t4 = CATALOG["nvidia-a100-sxm4-80gb"], CATALOG["nvidia-t4"]
    assert a100.training_peak("fp32") == 156e12  # fp32 training runs matmuls in TF32
    assert t4.training_peak("fp32") == 8.1e12 and t4.training_peak("bf16") is None
    assert "datasheet dense tf32" in a100.peak_note("fp32")
    for precision, columns in TRAINING_PEAK_COLUMNS.items():
        assert all(c in PRECISIONS for c in columns) and a100.training_peak(precision)


def test_cpu_info_and_flops_per_cycle():
    info = hardware.cpu_info()
    assert info["cores"] >= 1 and info["memory_bytes"] > 2**28 and info["peak_flops_estimate"]["fp32"] > 0
    assert hardware.cpu_flops_per_cycle({"avx2", "fma"}) == {"fp32": 32.0, "bf16": None}
    assert hardware.cpu_flops_per_cycle({"avx2", "fma", "avx512f"})["fp32"] == 64.0  # two 512-bit FMA units
    assert hardware.cpu_flops_per_cycle({"avx512f", "avx512_bf16"})["bf16"] == 128.0
    assert hardware.cpu_flops_per_cycle({"avx512f", "amx_bf16"})["bf16"] == 512.0
    assert hardware.cpu_flops_per_cycle(set())["fp32"] == 8.0
    assert "ISA estimate" in info["peak_notes"]["fp32"]


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


def test_a_measured_peak_replaces_the_cpu_estimate_not_the_catalog(monkeypatch, tmp_path):
    monkeypatch.setitem(hardware.DETECTORS, "cuda", lambda: [])
    path = tmp_path / "calibration.json"
    cpu, info, entry = calibration.local(CATALOG, path)
    assert entry is None and "ISA estimate" in cpu.peak_note("fp32")
    calibration.save_measured_peak(hardware.device_key(info), info["name"], "cpu", "fp32", 2.5e11, path)
    calibration.save_measured_peak(hardware.device_key(info), info["name"], "cpu", "fp32", 1e11, path)  # the max stays
    cpu, _, entry = calibration.local(CATALOG, path)
    assert cpu.training_peak("fp32") == 2.5e11 and "measured fp32" in cpu.peak_note("fp32")
    # a later calibration entry without the peak keeps it
    calibration.save_device(hardware.device_key(info), {"name": info["name"], "precisions": {}}, path)
    assert calibration.measured_peak(hardware.device_key(info), "fp32", path) == 2.5e11
    # a catalog GPU keeps its datasheet figure whatever was measured
    h100 = calibration.with_measured_peaks(CATALOG["nvidia-h100-sxm"], {"measured_peak_flops": {"bf16": 1e12}})
    assert h100.training_peak("bf16") == 989.5e12
    unknown = hardware.local_device(CATALOG, [{"type": "cuda", "name": "Future GPU", "memory_bytes": 10**10,
                                               "catalog_id": None}])[0]
    assert calibration.with_measured_peaks(unknown, {"measured_peak_flops": {"fp32": 5e13}}).training_peak("fp32") == 5e13


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
    assert found == [{"type": "xla", "name": "TPU v5 lite", "precisions": ["bf16"]}]
    monkeypatch.setitem(hardware.DETECTORS, "cuda", lambda: [])
    assert hardware.local_devices(CATALOG)[0]["catalog_id"] == "google-tpu-v5e"


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
    assert d["compute_capability"] == "8.6"
    assert d["precisions"] == ["fp32", "tf32", "fp16", "bf16"]  # no fp8 below compute capability 8.9
    assert hardware.local_devices(CATALOG)[0]["catalog_id"] == "nvidia-rtx-3090"
    props.major, props.minor, props.name = 7, 5, "Tesla T4"
    (t4,) = hardware.cuda_devices()
    assert t4["precisions"] == ["fp32", "fp16"] and hardware.local_devices(CATALOG)[0]["catalog_id"] == "nvidia-t4"


def test_every_catalog_price_has_a_source_a_date_and_a_market():
    """A price without provenance is a number nobody can check: each quote says where it comes from,
    when it was observed, and which market it belongs to."""
    import re

    from budgetlm.catalog import MARKETS, load_catalog

    devices = load_catalog()
    priced = [d for d in devices.values() if d.prices]
    assert len(priced) >= 20
    for d in priced:
        for q in d.prices:
            assert q.usd_per_hour > 0 and q.market in MARKETS and q.market != "user", d.id
            assert len(q.source) > 5 and re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", q.as_of), (d.id, q)
        assert d.price in d.prices and d.price_usd_per_hour == d.price.usd_per_hour
    # TPU slices are rented 4 chips at a time (v4-8, v5p-8): the plan costs what is rented
    assert devices["google-tpu-v4"].price.min_devices == 4
    assert all(d.price_usd_per_hour is None for d in devices.values() if not d.prices)


def test_markets_are_chosen_not_mixed(tmp_path):
    from budgetlm import api
    from budgetlm.catalog import load_catalog

    cloud = load_catalog(market="cloud")
    assert cloud["nvidia-h100-sxm"].price.market == "cloud" and cloud["nvidia-rtx-3090"].price is None
    market = load_catalog(market="marketplace")
    assert market["nvidia-h100-sxm"].price_usd_per_hour < cloud["nvidia-h100-sxm"].price_usd_per_hour
    p = api.plan(device="google-tpu-v4", budget="1h", model="2", seq_len=128, market="cloud")
    assert p.price["min_devices"] == 4 and p.cost_usd == pytest.approx(p.seconds / 3600 * 3.22 * 4)
    assert any("slices of 4" in n for n in p.notes)
    mine = tmp_path / "prices.json"
    mine.write_text('[{"id": "nvidia-rtx-3090", "price_usd_per_hour": 0.2}]')
    p = api.plan(device="nvidia-rtx-3090", budget="1h", model="2", seq_len=128, catalog_file=str(mine))
    assert p.price["market"] == "user" and p.cost_usd == pytest.approx(0.2 * p.seconds / 3600)
