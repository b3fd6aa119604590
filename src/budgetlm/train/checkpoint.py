"""Checkpoints: atomic, self-describing, resumable.

Layout of a run directory:

    RUN/checkpoints/step_000120/   one complete checkpoint
        model.safetensors          weights (safetensors: no pickle, loadable by transformers tooling)
        state.pt                   optimizer, loop state (step, tokens, elapsed budget), data position,
                                   RNG states, grad scaler: everything `--resume` needs
        meta.json                  model config, model kind, run config, objective, metrics
        tokenizer.json             the tokenizer the model was trained with
    RUN/checkpoints/best.json      which step had the best validation loss

Atomicity: a checkpoint is written into a hidden temporary directory, every file is fsynced, then the
directory is renamed into place. A crash or SIGKILL mid-save leaves only a `.tmp-*` directory that
readers ignore, so the previous checkpoint still loads. We keep the last N plus the best.

`load_model(run_dir)` is what generate/eval/export/finetune use: it rebuilds the model from meta.json
through `MODEL_KINDS` (a registry other modules extend, e.g. the classifier of `finetune`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_model as _st_load_model
from safetensors.torch import save_model as _st_save_model

from budgetlm.config import BudgetError, fsync_dir, to_dict, write_json_atomic

FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d+)$")


# --------------------------------------------------------------------------------------------------
# model kinds: meta["model_kind"] -> builder(meta) -> nn.Module (weights loaded afterwards)


def _build_lm(meta: dict[str, Any]) -> torch.nn.Module:
    from budgetlm.config import from_dict
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model

    return build_model(from_dict(ModelConfig, meta["model_config"]))


MODEL_KINDS: dict[str, Callable[[dict[str, Any]], torch.nn.Module]] = {"lm": _build_lm}


def register_model_kind(name: str, builder: Callable[[dict[str, Any]], torch.nn.Module]) -> None:
    """Let another module (e.g. finetune's classifier) describe how to rebuild its model."""
    MODEL_KINDS[name] = builder


# --------------------------------------------------------------------------------------------------
# saving


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    meta: dict[str, Any],
    state: dict[str, Any] | None = None,
    tokenizer_path: str | Path | None = None,
    keep_last: int = 2,
    val_loss: float | None = None,
) -> Path:
    """Write RUN/checkpoints/step_XXXXXX atomically; return its path. `model` must be unwrapped."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _st_save_model(model, str(tmp / "model.safetensors"))  # handles tied (shared) tensors
    if state is not None:
        torch.save(state, tmp / "state.pt")
    if tokenizer_path is not None and Path(tokenizer_path).exists():
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    full_meta = {"format_version": FORMAT_VERSION, "step": step, "model_kind": "lm", **to_dict(meta)}
    if val_loss is not None:
        full_meta["val_loss"] = val_loss
    with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
        json.dump(full_meta, fh, indent=2)
    for f in tmp.iterdir():
        _fsync_file(f)
    fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. the final save right after a periodic one)
        old = root / f".old-step_{step:06d}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(root)
    if val_loss is not None:
        best = read_best(run_dir)
        if best is None or val_loss <= best["val_loss"]:
            write_json_atomic(root / "best.json", {"step": step, "val_loss": val_loss})
    prune(run_dir, keep_last)
    return final


def read_best(run_dir: str | Path) -> dict[str, Any] | None:
    path = checkpoints_dir(run_dir) / "best.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (temporary directories are ignored), oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def prune(run_dir: str | Path, keep_last: int) -> None:
    ckpts = list_checkpoints(run_dir)
    best = read_best(run_dir)
    best_name = f"step_{best['step']:06d}" if best else None
    for p in ckpts[: max(0, len(ckpts) - max(1, keep_last))]:
        if p.name != best_name:
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# loading


def resolve_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A run directory or a checkpoint directory -> the checkpoint directory to load."""
    path = Path(path)
    if (path / "meta.json").is_file() and (path / "model.safetensors").exists():
        return path
    if not path.exists():
        raise BudgetError(f"no model at {path}: expected a run directory written by `budgetlm train`")
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise BudgetError(f"{path} holds no checkpoint (no {path}/checkpoints/step_*/): is it a run directory?")
    if which == "best":
        best = read_best(path)
        if best:
            cand = checkpoints_dir(path) / f"step_{best['step']:06d}"
            if cand.is_dir():
                return cand
    return ckpts[-1]


def read_meta(ckpt: Path) -> dict[str, Any]:
    try:
        meta = json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BudgetError(f"checkpoint {ckpt} is corrupt: unreadable meta.json ({e})") from None
    if not isinstance(meta, dict) or "model_config" not in meta:
        raise BudgetError(f"checkpoint {ckpt} is corrupt: meta.json has no model_config")
    return meta


def load_weights(model: torch.nn.Module, ckpt: Path, device: str | torch.device = "cpu") -> None:
    try:
        missing, unexpected = _st_load_model(model, str(ckpt / "model.safetensors"), strict=False,
                                             device=str(device))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise BudgetError(f"checkpoint {ckpt} is corrupt: cannot read model.safetensors ({e})") from None
    if missing or unexpected:
        raise BudgetError(
            f"checkpoint {ckpt} does not match its model config "
            f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", which: str = "latest"):
    """Rebuild a trained model: `(model, meta)`, model in eval mode on `device`.

    meta is the checkpoint's meta.json plus `checkpoint_dir` and `tokenizer_path` (absolute paths).
    Missing, corrupt or mismatched checkpoints raise BudgetError with one clear line.
    """
    ckpt = resolve_checkpoint(run_dir, which)
    meta = read_meta(ckpt)
    kind = meta.get("model_kind", "lm")
    if kind not in MODEL_KINDS and kind == "classifier":
        import budgetlm.finetune  # noqa: F401 - registers the "classifier" kind on import
    if kind not in MODEL_KINDS:
        raise BudgetError(f"checkpoint {ckpt} has unknown model kind {kind!r}")
    try:
        model = MODEL_KINDS[kind](meta)
    except (TypeError, ValueError, KeyError) as e:
        raise BudgetError(f"checkpoint {ckpt} is corrupt: bad model config ({e})") from None
    load_weights(model, ckpt, "cpu")
    model.to(device).eval()
    meta["checkpoint_dir"] = str(ckpt.resolve())
    tok = ckpt / "tokenizer.json"
    meta["tokenizer_path"] = str(tok.resolve()) if tok.exists() else None
    return model, meta


def load_state(ckpt: Path) -> dict[str, Any]:
    """The resumable training state (optimizer, loop counters, RNG, data position)."""
    try:
        # weights_only=False: the state holds numpy RNG state; files are our own, written by us.
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise BudgetError(f"checkpoint {ckpt} has no training state (state.pt): cannot resume") from None
    except Exception as e:  # noqa: BLE001
        raise BudgetError(f"checkpoint {ckpt} is corrupt: cannot read state.pt ({e})") from None
