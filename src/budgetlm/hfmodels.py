"""A local Hugging Face model folder as a budgetlm model: the inverse of `export`'s Llama mapping.

A folder whose config.json is a `LlamaForCausalLM` (model_type "llama") with safetensors weights
(`model.safetensors`, or shards listed in `model.safetensors.index.json`) is budgetlm's causal
layout under other names, so it loads into `models.transformer.Transformer` with the same logits.
`train.checkpoint.load_meta` / `load_weights` call this module when given such a folder, which is
how `train --init-from`, `generate`, `eval`, `serve`, `export` and `budgetlm.load` accept it.
Nothing here imports transformers: config.json and the safetensors files are read directly.

Grouped-query attention (Ainslie et al. 2023: fewer key/value heads than query heads, as in
TinyLlama, SmolLM and Llama 3) loads as the multi-head attention it equals: each key/value head's
projection rows are repeated for the query heads that share it, which is what transformers'
`repeat_kv` does to the keys and values themselves. Same logits, larger k/v matrices, and training
from there updates the copies separately.

What budgetlm does not implement is refused in one line (`BudgetError`): other architectures, rope
scaling (linear, dynamic, yarn, llama3, ...), attention or MLP biases, activations other than SiLU,
a head size other than hidden_size / num_attention_heads, pickled weights (pytorch_model.bin).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from budgetlm.config import BudgetError
from budgetlm.models.config import ModelConfig

ARCHITECTURES = ("LlamaForCausalLM",)
# transformers' LlamaConfig defaults (models/llama/configuration_llama.py), for keys a config.json
# leaves out; the shape keys (sizes, layers, heads) are required.
LLAMA_DEFAULTS: dict[str, Any] = {
    "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "rope_theta": 10000.0, "attention_bias": False, "mlp_bias": False,
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


@dataclass
class HFFolder:
    """What a Llama folder holds, in budgetlm's terms."""

    path: Path  # the folder
    config: ModelConfig  # the budgetlm shape it loads as
    kv_heads: int  # key/value heads in the folder's weights (= config.n_head without grouped-query attention)
    tokenizer_path: str  # its tokenizer.json ("" when it has none)


# --------------------------------------------------------------------------------------------------
# config.json -> ModelConfig


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_hf_folder(path: str | Path) -> bool:
    """A folder with a transformers config.json (model_type or architectures) that is not a budgetlm
    run (checkpoints/) or checkpoint (meta.json): a run's own config.json has neither key."""
    p = Path(path)
    if not p.is_dir() or (p / "meta.json").exists() or (p / "checkpoints").is_dir():
        return False
    data = read_json(p / "config.json")
    return data is not None and ("model_type" in data or "architectures" in data)


def _rope_theta(c: dict[str, Any], where: str) -> float:
    """The rope base; any rope scaling is refused. transformers 5 writes `rope_parameters`,
    4 writes `rope_theta` and `rope_scaling`."""
    params = c["rope_parameters"] if isinstance(c.get("rope_parameters"), dict) else {}
    scaling = c["rope_scaling"] if isinstance(c.get("rope_scaling"), dict) else {}
    for p in (params, scaling):
        kind = p.get("rope_type", p.get("type", "default"))
        if kind != "default":
            raise BudgetError(f"{where} uses rope scaling {kind!r}, which budgetlm does not implement "
                              "(it has plain rotary positions only)")
    return float(params.get("rope_theta") or c.get("rope_theta") or LLAMA_DEFAULTS["rope_theta"])


