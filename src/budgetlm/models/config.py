"""The model's shape: one dataclass, no torch, so that `plan` can do exact arithmetic on it.

One backbone serves both families (decided by `causal`):
- causal=True  -> GPT-style next-token LM laid out exactly like Hugging Face `LlamaForCausalLM`
                  (RMSNorm, SwiGLU MLP, rotary positions, no biases);
- causal=False -> BERT-style masked LM laid out exactly like Hugging Face `ModernBertForMaskedLM`
                  (bias-free LayerNorm, GeGLU MLP, rotary positions, embedding norm, prediction head).
Matching those layouts one-to-one is what lets `budgetlm export` produce plain `transformers` folders.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    vocab_size: int = 8192  # token ids the embedding table holds (taken from the tokenizer)
    n_layer: int = 6  # number of transformer blocks
    n_embd: int = 256  # model width C (channels of the residual stream)
    n_head: int = 4  # attention heads; head size = n_embd / n_head unless head_size is set
    head_size: int = 0  # channels per attention head (0 = n_embd / n_head); head-pruned models keep it with fewer heads
    intermediate_size: int = 0  # hidden width of the gated MLP; 0 = 8/3 x n_embd rounded up to 64
    max_seq_len: int = 512  # longest context in tokens the model is trained and used with
    causal: bool = True  # True: next-token LM (Llama layout); False: masked LM (ModernBERT layout)
    rope_theta: float = 10000.0  # rotary base frequency (RoFormer, Su et al. 2021)
    norm_eps: float = 1e-5  # epsilon of the RMSNorm / LayerNorm layers
    tie_embeddings: bool = True  # share the input embedding matrix with the output projection
    dropout: float = 0.0  # residual-branch dropout probability: 0 for pre-training (Cramming), ~0.1 for fine-tuning

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "n_head", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.head_size < 0:
            raise ValueError(f"head_size must be positive (or 0: n_embd / n_head), got {self.head_size}")
        if not self.head_size and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.head_dim % 2:
            raise ValueError("head size must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        """Resolved channels per head. The `head_size` field stays 0 in the configs of unpruned
        models, so a `dataclasses.replace` of n_embd or n_head re-derives the head size instead of
        keeping a stale one."""
        return self.head_size or self.n_embd // self.n_head

    @property
    def attn_dim(self) -> int:
        """Inner width of attention (n_head x head size): n_embd, except in head-pruned models."""
        return self.n_head * self.head_dim

    @property
    def ffn_dim(self) -> int:
        """Resolved MLP hidden width: LLaMA's 8/3 rule keeps the gated MLP's parameter count equal to
        a 4x plain MLP (Shazeer 2020, "GLU Variants Improve Transformer")."""
        if self.intermediate_size > 0:
            return self.intermediate_size
        return 64 * -(-(8 * self.n_embd // 3) // 64)
