"""`budgetlm bench`: measured training steps on this device; writes the calibration file that
`plan` and `train` read. The plan's prediction is shown beside each measurement."""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import ui
from budgetlm.config import add_dataclass_args, from_args
from budgetlm.training.calibrate import CalibrationConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, CalibrationConfig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm import api

    cfg = from_args(CalibrationConfig, args)
    out = api.calibrate(cfg)
    rows = []
    for precision, points in out["precisions"].items():
        for r in points:
            if r.get("seq_len") != cfg.seq_len or bool(r.get("compile")) != (cfg.compile == "on"):
                continue  # kept from earlier measurements
            rows.append([precision, r["depth"], f"{r['params'] / 1e6:.2f}M", f"{r['step_seconds'] * 1000:.0f} ms",
                         f"{r['tokens_per_second']:,.0f}", f"{r['achieved_flops'] / 1e9:,.1f}",
                         "-" if r.get("mfu") is None else f"{r['mfu']:.2f}",
                         f"{r['peak_memory_bytes'] / 2**20:,.0f} MiB" if "peak_memory_bytes" in r else "-"])
    ui.table(f"bench on {out['name']} ({out['micro_batch']} x {cfg.seq_len} tokens per step, {cfg.optimizer}"
             f"{', compiled' if cfg.compile == 'on' else ''})",
             ["precision", "depth", "params", "step", "tokens/s", "GFLOP/s", "MFU", "peak memory"], rows)
    if "calibration_file" in out:
        ui.info(f"calibration written to {out['calibration_file']}")
    return out