def _refuse_unsupported(c: dict[str, Any], where: str) -> None:
    archs = c.get("architectures") or []
    if c.get("model_type") != "llama" or not any(a in ARCHITECTURES for a in archs):
        name = ", ".join(archs) or c.get("model_type") or "an unknown model"
        raise BudgetError(f"{where} holds {name}; budgetlm loads Hugging Face folders of {', '.join(ARCHITECTURES)} "
                          "only (its own causal layout)")
    missing = [k for k in REQUIRED if not isinstance(c.get(k), int)]
    if missing:
        raise BudgetError(f"{where}/config.json lacks {', '.join(missing)}")
    act = c.get("hidden_act", LLAMA_DEFAULTS["hidden_act"])
    if act not in ("silu", "swish"):  # the same function under two names
        raise BudgetError(f"{where} uses the activation {act!r}; budgetlm's Llama layout has SiLU (SwiGLU) only")
    for key, what in (("attention_bias", "attention"), ("mlp_bias", "MLP")):
        if c.get(key, LLAMA_DEFAULTS[key]):
            raise BudgetError(f"{where} has {what} biases ({key}), which budgetlm's bias-free layers do not hold")


def model_config(c: dict[str, Any], where: str) -> tuple[ModelConfig, int]:
    """(budgetlm shape, key/value heads) of a Llama config.json; BudgetError for what budgetlm lacks."""
    _refuse_unsupported(c, where)
    C, H = c["hidden_size"], c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or H
    if H <= 0 or C % H or kv <= 0 or H % kv:
        raise BudgetError(f"{where}: {C} channels, {H} heads and {kv} key/value heads do not divide evenly")
    head_dim = c.get("head_dim") or C // H
    if head_dim != C // H:
        raise BudgetError(f"{where} has heads of {head_dim} channels; budgetlm's are hidden_size / heads = {C // H}")
    try:
        cfg = ModelConfig(vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], n_embd=C, n_head=H,
                          intermediate_size=c["intermediate_size"],
                          max_seq_len=int(c.get("max_position_embeddings") or LLAMA_DEFAULTS["max_position_embeddings"]),
                          causal=True, rope_theta=_rope_theta(c, where),
                          norm_eps=float(c.get("rms_norm_eps", LLAMA_DEFAULTS["rms_norm_eps"])),
                          tie_embeddings=bool(c.get("tie_word_embeddings", LLAMA_DEFAULTS["tie_word_embeddings"])))
    except ValueError as e:
        raise BudgetError(f"{where}: {e}") from None
    return cfg, kv


def read_folder(path: str | Path) -> HFFolder:
    """The folder's shape and tokenizer (weights are read by `load_state_dict`)."""
    p = Path(path)
    c = read_json(p / "config.json")
    if c is None:
        raise BudgetError(f"{p}/config.json is not readable JSON")
    cfg, kv = model_config(c, str(p))
    tok = p / "tokenizer.json"
    return HFFolder(p, cfg, kv, str(tok.resolve()) if tok.is_file() else "")


# --------------------------------------------------------------------------------------------------
# weights


