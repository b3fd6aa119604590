"""config.py: durations, dataclass -> CLI flags with comment help, JSON io."""

import argparse
import json
from dataclasses import dataclass
from typing import Literal

import pytest

from budgetlm.fsio import atomic_write_json
from budgetlm.config import (
    BudgetError,
    add_dataclass_args,
    field_comments,
    format_duration,
    from_args,
    from_dict,
    parse_duration,
)


@pytest.mark.parametrize(
    "text,seconds",
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45", 45),
     ("1.5h", 5400), ("2m30s", 150), ("1d2h", 93600)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "10x", "h1", "1h 30q", "0s", "-5m", "m10"])
def test_parse_duration_rejects(bad):
    with pytest.raises(BudgetError):
        parse_duration(bad)


def test_format_duration():
    assert format_duration(5) == "5.0s"
    assert format_duration(185) == "3m05s"
    assert format_duration(3720) == "1h02m"
    assert format_duration(90000) == "1d01h"


@dataclass
class _Cfg:
    steps: int = 10  # optimizer steps to take
    lr: float = 3e-4  # peak learning rate
    name: str = "x"  # a name
    fast: bool = False  # go fast
    kind: Literal["a", "b"] = "a"  # which kind
    files: list[str] | None = None  # input files


def test_field_comments_are_help():
    c = field_comments(_Cfg)
    assert c["steps"] == "optimizer steps to take"
    assert c["kind"] == "which kind"
    p = argparse.ArgumentParser()
    add_dataclass_args(p, _Cfg)
    help_text = p.format_help()
    assert "peak learning rate" in help_text and "--no-fast" in help_text


def test_dataclass_args_roundtrip():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, _Cfg)
    args = p.parse_args(["--steps", "5", "--fast", "--kind", "b", "--files", "x", "y"])
    cfg = from_args(_Cfg, args)
    assert cfg == _Cfg(steps=5, fast=True, kind="b", files=["x", "y"])
    with pytest.raises(SystemExit):
        p.parse_args(["--kind", "c"])


def test_json_atomic_and_from_dict(tmp_path):
    path = tmp_path / "c.json"
    atomic_write_json(path, _Cfg(steps=3))
    data = json.loads(path.read_text())
    data["unknown_future_key"] = 1
    assert from_dict(_Cfg, data).steps == 3
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temp file left behind
