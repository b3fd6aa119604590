"""The accelerator catalog: packaged `catalog.json` plus the user's own overrides. No torch.

A user file (``--catalog-file PATH`` or ``$BUDGETLM_CATALOG``) is JSON, either a list of devices or
``{"devices": [...]}``. An entry whose ``id`` is already known overrides only the fields it gives (the
usual case: your negotiated price); a new ``id`` adds a device and must give at least
``memory_gb`` and ``tflops``. An entry's ``match`` fragments tie a detected GPU or TPU name to it
(`match_device`), so a user file can teach budgetlm a card the packaged catalog lacks.

This is the only source of peak FLOP/s: the planner, `budgetlm hardware` and training's MFU
(`runtime.peak_flops`) all read `Device.training_peak`. Where the catalog has no figure (a CPU, an
unknown accelerator) `calibration.local` fills in the measured one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from budgetlm.config import BudgetError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8")
ENV_VAR = "BUDGETLM_CATALOG"

# Training precision -> catalog columns whose peak its matmuls reach, first available wins. fp32
# training runs matmuls in TF32 where the GPU has it (runtime turns allow_tf32 on).
TRAINING_PEAK_COLUMNS: dict[str, tuple[str, ...]] = {
    "fp32": ("tf32", "fp32"),
    "bf16": ("bf16",),
    "fp16": ("fp16",),
}


# Where a price comes from: the rows of one market are comparable, those of different markets are not
# (a hyperscaler's on-demand VM, a dedicated or reserved machine, a marketplace rental of someone's card).
MARKETS = ("cloud", "bare-metal", "marketplace", "user")


@dataclass(frozen=True)
class Price:
    """One price quote of a device (catalog.json `prices`)."""

    usd_per_hour: float  # USD per device-hour
    market: str  # cloud | bare-metal | marketplace | user (your own catalog file)
    source: str  # where the quote comes from
    as_of: str  # when it was observed (YYYY-MM[-DD])
    min_devices: int = 1  # the smallest rentable unit (a TPU v4-8 slice has 4 chips)
    note: str = ""  # anything else worth knowing (spot prices, whole-VM prices)


@dataclass
class Device:
    id: str  # catalog id, e.g. nvidia-h100-sxm
    name: str  # human name
    kind: str  # gpu | tpu | cpu
    vendor: str  # NVIDIA, Google, Apple, generic
    memory_bytes: int  # device memory (bytes)
    bandwidth_bytes_s: float | None  # memory bandwidth (bytes/s)
    peak_flops: dict[str, float | None]  # dense peak FLOP/s per precision; None = unsupported
    price_usd_per_hour: float | None  # USD per device-hour of the chosen quote (`price`); None = not rented
    interconnect: str = ""  # links between devices
    extra: dict[str, Any] = field(default_factory=dict)  # sources, notes, dates (kept for --catalog)
    match: tuple[str, ...] = ()  # name fragments of detected devices that are this entry (whole words)
    match_min_memory_bytes: int = 0  # ... only when the detected device has at least this memory (bytes)
    peak_notes: dict[str, str] = field(default_factory=dict)  # per column: where a non-catalog peak comes from
    prices: tuple[Price, ...] = ()  # every quote of the catalog, with market, source and date
    price: Price | None = None  # the quote planned with (cloud where one exists, or the market asked for)

    def supports(self, precision: str) -> bool:
        return bool(self.peak_flops.get(precision))

    def training_peak(self, precision: str) -> float | None:
        """Dense peak FLOP/s that training in `precision` (fp32 | bf16 | fp16) can reach; None when
        the device has no figure for it."""
        return next((self.peak_flops[c] for c in TRAINING_PEAK_COLUMNS[precision] if self.peak_flops.get(c)), None)

    def peak_note(self, precision: str) -> str:
        """One line: where `training_peak(precision)` comes from."""
        col = next((c for c in TRAINING_PEAK_COLUMNS[precision] if self.peak_flops.get(c)), None)
        if col is None:
            return f"no {precision} peak for {self.id}"
        return self.peak_notes.get(col) or f"catalog {self.id}: datasheet dense {col} peak"


def _packaged() -> dict[str, Any]:
    text = resources.files("budgetlm").joinpath("catalog.json").read_text(encoding="utf-8")
    return json.loads(text)


def _prices(e: dict[str, Any]) -> tuple[Price, ...]:
    quotes = tuple(Price(float(q["usd_per_hour"]), str(q["market"]), str(q["source"]), str(q["as_of"]),
                         int(q.get("min_devices", 1)), str(q.get("note", ""))) for q in e.get("prices") or ())
    bad = [q.market for q in quotes if q.market not in MARKETS]
    if bad:
        raise ValueError(f"{e['id']}: unknown price market {bad[0]!r} (markets: {', '.join(MARKETS)})")
    return quotes


def choose_price(quotes: tuple[Price, ...], market: str = "default") -> Price | None:
    """The quote to plan with: in a given market its cheapest; by default a price of your own
    catalog file, else the on-demand cloud price, else the first the catalog lists (one market)."""
    if market != "default":
        inside = [q for q in quotes if q.market == market]
        return min(inside, key=lambda q: q.usd_per_hour) if inside else None
    for m in ("user", "cloud"):
        found = [q for q in quotes if q.market == m]
        if found:
            return found[0]
    return quotes[0] if quotes else None


def with_market(device: Device, market: str) -> Device:
    """The device priced from `market` (`choose_price`); no price when it has none there."""
    if market not in ("default", *MARKETS):
        raise BudgetError(f"unknown market {market!r}: choose default, {', '.join(MARKETS)}")
    q = choose_price(device.prices, market)
    return dataclasses.replace(device, price=q, price_usd_per_hour=q.usd_per_hour if q else None)


def _device_from_entry(e: dict[str, Any]) -> Device:
    tflops = e.get("tflops") or {}
    quotes = _prices(e)
    chosen = choose_price(quotes)
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
        price_usd_per_hour=chosen.usd_per_hour if chosen else None,
        interconnect=str(e.get("interconnect", "")),
        extra={k: v for k, v in e.items() if k not in ("tflops",)},
        match=(e["match"],) if isinstance(e.get("match"), str) else tuple(str(m) for m in e.get("match") or ()),
        match_min_memory_bytes=int(float(e.get("match_min_memory_gb") or 0) * 1e9),
        prices=quotes,
        price=chosen,
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


def load_catalog(user_file: str | Path | None = None, market: str = "default") -> dict[str, Device]:
    """id -> Device: the packaged catalog, then the user's file (argument, else $BUDGETLM_CATALOG),
    priced from `market` (`choose_price`)."""
    entries = {e["id"]: copy.deepcopy(e) for e in _packaged()["devices"]}
    user_file = user_file or os.environ.get(ENV_VAR) or None
    if user_file:
        for e in _read_user_file(user_file):
            if "price_usd_per_hour" in e and "prices" not in e:  # your own price wins, and says so
                price = e["price_usd_per_hour"]
                e = {**e, "prices": [] if price is None else [
                    {"usd_per_hour": price, "market": "user", "source": f"your catalog file {user_file}",
                     "as_of": "as given"}]}
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
        devices = {k: _device_from_entry(v) for k, v in entries.items()}
    except (TypeError, ValueError, KeyError) as e:
        raise BudgetError(f"catalog entry has a bad value ({e})") from None
    return devices if market == "default" else {k: with_market(d, market) for k, d in devices.items()}


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


def match_device(name: str, catalog: dict[str, Device], memory_bytes: int = 0, kind: str = "gpu") -> str | None:
    """The catalog id of a detected device (a torch.cuda or torch_xla name) of `kind`, from the
    entries' `match` fragments: a fragment matches as whole words, case-insensitively ("L4" is not
    in "L40S"). The longest matching fragment wins ("H100 PCIe" over "H100"); among entries with the
    same fragment, the highest `match_min_memory_gb` the device reaches (V100 16/32 GB, A100 40/80 GB);
    the id breaks what ties remain, so the answer never depends on the catalog's order."""
    found = [(-len(frag), -d.match_min_memory_bytes, d.id) for d in catalog.values() if d.kind == kind
             for frag in d.match
             if memory_bytes >= d.match_min_memory_bytes
             and re.search(rf"(?<![0-9a-z]){re.escape(frag.lower())}(?![0-9a-z])", name.lower())]
    return min(found)[2] if found else None
