"""`budgetlm export --model RUN --out DIR --format hf`: a folder plain `transformers` loads.

budgetlm's layouts were chosen to map one-to-one onto `transformers` classes, so export is a
renaming of tensors (plus splitting the fused q/k/v and gate/up matrices for Llama), a config,
and the tokenizer; no custom code is needed to load the result:

    budgetlm model            transformers class (AutoModelFor...)
    causal LM                 LlamaForCausalLM                    (CausalLM)
    masked LM                 ModernBertForMaskedLM               (MaskedLM)
    classifier, causal        LlamaForSequenceClassification      (SequenceClassification)
    classifier, masked        ModernBertForSequenceClassification (SequenceClassification)
    question answering        ModernBertForQuestionAnswering      (QuestionAnswering)

The folder is written into a temporary sibling, checked (the exported model is loaded back with
`transformers` and its logits compared with budgetlm's on a probe batch, unless --no-verify) and
then renamed into place, so a failed export never leaves a half-written or clobbered folder. The
output goes through the write guard (`fsio.check_output`): it is never the run itself, inside it or
around it, and --overwrite replaces only a folder an earlier export made (its marker file says so),
never a user's own files.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from budgetlm import fsio, modelcard, ui
from budgetlm.config import BudgetError

VERIFY_TOLERANCE = 1e-4  # max |logit difference| accepted in fp32


# --------------------------------------------------------------------------------------------------
# special tokens: budgetlm roles -> transformers roles

# Spellings tried, in order, for tokenizers that did not come from `budgetlm prepare`.
SPECIAL_CANDIDATES: dict[str, tuple[str, ...]] = {
    "eot": ("<|endoftext|>", "</s>", "<eos>", "[EOS]"),
    "pad": ("<|pad|>", "[PAD]", "<pad>"),
    "unk": ("<|unk|>", "[UNK]", "<unk>"),
    "mask": ("<|mask|>", "[MASK]", "<mask>"),
    "cls": ("<|cls|>", "[CLS]", "<s>", "<cls>"),
    "sep": ("<|sep|>", "[SEP]", "</s>", "<sep>"),
}


def find_special_tokens(tokenizer) -> dict[str, str]:
    """budgetlm role ('eot', 'pad', 'mask', 'cls', 'sep', 'unk') -> token text present in the vocabulary."""
    try:
        from budgetlm.data.tokenizer import SPECIAL_TOKENS

        candidates = {role: (text, *SPECIAL_CANDIDATES.get(role, ())) for role, text in SPECIAL_TOKENS.items()}
    except ImportError:  # pragma: no cover - the data package is part of budgetlm
        candidates = SPECIAL_CANDIDATES
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return {role: next(n for n in names if n in vocab)
            for role, names in candidates.items() if any(n in vocab for n in names)}


def hf_special_tokens(specials: dict[str, str], causal: bool) -> dict[str, str]:
    """transformers tokenizer roles. Causal (GPT-2 convention): end-of-text is both bos and eos.
    Masked (BERT convention): [CLS] opens a sequence, [SEP] closes it."""
    out = {f"{role}_token": specials[role] for role in ("pad", "unk", "mask", "cls", "sep") if role in specials}
    if causal and "eot" in specials:
        out["bos_token"] = out["eos_token"] = specials["eot"]
    elif not causal:
        if "cls" in specials:
            out["bos_token"] = specials["cls"]
        if "sep" in specials or "eot" in specials:
            out["eos_token"] = specials.get("sep", specials.get("eot"))
    return out


def hf_token_ids(tokenizer, hf_specials: dict[str, str]) -> dict[str, int | None]:
    """Model-config token ids (pad/bos/eos/cls/sep) from the tokenizer roles."""
    roles = {"pad_token_id": "pad_token", "bos_token_id": "bos_token", "eos_token_id": "eos_token",
             "cls_token_id": "cls_token", "sep_token_id": "sep_token"}
    return {k: (tokenizer.token_to_id(hf_specials[r]) if r in hf_specials else None) for k, r in roles.items()}


def classifier_template(tokenizer, specials: dict[str, str], causal: bool):
    """The input layout `finetune` trains classifiers with (budgetlm.labelled.BudgetlmEncoder) as a
    tokenizers post-processor, so that AutoTokenizer feeds the exported classifier the same ids:
    masked: [CLS] a [SEP] (b [SEP]);  causal: a ([SEP] b) <|endoftext|>. None if tokens are missing."""
    from tokenizers.processors import TemplateProcessing

    cls, sep, eot = specials.get("cls"), specials.get("sep"), specials.get("eot")
    if causal and sep and eot:
        single, pair, used = f"$A {eot}", f"$A {sep} $B:1 {eot}:1", (sep, eot)
    elif not causal and cls and sep:
        single, pair, used = f"{cls} $A {sep}", f"{cls} $A {sep} $B:1 {sep}:1", (cls, sep)
    else:
        return None
    return TemplateProcessing(single=single, pair=pair,
                              special_tokens=[(t, tokenizer.token_to_id(t)) for t in used])


# --------------------------------------------------------------------------------------------------
# config and tensor mapping


def _classifier_fields(clf, labels: list[str] | None) -> dict[str, Any]:
    labels = labels or [str(i) for i in range(clf.num_labels)]
    if len(labels) != clf.num_labels:
        raise BudgetError(f"the run lists {len(labels)} labels but the classifier has {clf.num_labels} outputs")
    return {
        "num_labels": clf.num_labels,
        "id2label": {i: str(name) for i, name in enumerate(labels)},
        "label2id": {str(name): i for i, name in enumerate(labels)},
    }


def hf_config(model, token_ids: dict[str, int | None] | None = None, labels: list[str] | None = None):
    """The `transformers` config object for a budgetlm Transformer or SequenceClassifier."""
    from transformers import LlamaConfig, ModernBertConfig

    from budgetlm.models.heads import SequenceClassifier, SpanExtractor

    is_clf = isinstance(model, SequenceClassifier)
    is_qa = isinstance(model, SpanExtractor)
    cfg = model.cfg
    # Unknown ids are written as None: transformers' defaults (e.g. ModernBERT's 50282) would point
    # outside a small vocabulary.
    ids = {k: (token_ids or {}).get(k) for k in ("pad_token_id", "bos_token_id", "eos_token_id",
                                                 "cls_token_id", "sep_token_id")}
    extra = _classifier_fields(model, labels) if is_clf else {}
    rope = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        max_position_embeddings=cfg.max_seq_len,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=bool(cfg.tie_embeddings),
        attention_dropout=cfg.dropout,
    )
    narrow = cfg.n_head * cfg.head_dim != cfg.n_embd  # heads pruned: attention narrower than the width
    if cfg.causal:
        arch = "LlamaForSequenceClassification" if is_clf else "LlamaForCausalLM"
        return LlamaConfig(
            **common,
            **({"head_dim": cfg.head_dim} if narrow else {}),
            num_key_value_heads=cfg.n_head,
            hidden_act="silu",
            rms_norm_eps=cfg.norm_eps,
            rope_parameters=rope,
            architectures=[arch],
            dtype="float32",
            **{k: ids[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")},
            **extra,
        )
    if narrow:
        raise BudgetError(f"a masked model with pruned heads ({cfg.n_head} x {cfg.head_dim} channels in a width of "
                          f"{cfg.n_embd}) has no ModernBERT equivalent (its heads span the width): export the "
                          "unpruned model, or prune only MLP channels")
    arch = "ModernBertForSequenceClassification" if is_clf else "ModernBertForQuestionAnswering" if is_qa \
        else "ModernBertForMaskedLM"
    clf_extra = {}
    if is_clf:
        clf_extra = {"classifier_pooling": model.pooling, "classifier_dropout": model.dropout}
    if is_qa:  # two outputs per token: answer start and end
        clf_extra = {"classifier_dropout": model.dropout, "num_labels": 2}
    return ModernBertConfig(
        **common,
        hidden_activation="gelu",
        classifier_activation="gelu",
        norm_eps=cfg.norm_eps,
        norm_bias=False,
        decoder_bias=False,
        classifier_bias=False,  # the head's dense layer; the final classifier always has a bias
        embedding_dropout=cfg.dropout,
        mlp_dropout=cfg.dropout,
        # Every layer global: budgetlm has no sliding-window layers.
        layer_types=["full_attention"] * cfg.n_layer,
        rope_parameters={"full_attention": dict(rope), "sliding_attention": dict(rope)},
        architectures=[arch],
        dtype="float32",
        **ids,
        **clf_extra,
        **extra,
    )


def _llama_layer(sd, p: str, q: str, C: int, I: int) -> dict:
    wq, wk, wv = sd[p + "attn.qkv.weight"].chunk(3)  # fused rows are [q; k; v], n_head x head size each
    gate, up = sd[p + "mlp.w_in.weight"].split(I)  # fused rows are [gate; up], act on gate
    return {
        q + "input_layernorm.weight": sd[p + "attn_norm.weight"],
        q + "self_attn.q_proj.weight": wq,
        q + "self_attn.k_proj.weight": wk,
        q + "self_attn.v_proj.weight": wv,
        q + "self_attn.o_proj.weight": sd[p + "attn.proj.weight"],
        q + "post_attention_layernorm.weight": sd[p + "mlp_norm.weight"],
        q + "mlp.gate_proj.weight": gate,
        q + "mlp.up_proj.weight": up,
        q + "mlp.down_proj.weight": sd[p + "mlp.w_out.weight"],
    }


def _modernbert_layer(sd, p: str, q: str, C: int, I: int) -> dict:
    out = {
        q + "attn.Wqkv.weight": sd[p + "attn.qkv.weight"],  # same fused [q; k; v] layout
        q + "attn.Wo.weight": sd[p + "attn.proj.weight"],
        q + "mlp_norm.weight": sd[p + "mlp_norm.weight"],
        q + "mlp.Wi.weight": sd[p + "mlp.w_in.weight"],  # same fused [input; gate] layout
        q + "mlp.Wo.weight": sd[p + "mlp.w_out.weight"],
    }
    if p + "attn_norm.weight" in sd:  # layer 0 has none (Identity)
        out[q + "attn_norm.weight"] = sd[p + "attn_norm.weight"]
    return out


def _backbone(sd: dict, cfg, prefix: str) -> dict:
    """budgetlm backbone tensors (keys under `prefix`) -> transformers names under `model.`."""
    C, I = cfg.n_embd, cfg.ffn_dim
    if cfg.causal:
        out = {"model.embed_tokens.weight": sd[prefix + "embed.weight"],
               "model.norm.weight": sd[prefix + "final_norm.weight"]}
        layer, hf_layer = _llama_layer, "model.layers.{}."
    else:
        out = {"model.embeddings.tok_embeddings.weight": sd[prefix + "embed.weight"],
               "model.embeddings.norm.weight": sd[prefix + "embed_norm.weight"],
               "model.final_norm.weight": sd[prefix + "final_norm.weight"]}
        layer, hf_layer = _modernbert_layer, "model.layers.{}."
    for i in range(cfg.n_layer):
        out.update(layer(sd, f"{prefix}blocks.{i}.", hf_layer.format(i), C, I))
    return out


def hf_state_dict(model) -> dict:
    """budgetlm state dict -> `transformers` state dict (tensors shared, not copied, where possible).

    A tied output matrix is left out: `transformers` re-ties it on load (tie_word_embeddings)."""
    from budgetlm.models.heads import SequenceClassifier, SpanExtractor

    sd = model.state_dict()
    cfg = model.cfg
    if isinstance(model, (SequenceClassifier, SpanExtractor)):  # the same head layout in ModernBERT
        out = _backbone(sd, cfg, "backbone.")
        if cfg.causal:
            out["score.weight"] = sd["score.weight"]
        else:
            out.update({"head.dense.weight": sd["head.dense.weight"], "head.norm.weight": sd["head.norm.weight"],
                        "classifier.weight": sd["classifier.weight"], "classifier.bias": sd["classifier.bias"]})
        return out
    out = _backbone(sd, cfg, "")
    if not cfg.causal:
        out.update({"head.dense.weight": sd["head.dense.weight"], "head.norm.weight": sd["head.norm.weight"]})
    if not cfg.tie_embeddings:
        out["lm_head.weight" if cfg.causal else "decoder.weight"] = sd["lm_head.weight"]
    return out


def auto_class(model):
    """The transformers Auto class that loads the export of `model`."""
    import transformers

    from budgetlm.models.heads import SequenceClassifier, SpanExtractor

    if isinstance(model, SequenceClassifier):
        return transformers.AutoModelForSequenceClassification
    if isinstance(model, SpanExtractor):
        return transformers.AutoModelForQuestionAnswering
    return transformers.AutoModelForCausalLM if model.cfg.causal else transformers.AutoModelForMaskedLM


def to_hf(model, token_ids: dict[str, int | None] | None = None, labels: list[str] | None = None):
    """An in-memory `transformers` model with `model`'s weights (fp32, eval mode)."""
    import torch

    config = hf_config(model, token_ids, labels)
    hf = auto_class(model).from_config(config, dtype=torch.float32)
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    tied = {"lm_head.weight", "decoder.weight"}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:  # a mapping bug, never a user error
        raise RuntimeError(f"export mapping mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        hf.tie_weights()
    return hf.eval()


# --------------------------------------------------------------------------------------------------
# verification


def logits_pair(model, hf, ids, attention_mask=None):
    """(budgetlm logits, transformers logits) for the same batch, both fp32."""
    import torch

    with torch.no_grad():
        ours, _ = model(ids, attention_mask=attention_mask)
        out = hf(input_ids=ids, attention_mask=attention_mask)
    if isinstance(ours, tuple):  # question answering: (start, end) per token -> (B, T, 2)
        return torch.stack(ours, -1).float(), torch.stack([out.start_logits, out.end_logits], -1).float()
    return ours.float(), out.logits.float()


def verify_export(model, out_dir: Path) -> float:
    """Load the written folder with transformers' Auto class; return the max |logit difference|
    on a probe batch (right-padded second row, so the padding paths are checked too)."""
    import torch

    hf = _hf_auto_class(model).from_pretrained(str(out_dir), dtype=torch.float32).eval()
    config = hf.config
    T = min(16, config.max_position_embeddings or 16)
    pad = config.pad_token_id
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (2, T), generator=g)
    if pad is not None:
        ids[ids == pad] = (pad + 1) % config.vocab_size
    mask = torch.ones_like(ids)
    if pad is None and config.model_type == "llama" and "SequenceClassification" in config.architectures[0]:
        ids, mask = ids[:1], mask[:1]  # transformers' Llama classifier needs a pad id for batches
    elif pad is not None:
        ids[1, T // 2:], mask[1, T // 2:] = pad, 0
    ours, theirs = logits_pair(model.float().eval(), hf, ids, mask)
    if ours.dim() == 3:  # token logits: padded positions are meaningless, compare real ones
        ours, theirs = ours[mask.bool()], theirs[mask.bool()]
    return float((ours - theirs).abs().max())


# --------------------------------------------------------------------------------------------------
# writing


def _is_wrapped_hf(model) -> bool:
    """A fine-tuned transformers model (`hf.HFClassifier`, `hf.HFQuestionAnswerer`): it already is one."""
    from transformers import PreTrainedModel

    return isinstance(getattr(model, "hf", None), PreTrainedModel)


def _hf_auto_class(model):
    if _is_wrapped_hf(model):
        import transformers

        return getattr(transformers, model.auto_class)
    return auto_class(model)


def write_tokenizer(tokenizer_path: str | Path, out_dir: Path, causal: bool, max_len: int,
                    classifier: bool) -> tuple[dict[str, str], dict[str, int | None]]:
    """tokenizer.json + tokenizer_config.json for AutoTokenizer; returns (roles, config token ids)."""
    from transformers import PreTrainedTokenizerFast

    from budgetlm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    roles = hf_special_tokens(find_special_tokens(tok), causal)
    if classifier:
        template = classifier_template(tok, find_special_tokens(tok), causal)
        if template is not None:
            tok.post_processor = template
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_len, **roles)
    fast.save_pretrained(str(out_dir))
    portable_tokenizer_config(out_dir)
    return roles, hf_token_ids(tok, roles)


