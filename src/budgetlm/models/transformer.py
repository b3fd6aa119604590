"""One transformer backbone for both families; imports only torch.

`ModelConfig.causal` picks the family, and the family is a few lines of data (`FAMILIES`), not a
second model:

- causal=True  -> laid out exactly like Hugging Face `LlamaForCausalLM`: RMSNorm before attention
  and MLP, SwiGLU MLP, rotate-half rotary positions, final RMSNorm, (tied) output projection.
- causal=False -> laid out exactly like `ModernBertForMaskedLM` with global attention everywhere:
  LayerNorm (no bias) after the token embedding, no norm before the first layer's attention,
  GeGLU MLP, final norm, prediction head (dense, GELU, norm) and a (tied) decoder.

The one-to-one layout is what lets `budgetlm export` write plain `transformers` folders with exact
logits. Attention is `F.scaled_dot_product_attention`, which dispatches to flash kernels on GPUs
and to the fused flash-attention kernel on CPU. The query/key/value projections are one fused
matrix (ModernBERT stores them that way; export splits it for Llama), and the two MLP input
projections are one fused matrix too: fewer, larger matmuls are faster on every device.

Forward contract:  logits, loss = model(idx, targets=None, attention_mask=None)
  causal: targets (B, T) next-token ids, -100 = ignore; logits (B, T, V); loss = mean CE.
  masked: targets (B, T) with -100 at unmasked positions; the output projection runs only at the
          masked positions (sparse prediction, Geiping & Goldstein 2022 "Cramming"), so logits are
          (N_masked, V). Without targets the logits are dense (B, T, V).
  attention_mask (B, T): 1 = real token, 0 = padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from budgetlm.models.config import ModelConfig


@dataclass(frozen=True)
class Family:
    """What differs between the causal (Llama) and the masked (ModernBERT) layout."""

    norm: str  # key into NORMS
    activation: str  # key into ACTIVATIONS, applied to the first half of the fused MLP input
    embedding_norm: bool  # a norm right after the token embedding (ModernBERT)
    first_attn_norm: bool  # layer 0 normalises before attention (Llama) or not (ModernBERT)
    prediction_head: bool  # dense + activation + norm before the output projection (ModernBERT)
    hf_architecture: str  # the transformers class this layout maps onto


def _layer_norm(dim: int, eps: float) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps, bias=False)  # ModernBERT: norm_bias=False


def _rms_norm(dim: int, eps: float) -> nn.Module:
    return nn.RMSNorm(dim, eps=eps)  # Llama: T5-style RMSNorm with a learned scale


NORMS = {"rms": _rms_norm, "layer": _layer_norm}
# "gelu" is the exact erf GELU, which is what transformers' ACT2FN["gelu"] computes.
ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}
FAMILIES = {
    True: Family("rms", "silu", False, True, False, "LlamaForCausalLM"),
    False: Family("layer", "gelu", True, False, True, "ModernBertForMaskedLM"),
}


def family(cfg: ModelConfig) -> Family:
    return FAMILIES[bool(cfg.causal)]


# --------------------------------------------------------------------------------------------------
# rotary positions


def rope_tables(head_dim: int, length: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each (length, head_dim / 2), in fp32.

    Frequencies as RoFormer (Su et al. 2021) and transformers' default rope: theta^(-2i/d),
    computed with the same fp32 operations so that exported models agree to the last bit."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    angles = torch.arange(length, device=device).float()[:, None] * inv_freq[None, :]  # (L, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding (the Llama/NeoX convention: pairs are (i, i + D/2)).

    x (B, T, H, D); cos, sin (T, D/2), or (B, T, D/2) when each row has its own positions."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, T, H, D/2) each
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)  # (T, 1, D/2) or (B, T, 1, D/2)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# --------------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Keys and values of every layer for incremental causal decoding.

    Pre-allocated (n_layer, B, H, max_len, D) so a decode step writes in place instead of
    concatenating; `pos` is how many slots are filled (also the rotary offset of new tokens).

    Rows of different lengths are left-padded: the first input with an attention mask switches the
    cache to tracking, per row, which slots hold real tokens (`valid`) and how many real tokens it
    has seen (`seen`, the position of its next token). Padding is then hidden from every query and
    each row's tokens get the rotary positions they would have without padding, so a padded row
    decodes as it would alone (the same tokens under greedy decoding)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0
        self.valid: torch.Tensor | None = None  # (B, max_len) bool, once padding is tracked
        self.seen: torch.Tensor | None = None  # (B,) real tokens per row, once padding is tracked

    @property
    def padded(self) -> bool:
        return self.valid is not None

    def track(self, attention_mask: torch.Tensor | None, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Record which of the next T slots hold real tokens (attention_mask (B, T), 1 = real; None =
        all real). Returns the new tokens' positions (B, T) and the attention mask for them over all
        filled slots (B, 1, T, pos + T), True = may attend."""
        B, device = self.k.shape[1], self.k.device
        if self.valid is None:
            self.valid = torch.zeros(B, self.max_len, dtype=torch.bool, device=device)
            self.valid[:, : self.pos] = True
            self.seen = torch.full((B,), self.pos, dtype=torch.long, device=device)
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        real = torch.ones(B, T, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
        self.valid[:, self.pos : end] = real
        positions = (self.seen[:, None] + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T); padding: any
        self.seen = self.seen + real.sum(1)
        keys = self.valid[:, None, None, :end]  # (B, 1, 1, S)
        causal = _causal_mask(T, self.pos, device)  # (T, S)
        # The diagonal keeps a padding query's row non-empty (no NaN from an all-masked softmax).
        own = torch.arange(end, device=device)[None, :] == (torch.arange(T, device=device)[:, None] + self.pos)
        return positions, (keys & causal) | own  # (B, 1, T, S)

    def select(self, rows: list[int]) -> None:
        """Keep only these rows (in this order): finished rows stop costing compute."""
        index = torch.tensor(rows, device=self.k.device)
        self.k, self.v = self.k.index_select(1, index), self.v.index_select(1, index)
        if self.valid is not None:
            self.valid, self.seen = self.valid.index_select(0, index), self.seen.index_select(0, index)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, D) after the filled part; return all keys/values so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        self.pos = 0
        self.valid = self.seen = None


