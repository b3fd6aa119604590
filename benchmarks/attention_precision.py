"""Attention precision under bf16 autocast on CPU: full training steps of budgetlm's model with
scaled_dot_product_attention in bf16 (autocast's choice) against fp32 (`Attention.set_fp32_attention`, what
`runtime.prepare_training` sets where its probe measures fp32 attention faster), side by side in one
process: rounds alternate, the best median step of each is kept.

Each shape is LAYERS:WIDTH:SEQ:BATCH:VOCAB:KIND, KIND one of
  causal  - next-token pre-training (is_causal, no mask);
  masked  - masked pre-training, 25% of tokens predicted (no mask);
  padded  - sequence classification with a padding mask (fine-tuning's path; the last quarter of
            every other row is padding).

    python benchmarks/attention_precision.py --out /tmp/attn.json
"""

from __future__ import annotations

import argparse
import json

import torch

from common import machine, median_step, write_json

DEFAULT_SHAPES = ["3:64:256:8:2048:causal", "3:96:256:8:8192:causal", "4:256:128:64:8192:masked",
                  "4:256:32:32:8192:padded"]


def build(shape: str):
    """(switch attention to fp32 or back, a training step of the shape under bf16 autocast, tokens per step)."""
    from budgetlm.models.heads import SequenceClassifier
    from budgetlm.models.presets import model_config
    from budgetlm.models.transformer import Attention, Transformer

    L, C, T, B, V, kind = shape.split(":")
    L, C, T, B, V = map(int, (L, C, T, B, V))
    torch.manual_seed(0)
    cfg = model_config(L, V, causal=kind == "causal", max_seq_len=T, width=C)
    x = torch.randint(5, V, (B, T))
    if kind == "padded":
        model = SequenceClassifier.from_lm(Transformer(cfg), 2)
        mask = torch.ones(B, T, dtype=torch.long)
        mask[::2, -T // 4:] = 0
        y = torch.randint(0, 2, (B,))

        def loss_fn():
            return model(x, labels=y, attention_mask=mask)[1]
    else:
        model = Transformer(cfg)
        targets = x if kind == "causal" else torch.where(torch.rand(B, T) < 0.25, x, torch.full_like(x, -100))

        def loss_fn():
            return model(x, targets)[1]

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def use_fp32(fp32: bool):
        for m in model.modules():
            if isinstance(m, Attention):
                m.set_fp32_attention(fp32)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return use_fp32, step, B * T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="LAYERS:WIDTH:SEQ:BATCH:VOCAB:KIND")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds per shape")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--out", default="", help="write the results here (JSON)")
    args = ap.parse_args()
    from budgetlm import runtime

    results = []
    for shape in args.shapes:
        use_fp32, step, tokens = build(shape)
        for fp32 in (False, True, False, True):  # warm-up
            use_fp32(fp32)
            step()
        best = {False: float("inf"), True: float("inf")}
        for r in range(args.rounds):
            for fp32 in ((False, True) if r % 2 == 0 else (True, False)):
                use_fp32(fp32)  # once per round, outside the timed steps
                best[fp32] = min(best[fp32], median_step(step, args.steps))
        row = {"shape": shape, "bf16_attention_tokens_per_s": round(tokens / best[False]),
               "fp32_attention_tokens_per_s": round(tokens / best[True]), "speedup": round(best[False] / best[True], 3)}
        results.append(row)
        print(json.dumps(row), flush=True)
    probe = runtime.cpu_attention_fp32()
    write_json(args.out, {"results": results, "runtime_probe": {"fp32": probe[0], "reason": probe[1]},
                          "threads": torch.get_num_threads(), **machine()})


if __name__ == "__main__":
    main()
