"""README.md of an exported model: a Hugging Face model card written from what the run recorded.

The card (https://huggingface.co/docs/hub/model-cards) has YAML metadata the Hub reads
(`library_name`, `pipeline_tag`, `tags`), then the architecture and size, the training data, budget
and device, the final metrics and a loading snippet. Facts come from the run folder as training and
fine-tuning wrote it: `summary.json` (pre-training), `metrics.json` (fine-tuning) and the
checkpoint's meta (run config, last evaluation). What the run did not record is left out, never
guessed. Pure text: no torch, no transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from budgetlm.config import format_duration

PIPELINES = {"causal": "text-generation", "masked": "fill-mask", "classifier": "text-classification",
             "qa": "question-answering"}
DESCRIPTIONS = {"causal": "a causal (next-token) language model", "masked": "a masked language model",
                "classifier": "a sequence classifier", "qa": "an extractive question answerer"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _num(x: Any, fmt: str) -> str | None:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def run_facts(run_dir: Path, run_config: dict[str, Any], data: str = "", step: int = 0) -> dict[str, str]:
    """Training rows of the card (label -> text) from a run folder and its checkpoint's meta."""
    summary = _read_json(run_dir / "summary.json")  # pre-training
    finetuned = _read_json(run_dir / "metrics.json")  # fine-tuning
    rc = run_config or {}
    rows: dict[str, str] = {}
    source = rc.get("model") if finetuned else rc.get("init_from")  # pre-training's "model" is a shape
    if source:
        rows["started from"] = f"`{Path(str(source)).name}`"
    dataset = (rc.get("hf_dataset") or rc.get("train")) if finetuned else (rc.get("data") or data)
    if dataset:
        tokens = _num(summary.get("tokens"), ",")
        examples = _num(finetuned.get("train_examples"), ",")
        seen = f" ({tokens} tokens trained)" if tokens else f" ({examples} examples)" if examples else ""
        rows["training data"] = f"`{Path(str(dataset)).name}`{seen}"
    limits = [f"{k.replace('_', ' ')} {rc[k]}" for k in ("budget", "max_steps", "max_tokens", "epochs") if rc.get(k)]
    if limits:
        rows["budget"] = ", ".join(limits)
    elapsed = summary.get("elapsed_s", finetuned.get("train_seconds"))
    steps = summary.get("steps", finetuned.get("steps", step or None))
    if elapsed is not None or steps:
        done = [format_duration(float(elapsed)) + " of training"] if elapsed is not None else []
        rows["trained for"] = ", ".join(done + ([f"{steps:,} optimizer steps"] if steps else []))
    device = summary.get("device") or rc.get("device")
    if device:
        extra = [summary.get("precision") or rc.get("precision")]
        if summary.get("world_size", 1) > 1:
            extra.append(f"{summary['world_size']} processes ({summary.get('parallel')})")
        rows["device"] = ", ".join(str(x) for x in [device, *extra] if x and x != "auto")
    return rows


# metric key -> (card label, format), in the order they are shown
METRICS = {
    "val_loss": ("validation loss", ".4f"), "val_bpb": ("validation bits per byte", ".4f"),
    "val_accuracy": ("validation masked-token accuracy", ".4f"), "train_loss": ("training loss", ".4f"),
    "accuracy": ("validation accuracy", ".4f"), "f1_macro": ("validation macro F1", ".4f"),
    "tokens_per_s": ("training throughput (tokens/s)", ",.0f"),
    "exact_match": ("validation exact match (SQuAD, %)", ".2f"), "f1": ("validation F1 (SQuAD, %)", ".2f"),
}


def metric_rows(run_dir: Path, last_eval: dict[str, Any] | None = None) -> dict[str, str]:
    found = {**(last_eval or {}), **_read_json(run_dir / "summary.json"), **_read_json(run_dir / "metrics.json")}
    return {label: text for key, (label, fmt) in METRICS.items() if (text := _num(found.get(key), fmt))}


def _table(rows: dict[str, str]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items())]


def render(name: str, kind: str, arch: str, model: dict[str, str], auto_class: str,
           training: dict[str, str] | None = None, results: dict[str, str] | None = None, check: str = "") -> str:
    """The card's text. `kind`: causal | masked | classifier | qa; `arch`: the transformers class;
    `model`, `training`, `results`: label -> value rows of the card's tables."""
    family = arch.split("For")[0].lower()  # LlamaForCausalLM -> llama
    lines = ["---", "library_name: transformers", f"pipeline_tag: {PIPELINES[kind]}",
             "tags:", "- budgetlm", *([f"- {family}"] if family else []), "---", "", f"# {name}", "",
             f"{DESCRIPTIONS[kind].capitalize()} trained with budgetlm and exported as a plain `transformers` "
             f"folder (`{arch}`); no custom code is needed to load it.", "", "## Model", "", *_table(model), ""]
    if training:
        lines += ["## Training", "", *_table(training), ""]
    if results:
        lines += ["## Results", "", "Measured by budgetlm at the end of the run.", "", *_table(results), ""]
    call = {"causal": 'print(tok.decode(model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=20)[0]))',
            "masked": 'logits = model(**tok("Hello <|mask|>", return_tensors="pt")).logits',
            "classifier": 'print(model.config.id2label[int(model(**tok("Hello", return_tensors="pt")).logits.argmax())])',
            # ModernBERT takes no token types; BERT-family question answerers need them
            "qa": 'out = model(**tok("Who?", "Ada wrote it.", return_tensors="pt"'
                  + (', return_token_type_ids=False' if family == "modernbert" else "") + '))'}
    lines += ["## Use", "", "```python", f"from transformers import {auto_class}, AutoTokenizer", "",
              f'model = {auto_class}.from_pretrained("{name}")', f'tok = AutoTokenizer.from_pretrained("{name}")',
              call[kind], "```", ""]
    if check:
        lines += [check, ""]
    return "\n".join(lines)