def _weight_files(p: Path) -> list[Path]:
    if (p / WEIGHTS).is_file():
        return [p / WEIGHTS]
    index = read_json(p / INDEX) if (p / INDEX).is_file() else None
    if index is not None and isinstance(index.get("weight_map"), dict):
        return [p / name for name in sorted(set(index["weight_map"].values()))]
    if any((p / n).exists() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise BudgetError(f"{p} holds pickled weights (pytorch_model.bin), which budgetlm does not load (pickle can "
                          "run code); save them as safetensors: model.save_pretrained(dir, safe_serialization=True)")
    raise BudgetError(f"{p} has no {WEIGHTS} (nor a sharded {INDEX})")


def read_tensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in _weight_files(p):
        try:
            out.update(load_file(str(f)))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
            raise BudgetError(f"cannot read {f}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return out


def _repeat_heads(w: torch.Tensor, kv: int, H: int) -> torch.Tensor:
    """(kv * D, C) key or value projection -> (H * D, C): query head h reads key/value head h // (H / kv)."""
    return w.view(kv, -1, w.shape[-1]).repeat_interleave(H // kv, dim=0).reshape(-1, w.shape[-1])


def _take(hf: dict[str, torch.Tensor], name: str, where: Path) -> torch.Tensor:
    try:
        return hf.pop(name)
    except KeyError:
        raise BudgetError(f"{where} lacks the tensor {name} its config.json implies") from None


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The folder's weights under budgetlm's names (`export._llama_layer` read backwards)."""
    folder = read_folder(path)
    p, cfg, kv = folder.path, folder.config, folder.kv_heads
    hf = read_tensors(p)
    sd = {"embed.weight": _take(hf, "model.embed_tokens.weight", p),
          "final_norm.weight": _take(hf, "model.norm.weight", p)}
    for i in range(cfg.n_layer):
        q, b = f"model.layers.{i}.", f"blocks.{i}."
        k, v = (_repeat_heads(_take(hf, q + f"self_attn.{n}_proj.weight", p), kv, cfg.n_head) for n in "kv")
        sd.update({
            b + "attn_norm.weight": _take(hf, q + "input_layernorm.weight", p),
            b + "attn.qkv.weight": torch.cat([_take(hf, q + "self_attn.q_proj.weight", p), k, v]),  # [q; k; v]
            b + "attn.proj.weight": _take(hf, q + "self_attn.o_proj.weight", p),
            b + "mlp_norm.weight": _take(hf, q + "post_attention_layernorm.weight", p),
            b + "mlp.w_in.weight": torch.cat([_take(hf, q + "mlp.gate_proj.weight", p),
                                              _take(hf, q + "mlp.up_proj.weight", p)]),  # [gate; up]
            b + "mlp.w_out.weight": _take(hf, q + "mlp.down_proj.weight", p),
        })
    head = hf.pop("lm_head.weight", None)  # a tied folder may still store its (equal) copy
    if not cfg.tie_embeddings:
        if head is None:
            raise BudgetError(f"{p} lacks lm_head.weight and its config.json does not tie it to the embeddings")
        sd["lm_head.weight"] = head
    # transformers before 4.31 stored the rotary frequencies; budgetlm computes them
    left = [n for n in hf if not n.endswith("rotary_emb.inv_freq")]
    if left:
        raise BudgetError(f"{p} holds tensors budgetlm's Llama layout has no place for, e.g. {left[0]}")
    return sd


def grow_vocab(sd: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
    """Embedding (and untied output) matrices grown to `rows` tokens: tokens a tokenizer gained after
    the model was trained (`prepare --tokenizer-from` adds budgetlm's special tokens). New rows are the
    mean of the trained ones, which keeps the new tokens' logits near the average (Hewitt 2021,
    "Initializing new word embeddings for pretrained language models")."""
    out = dict(sd)
    for name in ("embed.weight", "lm_head.weight"):
        w = sd.get(name)
        if w is not None and w.shape[0] < rows:
            out[name] = torch.cat([w, w.float().mean(0, keepdim=True).to(w.dtype).expand(rows - w.shape[0], -1)])
    return out


def check_tokenizer_extends(data_tokenizer: str | Path, folder: HFFolder, data_name: str) -> None:
    """The data's tokenizer must be the folder's, optionally with tokens appended after its ids
    (which `prepare --tokenizer-from FOLDER` does when it adds budgetlm's special tokens)."""
    from budgetlm.data.tokenizer import load_tokenizer

    if not folder.tokenizer_path:
        raise BudgetError(f"{folder.path} has no tokenizer.json: budgetlm cannot check that {data_name} was "
                          "tokenized the way the model was trained")
    theirs = load_tokenizer(folder.tokenizer_path).get_vocab(with_added_tokens=True)
    ours = load_tokenizer(data_tokenizer).get_vocab(with_added_tokens=True)
    if any(ours.get(t) != i for t, i in theirs.items()):
        raise BudgetError(f"the tokenizer of {data_name} is not the one of {folder.path}: prepare the data with "
                          f"--tokenizer-from {folder.path}")
