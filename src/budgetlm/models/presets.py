"""Model sizes without torch: named presets, one depth dial, exact parameter counts.

The depth dial follows nanochat: depth is the only free number and everything else is derived
from it. Width = 64 x depth (nanochat's aspect ratio) and head size 64, so heads = depth; 64-wide
heads suit small models (GPT-2 small and BERT-base use them). The named presets are simply
points on that dial, so a preset and its depth give the same model.

`num_params(cfg)` equals `sum(p.numel() for p in Transformer(cfg).parameters())` (a test checks
it) so `plan` can do exact memory and FLOP arithmetic without importing torch (FLOPs per token:
`budgetlm.planning.flops_per_token`).
"""

from __future__ import annotations

from dataclasses import replace

from budgetlm.models.config import ModelConfig

ASPECT_RATIO = 64  # width per layer of depth (nanochat: model_dim = depth * 64)
HEAD_DIM = 64  # channels per attention head

# name -> depth. Non-embedding parameters (causal): tiny 0.43M, small 10.6M, base 85M (GPT-2/BERT size).
PRESETS: dict[str, int] = {
    "tiny": 2,
    "mini": 4,
    "small": 6,
    "medium": 8,
    "base": 12,
    "large": 16,
    "xl": 20,
}


def depth_of(preset_or_depth: str | int) -> int:
    """'small' -> 6, '6' -> 6, 6 -> 6; ValueError for anything else."""
    if isinstance(preset_or_depth, int):
        depth = preset_or_depth
    elif str(preset_or_depth).strip().isdigit():
        depth = int(str(preset_or_depth).strip())
    elif str(preset_or_depth) in PRESETS:
        depth = PRESETS[str(preset_or_depth)]
    else:
        names = ", ".join(PRESETS)
        raise ValueError(f"unknown model size {preset_or_depth!r}: use a depth (e.g. 6) or one of {names}")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    return depth


def heads_for(width: int) -> int:
    """Attention heads for a width: 64-wide heads where the width allows, else 32-wide ones
    (widths that are multiples of 32 but not of 64, such as 96 or 160)."""
    if width % HEAD_DIM == 0:
        return width // HEAD_DIM
    return max(1, width // (HEAD_DIM // 2))


def model_config(preset_or_depth: str | int, vocab_size: int, causal: bool = True,
                 max_seq_len: int = 512, width: int | None = None, **overrides) -> ModelConfig:
    """A ModelConfig for a preset name or a depth, `width` channels wide (default: 64 x depth);
    keyword overrides replace any derived field."""
    depth = depth_of(preset_or_depth)
    width = width or ASPECT_RATIO * depth
    cfg = ModelConfig(vocab_size=vocab_size, n_layer=depth, n_embd=width, n_head=heads_for(width),
                      max_seq_len=max_seq_len, causal=causal)
    return replace(cfg, **overrides) if overrides else cfg


def num_params(cfg: ModelConfig, embeddings: bool = True) -> int:
    """Exact trainable parameter count of `Transformer(cfg)` (the LM, head included).

    embeddings=False leaves out the token embedding and an untied output matrix (the count that
    scaling laws and the 6N FLOP rule use)."""
    C, L, V, A = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.attn_dim
    attn = 4 * C * A  # fused q, k, v (3A x C) and the output projection (C x A); A = C unless heads were pruned
    mlp = 3 * C * cfg.ffn_dim  # fused gate/up (2 I x C) and down (C x I)
    norms = 2 * C * L + C  # two per block and the final one
    if not cfg.causal:
        # ModernBERT adds a norm after the embedding but drops layer 0's attention norm (net 0),
        # and adds the prediction head: dense (C x C) and its norm.
        norms += C * C + C
    total = L * (attn + mlp) + norms
    if embeddings:
        total += V * C * (1 if cfg.tie_embeddings else 2)
    return total


def describe(cfg: ModelConfig) -> str:
    kind = "causal" if cfg.causal else "masked"
    return (f"{kind} {cfg.n_layer}L x {cfg.n_embd}C, {cfg.n_head} heads, MLP {cfg.ffn_dim}, "
            f"{num_params(cfg) / 1e6:.2f}M params")