# --------------------------------------------------------------------------------------------------
# dropout


@torch.library.custom_op("budgetlm::random_bytes", mutates_args=())
def random_bytes(like: torch.Tensor) -> torch.Tensor:
    """Uniform random bytes shaped like `like`, four from each 32-bit draw of torch's generator.

    An opaque op, so that torch.compile keeps ATen's generator: inductor's CPU code draws a Philox
    number per element (~10 ns), which made dropout cost a quarter of a small model's step."""
    n = like.numel()
    words = torch.randint(-(2**31), 2**31, ((n + 3) // 4,), dtype=torch.int32, device=like.device)  # (ceil(N/4),)
    return words.view(torch.uint8)[:n].view(like.shape)


@random_bytes.register_fake
def _(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(like.shape, dtype=torch.uint8)


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU masks compare random bytes with p x 256, so p is rounded to a multiple of
    1/256 there (0.2 -> 51/256 = 0.199). A compiled 5 x 96 model with dropout 0.2 trained 1.17-1.20x
    faster than with torch's dropout (docs/bench/training.md). Other devices, and a p that rounds to
    0 or 1, use torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut = round(self.p * 256)
        if not self.training or x.device.type != "cpu" or not 0 < cut < 256:
            return super().forward(x)
        keep = random_bytes(x) >= cut  # same shape as x; P(keep) = 1 - cut / 256
        return x * keep.to(x.dtype) * (256 / (256 - cut))


# --------------------------------------------------------------------------------------------------
# blocks


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.head_dim = layer, cfg.n_head, cfg.head_dim
        self.causal = cfg.causal
        # A = n_head x head size: n_embd, except in head-pruned models (budgetlm.prune)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.attn_dim, bias=False)  # rows: [q; k; v], head-major in each
        self.proj = nn.Linear(cfg.attn_dim, cfg.n_embd, bias=False)
        self.proj_drop = Dropout(cfg.dropout)
        self.fp32 = False  # see set_fp32_attention

    def set_fp32_attention(self, on: bool) -> None:
        """Compute attention in fp32 under bf16/fp16 autocast: a runtime choice (runtime.prepare_training
        measures it), not part of the shape. CPU flash-attention kernels can be slower in bf16 than
        in fp32 (docs/bench/downstream.md), while the matmuls around them gain from bf16."""
        self.fp32 = on

    def forward(self, x, cos, sin, mask=None, kv_cache: KVCache | None = None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)  # (B, T, H, D) each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        is_causal = self.causal and mask is None
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer, k, v)  # (B, H, pos + T, D)
            if kv_cache.pos > 0:
                # Queries sit at absolute positions pos..pos+T-1. SDPA's is_causal aligns the mask
                # top-left, which is wrong once keys outnumber queries, so a single query (the usual
                # decode step) needs no mask at all and a chunk gets an explicit one.
                is_causal = False
                if T > 1 and mask is None:
                    mask = _causal_mask(T, kv_cache.pos, x.device)
        # Dropout regularises the residual branches (proj_drop here, the MLP's and the embedding's),
        # not the attention probabilities: SDPA with dropout_p > 0 leaves the fused flash kernel on
        # CPU for the unfused path. With dropout 0.1 here and on the MLP hidden, a depth-3 model trained
        # at 8.4k tokens/s; on the residual branches only, 10.5k; without dropout, 11.8k
        # (docs/bench/training.md).
        if self.fp32 and q.dtype != torch.float32:
            with torch.autocast(q.device.type, enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, H, T, D)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)))


