"""Logits parity of budgetlm models with their transformers export, at realistic sizes.

Builds randomly initialised budgetlm models of the given presets (causal -> LlamaForCausalLM,
masked -> ModernBertForMaskedLM, plus both classifier heads), converts them with
`budgetlm.export.to_hf`, and reports the largest absolute logit difference on a random batch with
a right-padded row (fp32, CPU). The unit tests check the same on 2-layer models; this checks that
the agreement holds at depth.

    .venv/bin/python benchmarks/export_parity.py --presets small base
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["small", "base"])
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()

    from budgetlm.export import logits_pair, to_hf
    from budgetlm.models.heads import SequenceClassifier
    from budgetlm.models.presets import model_config, num_params
    from budgetlm.models.transformer import Transformer

    torch.manual_seed(0)
    ids = torch.randint(1, args.vocab, (args.batch, args.seq))
    mask = torch.ones_like(ids)
    mask[-1, args.seq // 2:] = 0
    ids[-1, args.seq // 2:] = 0  # pad id 0
    rows = []
    for preset in args.presets:
        for causal in (True, False):
            cfg = model_config(preset, args.vocab, causal=causal, max_seq_len=args.seq)
            lm = Transformer(cfg).eval()
            models = {"lm": lm, "classifier": SequenceClassifier.from_lm(lm, 3).eval()}
            for kind, m in models.items():
                hf = to_hf(m, {"pad_token_id": 0})
                ours, theirs = logits_pair(m, hf, ids, mask)
                diff = (ours - theirs)[mask.bool()] if ours.dim() == 3 else ours - theirs
                rows.append({"preset": preset, "family": "causal" if causal else "masked", "kind": kind,
                             "hf_class": type(hf).__name__, "params_M": round(num_params(cfg) / 1e6, 1),
                             "max_abs_diff": float(diff.abs().max()),
                             "max_abs_logit": float(ours.abs().max())})
                print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
