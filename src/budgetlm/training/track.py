"""Metrics of a run: RUN/metrics.jsonl always, and the experiment trackers people watch runs in.

    MetricsLogger(path, trackers=["tensorboard", "wandb", "mlflow"], run_dir=RUN, config=resolved)

Every metric line goes to metrics.jsonl as it is (one JSON object per line). Trackers receive the
numeric values under grouped names (`TAGS`: train/loss, val/bits_per_byte, perf/tokens_per_s,
perf/mfu, lr, ...) at the line's optimizer step, and the run's resolved config as hyper-parameters.
Each tracker is an optional extra (`pip install 'budgetlm[tensorboard]'`, `[wandb]`, `[mlflow]`);
asking for one that is not installed is a one-line error before training starts.

- tensorboard: event files in RUN/tensorboard (`tensorboard --logdir RUN/tensorboard`);
- wandb: project `budgetlm` (WANDB_PROJECT overrides), run named after the run folder; offline
  without an account: WANDB_MODE=offline;
- mlflow: experiment `budgetlm` (MLFLOW_EXPERIMENT_NAME overrides) at MLFLOW_TRACKING_URI (a server,
  sqlite:///mlflow.db, or a local file store: mlflow 3 accepts one with MLFLOW_ALLOW_FILE_STORE=true).
A tracker that fails to start (a server down) is reported in one line and training goes on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Protocol

from budgetlm.config import BudgetError

# metric-line key -> tracker name (grouped so dashboards show train/, val/ and perf/ panels)
TAGS = {
    "loss": "train/loss",
    "val_loss": "val/loss",
    "val_bpb": "val/bits_per_byte",
    "val_accuracy": "val/accuracy",
    "val_f1_macro": "val/f1_macro",
    "accuracy": "val/accuracy",
    "f1_macro": "val/f1_macro",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
    "lr": "lr",
    "tokens": "train/tokens",
    "elapsed_s": "train/elapsed_s",
}


def tagged(record: dict[str, Any]) -> dict[str, float]:
    """The numeric values of a metric line under their tracker names (final evaluations: final/...)."""
    out = {}
    for k, v in record.items():
        if k in ("step", "final") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        name = TAGS.get(k, f"other/{k}")
        if record.get("final"):  # the whole-split evaluation at the end: final/loss, final/bits_per_byte
            if not name.startswith("val/"):
                continue
            name = "final/" + name.split("/")[-1]
        out[name] = float(v)
    return out


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.w = SummaryWriter(str(run_dir / "tensorboard"))
        self.w.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")
        self.config = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.w.add_scalar(k, v, step)

    def close(self) -> None:
        self.w.close()


class _WandB:
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "budgetlm"), name=run_dir.name,
                              dir=str(run_dir), config=config, reinit="finish_previous")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "budgetlm"))
        self.run = mlflow.start_run(run_name=run_dir.name)
        flat = {k: str(v)[:500] for k, v in config.items()}  # mlflow params are short strings
        mlflow.log_params(flat)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


# name -> (module that must be importable, extra to install, constructor)
TRACKERS: dict[str, tuple[str, str, Callable[[Path, dict[str, Any]], Tracker]]] = {
    "tensorboard": ("tensorboard", "tensorboard", _TensorBoard),
    "wandb": ("wandb", "wandb", _WandB),
    "mlflow": ("mlflow", "mlflow", _MLflow),
}


def check_trackers(names: list[str]) -> None:
    """One-line errors for unknown or uninstalled trackers, before anything runs."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise BudgetError(f"unknown tracker {name!r}: choose from {', '.join(TRACKERS)}")
        module, extra, _ = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise BudgetError(f"--track {name} needs {module}: pip install 'budgetlm[{extra}]'")


class MetricsLogger:
    """Metric lines to RUN/metrics.jsonl (opened lazily) and to the chosen trackers."""

    def __init__(self, path: str | Path | None, trackers: list[str] = (), run_dir: str | Path | None = None,
                 config: dict[str, Any] | None = None):
        self.path = Path(path) if path else None
        self._fh = None
        check_trackers(list(trackers))
        self.pending = list(trackers) if run_dir is not None else []
        self.run_dir, self.config = (Path(run_dir) if run_dir else None), dict(config or {})
        self.trackers: list[Tracker] = []

    def log(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        if self.pending:  # trackers start with the first line: nothing is created for a run that never stepped
            self.trackers = [t for t in map(self._start, self.pending) if t is not None]
            self.pending = []
        metrics = tagged(record)
        for t in self.trackers:
            t.log(metrics, int(record.get("step", 0)))

    def _start(self, name: str) -> Tracker | None:
        """A tracker that fails to start is reported and left out: training goes on, and
        metrics.jsonl still has every line."""
        try:
            return TRACKERS[name][2](self.run_dir, self.config)
        except Exception as e:  # noqa: BLE001 - third-party trackers raise anything
            from budgetlm import ui

            ui.warn(f"--track {name} could not start ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                    "training goes on without it")
            return None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        for t in self.trackers:
            t.close()
        self.trackers = []