def _causal_mask(T: int, offset: int, device) -> torch.Tensor:
    """(T, offset + T) bool, True where query i (at offset + i) may attend to key j."""
    q = torch.arange(T, device=device)[:, None] + offset
    return torch.arange(offset + T, device=device)[None, :] <= q


class MLP(nn.Module):
    """Gated MLP (Shazeer 2020): w_out(act(a) * b) with [a; b] = w_in x.

    Llama's gate_proj/up_proj are the two halves of w_in (SwiGLU); ModernBERT's fused Wi is w_in
    itself (GeGLU, the activation on the first half)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = ACTIVATIONS[family(cfg).activation]
        self.w_in = nn.Linear(cfg.n_embd, 2 * cfg.ffn_dim, bias=False)
        self.w_out = nn.Linear(cfg.ffn_dim, cfg.n_embd, bias=False)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x):
        a, b = self.w_in(x).chunk(2, dim=-1)  # (B, T, I) each
        # dropout on the (B, T, C) output, as GPT-2 and nanoGPT do, not on the (B, T, I) hidden: a
        # third of the random numbers, which cost as much as the matmuls in small models on CPU
        return self.drop(self.w_out(self.act(a) * b))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        fam = family(cfg)
        norm = NORMS[fam.norm]
        self.attn_norm = norm(cfg.n_embd, cfg.norm_eps) if (layer > 0 or fam.first_attn_norm) else nn.Identity()
        self.attn = Attention(cfg, layer)
        self.mlp_norm = norm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, kv_cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, kv_cache)
        return x + self.mlp(self.mlp_norm(x))


class PredictionHead(nn.Module):
    """ModernBERT's head before the decoder (and before the classifier): dense, GELU, norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.norm = NORMS[family(cfg).norm](cfg.n_embd, cfg.norm_eps)

    def forward(self, x):
        return self.norm(F.gelu(self.dense(x)))


# --------------------------------------------------------------------------------------------------
# the model