# --------------------------------------------------------------------------------------------------
# files every transformers version reads (docs/models.md lists the versions checked)

# transformers 5 names its generic tokenizer.json class `TokenizersBackend` in tokenizer_config.json;
# transformers 4 has no such class and refuses the folder. `PreTrainedTokenizerFast` exists in both
# (in 5 as the same class under its old name) and loads the same tokenizer.json.
PORTABLE_TOKENIZER_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_tokenizer_config(folder: Path) -> None:
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    cls = data.get("tokenizer_class")
    if cls in PORTABLE_TOKENIZER_CLASS:
        data["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS[cls]
        fsio.atomic_write_json(path, data)


def _v4_config_keys(cfg) -> dict[str, Any]:
    """The keys transformers 4 reads where 5 reads `rope_parameters` and `layer_types` (5 ignores
    them). Without them 4 falls back to its own defaults, which change the logits: Llama's rope base
    10000; ModernBERT's global base 160000, local base 10000 and a sliding-window layer in three."""
    theta = float(cfg.rope_theta)
    if cfg.causal:
        return {"rope_theta": theta, "rope_scaling": None}
    return {"global_rope_theta": theta, "local_rope_theta": theta, "global_attn_every_n_layers": 1}


def add_v4_config_keys(folder: Path, cfg) -> None:
    path = Path(folder) / "config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(_v4_config_keys(cfg))
    data.setdefault("torch_dtype", data.get("dtype"))  # 4's name for the weights' dtype
    fsio.atomic_write_json(path, data)


@contextlib.contextmanager
def quiet_transformers():
    """transformers' progress bars ("Loading weights") and its info and warning logs off while the
    export writes and checks the folder: the command's output is budgetlm's. Restored afterwards."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _write_native(model, tmp: Path, tokenizer_path, labels, dtype: str) -> tuple[Any, dict[str, str]]:
    import torch
    from safetensors.torch import save_file

    from budgetlm.models.heads import SequenceClassifier, SpanExtractor

    is_clf = isinstance(model, SequenceClassifier)
    roles: dict[str, str] = {}
    token_ids: dict[str, int | None] = {}
    if tokenizer_path:  # a question and its context are a pair: [CLS] question [SEP] context [SEP], as qa.windows
        roles, token_ids = write_tokenizer(tokenizer_path, tmp, model.cfg.causal, model.cfg.max_seq_len,
                                           is_clf or isinstance(model, SpanExtractor))
    config = hf_config(model, token_ids, labels)
    config.dtype = dtype
    config.save_pretrained(str(tmp))
    add_v4_config_keys(tmp, model.cfg)
    if model.cfg.causal and not is_clf:
        from transformers import GenerationConfig

        GenerationConfig.from_model_config(config).save_pretrained(str(tmp))
    target = getattr(torch, dtype)
    state = {k: v.detach().to("cpu", target).contiguous() for k, v in hf_state_dict(model).items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return config, roles


def _write_wrapped(model, tmp: Path, hf_tokenizer_dir: Path | None, dtype: str) -> tuple[Any, dict[str, str]]:
    import torch

    hf = model.hf
    hf.to(getattr(torch, dtype)).save_pretrained(str(tmp), safe_serialization=True)
    hf.float()
    roles: dict[str, str] = {}
    if hf_tokenizer_dir is not None and hf_tokenizer_dir.is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(hf_tokenizer_dir))
        tok.save_pretrained(str(tmp))
        portable_tokenizer_config(tmp)
        roles = {k: str(v) for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    return hf.config, roles


def export_hf(model, out: Path, tokenizer_path: str | Path | None = None, labels: list[str] | None = None,
              overwrite: bool = False, verify: bool = True, dtype: str = "float32",
              hf_tokenizer_dir: Path | None = None, card: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Write `model` (+ tokenizer, + README.md model card) as a transformers folder at `out`, atomically;
    see the module doc. `card`: the run's rows for the card ("training", "results": label -> text)."""
    out = Path(out)
    fsio.check_output(out, (), "export", overwrite=overwrite)  # only an empty folder or an earlier export
    diff = None
    with fsio.atomic_dir(out, replace=out.exists()) as tmp, quiet_transformers():
        if _is_wrapped_hf(model):
            config, roles = _write_wrapped(model, tmp, hf_tokenizer_dir, dtype)
        else:
            config, roles = _write_native(model, tmp, tokenizer_path, labels, dtype)
        if verify:
            diff = verify_export(model, tmp)
            limit = VERIFY_TOLERANCE if dtype == "float32" else 5e-2
            if not diff <= limit:
                raise BudgetError(f"export check failed: transformers logits differ by {diff:.2e} (> {limit}); "
                                  f"nothing written to {out}")
        _write_card(model, config, out.name, tmp, dtype, diff, card or {})
        fsio.write_marker(tmp, "export")  # lets a later --overwrite replace this folder, and only this kind
    return {
        "out": str(out),
        "architecture": config.architectures[0],
        "auto_class": _hf_auto_class(model).__name__,
        "special_tokens": roles,
        "max_abs_logit_diff": diff,
        "files": sorted(p.name for p in out.iterdir() if p.name != fsio.MARKER),
    }


def _write_card(model, config, name: str, tmp: Path, dtype: str, diff: float | None,
                card: dict[str, dict[str, str]]) -> None:
    """README.md: the model card (budgetlm.modelcard), from the exported config and the run's rows."""
    from budgetlm.models.heads import SequenceClassifier, SpanExtractor

    wrapped = _is_wrapped_hf(model)
    if wrapped:
        kind = "qa" if model.auto_class == "AutoModelForQuestionAnswering" else "classifier"
    else:
        kind = "classifier" if isinstance(model, SequenceClassifier) else "qa" \
            if isinstance(model, SpanExtractor) else ("causal" if model.cfg.causal else "masked")
    shape = {"layers": "num_hidden_layers", "width": "hidden_size", "attention heads": "num_attention_heads",
             "context (tokens)": "max_position_embeddings", "vocabulary (tokens)": "vocab_size"}
    rows = {"architecture": f"`{config.architectures[0]}`",
            "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
            **{label: f"{v:,}" for label, key in shape.items() if isinstance(v := getattr(config, key, None), int)},
            "weights": dtype}
    if kind == "classifier":
        rows["labels"] = ", ".join(str(config.id2label[i]) for i in sorted(config.id2label))
    check = (f"The export was checked: `transformers` reproduces budgetlm's logits on a probe batch "
             f"(max difference {diff:.1e}).") if diff is not None else ""
    text = modelcard.render(name, kind, config.architectures[0], rows, _hf_auto_class(model).__name__,
                            card.get("training"), card.get("results"), check)
    fsio.atomic_write_text(tmp / "README.md", text)


FORMATS = {"hf": export_hf}  # --format -> writer(model, out, tokenizer_path, labels=, overwrite=, verify=, dtype=, ...)


@dataclass
class ExportConfig:
    model: str = ""  # run directory (or checkpoint directory) to export
    out: str = ""  # output folder: new, empty, or an earlier export (with --overwrite); never in or around --model
    format: Literal["hf"] = "hf"  # hf = a folder plain transformers loads with its Auto classes
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # dtype of the exported weights
    checkpoint: Literal["latest", "best"] = "latest"  # which checkpoint of the run to export
    overwrite: bool = False  # replace an earlier export at --out (never a folder budgetlm export did not make)
    verify: bool = True  # load the export with transformers and compare logits before finishing


def export_run(cfg: ExportConfig) -> dict[str, Any]:
    """Export the run `cfg.model` to `cfg.out` in `cfg.format`; the writer's result dict."""
    if not cfg.model or not cfg.out:
        raise BudgetError("give --model RUN (the run to export) and --out DIR (the folder to write)")
    out = Path(cfg.out)
    fsio.check_output(out, [cfg.model], "export", overwrite=cfg.overwrite)  # before the slow part
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise BudgetError("export needs transformers: pip install 'budgetlm[hf]'") from None
    from budgetlm.training.checkpoint import load_model

    model, meta = load_model(cfg.model, device="cpu", which=cfg.checkpoint)
    tok = meta.tokenizer_path or None
    hf_tok = meta.run_dir / "hf_tokenizer"
    if not tok and not hf_tok.is_dir():
        ui.warn("the run has no tokenizer: exporting the model without one")
    labels = [str(x) for x in meta.classifier.labels] if meta.classifier else None
    card = {"training": modelcard.run_facts(meta.run_dir, meta.run_config, meta.data, meta.step),
            "results": modelcard.metric_rows(meta.run_dir, meta.metrics)}
    if meta.qa is not None and meta.qa.unanswerable:
        card["training"]["unanswerable questions"] = (
            "yes (SQuAD v2.0): budgetlm answers \"\" where the start + end logit at [CLS] beats the best span; "
            "with transformers' pipeline, pass `handle_impossible_answer=True`")
    # large models take a while to write and verify: a line every $BUDGETLM_PROGRESS_EVERY s in a log
    with ui.progress(f"exporting to {out}", total=None, heartbeat=True):
        return FORMATS[cfg.format](model, out, tok, labels=labels, overwrite=cfg.overwrite, verify=cfg.verify,
                                   dtype=cfg.dtype, hf_tokenizer_dir=hf_tok, card=card)
