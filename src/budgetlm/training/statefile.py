"""Training state on disk without pickle: tensors in safetensors, everything else in JSON.

A checkpoint's resumable state (optimizer moments, loop counters, data position, RNG states, grad
scaler) is a nest of dicts, lists, tuples, numbers, strings, tensors and numpy arrays. `torch.load`
of a pickle can run arbitrary code, so a downloaded run folder could take over the machine; this
format cannot. The nest goes to `state.json` with each tensor replaced by a reference into
`state.safetensors` (a format that holds only tensors); tuples, dicts with non-string keys (an
optimizer's state is keyed by parameter index) and numpy arrays are tagged so they load back as
they were saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

JSON_NAME = "state.json"
TENSORS_NAME = "state.safetensors"


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        # safetensors has no unsigned 32-bit type on every version: widen, and record the dtype
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).astype(np.int64 if obj.dtype.kind in "iu" else obj.dtype))
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state file")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__dict__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_state(folder: str | Path, state: dict[str, Any]) -> None:
    """Write `state` as folder/state.json + folder/state.safetensors (the caller makes it atomic)."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, tensors)
    # tensors that share storage (tied weights, views) must be separate copies in safetensors
    save_file({k: v.clone() for k, v in tensors.items()}, str(folder / TENSORS_NAME))
    (folder / JSON_NAME).write_text(json.dumps(encoded), encoding="utf-8")


def load_state(folder: str | Path) -> dict[str, Any]:
    """Read what `save_state` wrote. Raises OSError / ValueError on missing or damaged files."""
    folder = Path(folder)
    encoded = json.loads((folder / JSON_NAME).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / TENSORS_NAME)) if (folder / TENSORS_NAME).exists() else {}
    return _decode(encoded, tensors)
