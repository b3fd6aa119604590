"""Batches from memory-mapped token shards: random windows or one sequential pass, resumable.

`TokenLoader(tokens, seq_len, batch_size, ...)` is a callable that returns the next micro-batch as a
dict of tensors for `model(**batch)`:

    causal: {"idx": (B, T) inputs, "targets": (B, T) the same window shifted by one}
    masked: {"idx": (B, T) with masked positions replaced, "targets": (B, T), -100 where unmasked}

Determinism and DDP: every call draws the *global* batch (world_size x B windows) from one generator
seeded by `seed`, and rank r keeps rows [r*B, (r+1)*B). Every rank therefore sees its own slice and
two ranks together see exactly what one process with the global batch sees (the DDP test relies on
this). `state_dict()` / `load_state_dict()` capture the generator and the position, so a resumed run
continues with the very next batch.

Masking (BERT, Devlin et al. 2019; rate from Cramming, Geiping & Goldstein 2022, which found 25% best
at its scale): each non-special token is selected with probability `rate`; of those 80% become
[MASK], 10% a random token, 10% stay unchanged; the loss covers exactly the selected positions.

Input noise (causal only): a fraction of the input tokens replaced by tokens drawn from the batch,
targets unchanged, a regulariser for data seen many times (`_noised`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from budgetlm.config import BudgetError


@dataclass
class MaskingConfig:
    rate: float = 0.25  # fraction of tokens selected for prediction (Cramming: 25%)
    mask_frac: float = 0.8  # of the selected: replaced by [MASK]
    random_frac: float = 0.1  # of the selected: replaced by a random token (the rest stay unchanged)

    def __post_init__(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise BudgetError(f"mask rate must be in (0, 1), got {self.rate}")
        if self.mask_frac + self.random_frac > 1.0:
            raise BudgetError("mask_frac + random_frac must not exceed 1")


class MaskingCollator:
    """(B, T+0) token windows -> masked inputs and targets, from a caller-owned numpy Generator."""

    def __init__(self, cfg: MaskingConfig, mask_id: int, vocab_size: int, special_ids: list[int]):
        self.cfg = cfg
        self.mask_id = mask_id
        self.vocab_size = vocab_size
        self.special = np.asarray(sorted(set(special_ids)), dtype=np.int64)

    def __call__(self, windows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        tokens = windows.astype(np.int64)  # (B, T)
        eligible = ~np.isin(tokens, self.special)
        u = rng.random(tokens.shape)
        selected = (u < self.cfg.rate) & eligible
        # Split the selected positions 80/10/10 with a second uniform draw.
        v = rng.random(tokens.shape)
        to_mask = selected & (v < self.cfg.mask_frac)
        to_random = selected & (v >= self.cfg.mask_frac) & (v < self.cfg.mask_frac + self.cfg.random_frac)
        inputs = tokens.copy()
        inputs[to_mask] = self.mask_id
        inputs[to_random] = rng.integers(0, self.vocab_size, size=int(to_random.sum()))
        targets = np.where(selected, tokens, -100)
        return {"idx": inputs, "targets": targets}


class TokenLoader:
    """Callable micro-batch source over a 1-D token array (memmap or any array-like)."""

    def __init__(
        self,
        tokens,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        mode: Literal["random", "sequential"] = "random",
        rank: int = 0,
        world_size: int = 1,
        collator: MaskingCollator | None = None,
        input_noise: float = 0.0,
    ):
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.mode = mode
        self.rank, self.world = rank, world_size
        self.collator = collator
        if input_noise and collator is not None:
            raise BudgetError("input noise is for causal windows; the masked objective corrupts its inputs itself")
        self.input_noise = input_noise
        # Causal windows need T+1 tokens (inputs and shifted targets); masked windows need T.
        self.window = seq_len + (0 if collator else 1)
        if len(tokens) < self.window:
            raise BudgetError(
                f"the data has {len(tokens)} tokens, fewer than one window of {self.window}: "
                "use a shorter --seq-len or more data"
            )
        if mode not in ("random", "sequential"):
            raise BudgetError(f"unknown sampling mode {mode!r}: choose random or sequential")
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.position = 0  # sequential: index of the next window (in units of seq_len tokens)
        self.batches = 0  # global batches drawn so far

    # -- sampling ---------------------------------------------------------------------------------

    def _starts(self, n: int) -> np.ndarray:
        if self.mode == "random":
            return self.rng.integers(0, len(self.tokens) - self.window + 1, size=n)
        # Sequential: consecutive non-overlapping windows; wrap around at the end (next epoch).
        per_epoch = (len(self.tokens) - self.window) // self.seq_len + 1
        idx = (self.position + np.arange(n)) % per_epoch
        self.position = int((self.position + n) % per_epoch)
        return idx * self.seq_len

    def __call__(self) -> dict[str, torch.Tensor]:
        g = self.batch_size * self.world
        starts = self._starts(g)
        windows = np.stack([np.asarray(self.tokens[s : s + self.window]) for s in starts])  # (G, W)
        self.batches += 1
        if self.collator is not None:
            out = self.collator(windows, self.rng)
        else:
            w = windows.astype(np.int64)
            out = {"idx": w[:, :-1], "targets": w[:, 1:]}
            if self.input_noise:
                out["idx"] = self._noised(out["idx"], w)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        return {k: torch.from_numpy(np.ascontiguousarray(v[lo:hi])) for k, v in out.items()}

    def _noised(self, idx: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """idx (G, T) with a fraction `input_noise` of its tokens replaced by tokens drawn from `pool`
        (this batch's windows: random windows of the corpus, so close to its unigram distribution).
        Only the inputs change; every target stays the true next token. Unigram noising is data
        noising as a regulariser for language models (Xie et al. 2017), for data seen many times."""
        hit = self.rng.random(idx.shape) < self.input_noise  # (G, T) bool
        idx = idx.copy()
        idx[hit] = pool.ravel()[self.rng.integers(0, pool.size, size=int(hit.sum()))]
        return idx

    # -- resumable position -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "position": self.position, "batches": self.batches,
                "seed": self.seed, "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.position = int(state["position"])
        self.batches = int(state["batches"])
