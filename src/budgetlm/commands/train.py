"""`budgetlm train --data DIR --out RUN [--budget DURATION]`: pre-train a causal or masked model.

Flags given on the command line win over `--config FILE` (a run's config.json, or a TOML file),
which wins over the defaults. With `--resume`, the run's own config.json is the base and only the
settings that may change on resume (budget, device, checkpoint intervals, ...) are taken from flags.
"""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm.config import add_dataclass_args, given_args, load_config_file
from budgetlm.training.job import RESUME_OVERRIDES, TrainConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="settings from a JSON file (a run's config.json re-runs that job) or a TOML "
                             "file; flags given here win (default: none)")
    add_dataclass_args(parser, TrainConfig, only_given=True)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, dict[str, Any]]:
    """(the run config, the settings given explicitly on the command line)."""
    given = given_args(TrainConfig, args)
    base = load_config_file(args.config, TrainConfig) if getattr(args, "config", None) else {}
    return TrainConfig(**{**base, **given}), {k: v for k, v in given.items() if k in RESUME_OVERRIDES}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm import api

    cfg, given = config_from_args(args)
    return api.train(cfg, given=given).to_json()
