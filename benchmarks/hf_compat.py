"""Do `budgetlm export` folders load in other transformers versions? Two halves, two environments.

`write DIR` (budgetlm's environment) exports four tiny random models (a causal LM with a non-default
rope base, a causal classifier, a masked LM, a masked mean-pooling classifier) with budgetlm's own
tokenizer, and stores the token ids budgetlm feeds each model and the logits it computes in
DIR/reference.safetensors.

`check DIR` (any environment with torch, transformers and safetensors; budgetlm is not imported)
loads each folder with AutoTokenizer and AutoModelFor..., checks that the tokenizer gives budgetlm's
ids and that the logits agree with budgetlm's within 1e-4, and prints one JSON line per model.

    .venv/bin/python benchmarks/hf_compat.py write /tmp/hf-compat
    python3 -m venv /tmp/tf-old && /tmp/tf-old/bin/pip install torch==2.13.0 'transformers==4.48.0' safetensors tokenizers
    /tmp/tf-old/bin/python benchmarks/hf_compat.py check /tmp/hf-compat
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

TEXTS = ["the cat sat on the mat", "a dog", "it was the best of times, it was the worst of times"]
PAIRS = ["a pair", "another one", "the third"]
# name -> (AutoModelFor... suffix, causal, classifier pooling or None for a language model, rope base)
MODELS = {
    "causal-lm": ("CausalLM", True, None, 50000.0),
    "causal-classifier": ("SequenceClassification", True, "last", 10000.0),
    "masked-lm": ("MaskedLM", False, None, 10000.0),
    "masked-classifier": ("SequenceClassification", False, "mean", 160000.0),
}
TOLERANCE = 1e-4


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    return ids, mask


def write(out: Path) -> None:
    from safetensors.torch import save_file

    from budgetlm.data.tokenizer import load_tokenizer, save_tokenizer, special_ids, train_tokenizer
    from budgetlm.export import export_hf
    from budgetlm.labelled import BudgetlmEncoder
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.heads import SequenceClassifier
    from budgetlm.models.transformer import Transformer

    out.mkdir(parents=True, exist_ok=True)
    corpus = ["the cat sat on the mat. the dog sat on the log. it was the best of times."] * 50
    tok_path = out / "budgetlm-tokenizer.json"
    save_tokenizer(train_tokenizer("bpe", iter(corpus), vocab_size=300), tok_path)
    tok = load_tokenizer(tok_path)
    pad = special_ids(tok)["pad"]
    reference = {}
    for name, (_, causal, pooling, theta) in MODELS.items():
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, max_seq_len=64,
                          causal=causal, rope_theta=theta)
        model = SequenceClassifier(cfg, 3, pooling=pooling) if pooling else Transformer(cfg)
        with torch.no_grad():  # larger weights than the 0.02 init: logits that differ
            for p in model.parameters():
                if p.ndim == 2:
                    p.mul_(10)
        model.eval()
        if pooling:
            rows, _ = BudgetlmEncoder(tok, causal, 64)(TEXTS, PAIRS)
            rows = [list(r) for r in rows]
        else:
            rows = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
        ids, mask = _padded(rows, pad)
        with torch.no_grad():
            logits, _ = model(ids, attention_mask=mask)
        export_hf(model, out / name, tok_path, labels=["a", "b", "c"] if pooling else None, overwrite=True)
        reference.update({f"{name}.ids": ids, f"{name}.mask": mask, f"{name}.logits": logits.contiguous()})
    save_file(reference, str(out / "reference.safetensors"))
    print(f"wrote {len(MODELS)} exports and reference.safetensors to {out}")


def check(folder: Path) -> int:
    import transformers
    from safetensors.torch import load_file

    transformers.utils.logging.set_verbosity_error()  # one JSON line per model, no progress bars
    transformers.utils.logging.disable_progress_bar()
    ref = load_file(str(folder / "reference.safetensors"))
    failed = 0
    for name, (auto, causal, pooling, _) in MODELS.items():
        path = str(folder / name)
        tok = transformers.AutoTokenizer.from_pretrained(path)
        model = getattr(transformers, f"AutoModelFor{auto}").from_pretrained(path, torch_dtype=torch.float32).eval()
        want_ids, want_mask = ref[f"{name}.ids"], ref[f"{name}.mask"]
        enc = tok(TEXTS, PAIRS, padding=True, return_tensors="pt") if pooling else \
            tok(TEXTS, padding=True, return_tensors="pt")
        same_ids = enc.input_ids.tolist() == want_ids.tolist() and enc.attention_mask.tolist() == want_mask.tolist()
        with torch.no_grad():
            theirs = model(input_ids=want_ids, attention_mask=want_mask).logits
        ours = ref[f"{name}.logits"]
        real = want_mask.bool()
        diff = (theirs - ours)[real] if ours.dim() == 3 else theirs - ours  # padded positions are free
        row = {"model": name, "transformers": transformers.__version__, "class": type(model).__name__,
               "tokenizer": type(tok).__name__, "same_ids": same_ids, "max_abs_diff": float(diff.abs().max())}
        ok = same_ids and row["max_abs_diff"] <= TOLERANCE
        failed += not ok
        print(json.dumps({**row, "ok": ok}), flush=True)
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["write", "check"])
    p.add_argument("dir", type=Path)
    args = p.parse_args()
    if args.mode == "write":
        write(args.dir)
        return 0
    return check(args.dir)


if __name__ == "__main__":
    sys.exit(main())