class Transformer(nn.Module):
    """Token ids in, logits (and loss) out. `lm_head=False` builds the backbone alone (for
    classifiers): no prediction head, no untied output matrix."""

    def __init__(self, cfg: ModelConfig, lm_head: bool = True):
        super().__init__()
        self.cfg = cfg
        fam = family(cfg)
        norm = NORMS[fam.norm]
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.embed_norm = norm(cfg.n_embd, cfg.norm_eps) if fam.embedding_norm else None
        self.embed_drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.final_norm = norm(cfg.n_embd, cfg.norm_eps)
        self.head = PredictionHead(cfg) if (lm_head and fam.prediction_head) else None
        # Tied: the output projection reads embed.weight directly, so there is one tensor (and one
        # entry in the state dict), not two aliases that safetensors would refuse to save.
        untied = lm_head and not cfg.tie_embeddings
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False) if untied else None
        self.has_lm_head = lm_head
        # Activation checkpointing (Chen et al. 2016): keep only each block's input and recompute
        # the block in backward. A runtime choice the trainer sets, not part of the model's shape.
        self.activation_checkpointing = False
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, D/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    # -- initialisation ---------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """GPT-2 initialisation (Radford et al. 2019): normal(0, 0.02) for every matrix, and the
        projections that write into the residual stream (attention out, MLP out) scaled by
        1/sqrt(2 n_layer) so the residual variance does not grow with depth. Norm scales are 1."""
        out_std = std / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if p.ndim < 2:
                nn.init.ones_(p)
            elif name.endswith(("attn.proj.weight", "mlp.w_out.weight")):
                nn.init.normal_(p, mean=0.0, std=out_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    # -- forward ----------------------------------------------------------------------------------

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def _attn_mask(self, attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
        """(B, T) 1/0 padding mask -> SDPA bool mask, or None (the fast unmasked path)."""
        if attention_mask is None:
            return None
        keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        if not self.cfg.causal:
            return keys  # bidirectional: padding keys are hidden from every query (ModernBERT)
        causal = torch.ones(T, T, dtype=torch.bool, device=keys.device).tril()
        # The diagonal keeps every row non-empty: a left-padded query that sees only padding would
        # otherwise get NaN, and 0 x NaN in the next layer would leak it into real positions.
        eye = torch.eye(T, dtype=torch.bool, device=keys.device)
        return (causal & keys) | eye  # (B, 1, T, T)

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               kv_cache: KVCache | None = None) -> torch.Tensor:
        """Hidden states after the final norm, (B, T, C): the seam for classification heads."""
        B, T = idx.shape
        if kv_cache is not None and (attention_mask is not None or kv_cache.padded):
            positions, mask = kv_cache.track(attention_mask, T)  # left-padded rows: per-row positions
            cos, sin = self._rope(0, kv_cache.pos + T)  # positions never exceed the filled slots
            cos, sin = cos[positions], sin[positions]  # (B, T, D/2)
        else:
            cos, sin = self._rope(kv_cache.pos if kv_cache is not None else 0, T)
            mask = self._attn_mask(attention_mask, T)
        x = self.embed(idx)  # (B, T, C)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.embed_drop(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute and kv_cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, mask, None, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.pos += T
        return self.final_norm(x)

    def _rope(self, start: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + T
        if end > self.rope_cos.shape[0]:  # beyond the trained length: compute, as transformers does
            cos, sin = rope_tables(self.cfg.head_dim, end, self.cfg.rope_theta, device=self.rope_cos.device)
            return cos[start:end], sin[start:end]
        return self.rope_cos[start:end], self.rope_sin[start:end]

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (..., C) -> vocabulary logits (..., V)."""
        if self.head is not None:
            h = self.head(h)
        # through the module when there is one, so that a quantized copy's int8 head is used
        return F.linear(h, self.embed.weight) if self.lm_head is None else self.lm_head(h)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None):
        if not self.has_lm_head:
            raise RuntimeError("this Transformer was built without an LM head (lm_head=False)")
        h = self.encode(idx, attention_mask)  # (B, T, C)
        if targets is None:
            return self.project(h), None
        if self.cfg.causal:
            logits = self.project(h)  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            return logits, loss
        # Sparse prediction: only masked positions reach the head and the V-wide projection.
        flat = targets.flatten()  # (B*T,)
        keep = flat != -100
        logits = self.project(h.flatten(0, 1)[keep])  # (N_masked, V)
        if logits.shape[0] == 0:  # nothing masked: a zero loss that still has a graph
            return logits, h.sum() * 0.0
        return logits, F.cross_entropy(logits.float(), flat[keep])

    # -- generation -------------------------------------------------------------------------------

    def new_kv_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        if not self.cfg.causal:
            raise ValueError("a KV cache is for causal models only")
        p = self.embed.weight
        return KVCache(self.cfg, batch_size, max_len or self.cfg.max_seq_len, p.device, p.dtype)

    @torch.no_grad()
    def step(self, idx: torch.Tensor, kv_cache: KVCache, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Feed idx (B, T) after what the cache holds; return logits of the last position (B, V).
        attention_mask (B, T), 1 = real token: left padding for rows of different lengths (see KVCache)."""
        h = self.encode(idx, attention_mask, kv_cache)  # (B, T, C)
        return self.project(h[:, -1])


def build_model(cfg: ModelConfig) -> Transformer:
    return Transformer(cfg)
