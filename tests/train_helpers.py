"""Shared fixtures for the training tests: a tiny dataset written into tmp_path and tiny flags."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("the king and queen of castle river speak loud quiet night day sword crown horse "
         "field stone gold silver light dark old young").split()


def make_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_words // 8):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(8)) + ".")
    return "\n".join(lines) + "\n"


def make_dataset(root: Path, name: str = "ds", n_words: int = 6000, tokenizer: str = "byte",
                 vocab_size: int = 0) -> Path:
    """A prepared dataset folder with train and val splits (byte tokenizer: no training, fast)."""
    from budgetlm.data.prepare import PrepareConfig, prepare_dataset

    src = root / f"{name}_src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "train.txt").write_text(make_text(n_words, 0))
    (src / "val.txt").write_text(make_text(max(400, n_words // 10), 1))
    out = root / name
    prepare_dataset([str(src / "train.txt")], str(out),
                    PrepareConfig(tokenizer=tokenizer, vocab_size=vocab_size), [str(src / "val.txt")])
    return out


# Flags for a model that trains in milliseconds per step on CPU.
TINY = ["--model", "2", "--n-embd", "32", "--seq-len", "32", "--batch-size", "4",
        "--precision", "fp32", "--device", "cpu", "--log-every", "1", "--eval-tokens", "256"]


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spin contention
    (measured: a 128x32 linear takes 40x longer with 2 threads while other processes run)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def subprocess_env() -> dict:
    import os

    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("BUDGETLM_FAULT_KILL_AFTER_STEP", None)
    return env


def lm_meta(cfg, **fields):
    """The CheckpointMeta of a budgetlm language model of shape `cfg` (a ModelConfig)."""
    from budgetlm.config import to_dict
    from budgetlm.training.checkpoint import CheckpointMeta

    return CheckpointMeta(kind="lm", model_config=to_dict(cfg), objective="causal" if cfg.causal else "masked",
                          **fields)
