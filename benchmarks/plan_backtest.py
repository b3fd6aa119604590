"""Predicted against published training throughput for the runs in `budgetlm.planning.published`.

For every run: the published tokens/s, the MFU it implies (the planner's FLOPs per token of that
shape against the catalog's dense peak), the leave-one-out prediction (the MFU model fitted on the
other runs, with this run's device class, stack and compile setting), and whether the plan's memory
model says the published micro-batch fits. Pure arithmetic, no torch, no GPU; it takes a second.

    python benchmarks/plan_backtest.py [--out results.json]

The planner's own MFU constants (`planning.estimate.FITTED_MFU`) are the fit on all runs; a test
checks that they match a fresh fit and that at least 75% of the leave-one-out predictions land
within 25% of the published figure.
"""

from __future__ import annotations

import argparse
import json
import sys

from budgetlm.catalog import load_catalog
from budgetlm.models.config import ModelConfig
from budgetlm.planning import flops_per_token, memory_breakdown
from budgetlm.planning.published import FEATURES, RUNS, Run, features, fit, mfu_class, predict

MASK_RATE = 0.3  # ModernBERT predicts 30% of positions


def shape(run: Run) -> ModelConfig:
    return ModelConfig(vocab_size=run.vocab, n_layer=run.n_layer, n_embd=run.n_embd, n_head=run.n_head,
                       intermediate_size=run.ffn, max_seq_len=run.seq_len, causal=run.causal,
                       tie_embeddings=run.tied)


def points(catalog) -> list[dict]:
    rows = []
    for run in RUNS:
        dev = catalog[run.device]
        cfg = shape(run)
        fpt = flops_per_token(cfg, run.seq_len, None if run.causal else MASK_RATE)
        peak = dev.training_peak(run.precision) * run.count
        x = features(mfu_class(dev.id, dev.kind), run.fused, run.n_embd)
        fits = None
        if run.micro_batch:
            mem = memory_breakdown(cfg, dev, run.micro_batch, run.seq_len, run.precision, run.checkpointing,
                                   "adamw", run.count, None if run.causal else MASK_RATE)
            fits = mem["total"] <= (run.memory_gb * 1e9 or dev.memory_bytes)
        rows.append({"run": run, "fpt": fpt, "peak": peak, "x": x, "mfu": run.tokens_per_s * fpt / peak,
                     "fits": fits})
    return rows


def backtest(rows: list[dict]) -> list[dict]:
    """Each run predicted by the fit on the others."""
    out = []
    for i, r in enumerate(rows):
        coef = fit([(o["x"], o["mfu"]) for j, o in enumerate(rows) if j != i])
        mfu = predict(coef, r["x"])
        tps = mfu * r["peak"] / r["fpt"]
        out.append({"name": r["run"].name, "device": f"{r['run'].count} x {r['run'].device}",
                    "published_tokens_per_s": r["run"].tokens_per_s, "published_mfu": r["mfu"],
                    "loo_mfu": mfu, "loo_tokens_per_s": tps, "error": tps / r["run"].tokens_per_s - 1,
                    "plan_says_fits": r["fits"], "source": r["run"].source, "how": r["run"].how})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    args = ap.parse_args(argv)
    rows = points(load_catalog())
    coef = fit([(r["x"], r["mfu"]) for r in rows])
    results = backtest(rows)
    print(f"{'run':36} {'devices':28} {'published':>11} {'MFU':>5} {'LOO':>11} {'error':>7}  fits")
    for r in results:
        fits = "-" if r["plan_says_fits"] is None else ("yes" if r["plan_says_fits"] else "no")
        print(f"{r['name']:36} {r['device']:28} {r['published_tokens_per_s']:11,.0f} {r['published_mfu']:5.2f} "
              f"{r['loo_tokens_per_s']:11,.0f} {r['error']:+7.1%}  {fits}")
    within = sum(abs(r["error"]) <= 0.25 for r in results)
    print(f"leave-one-out: {within} of {len(results)} within 25% ({within / len(results):.0%}); "
          f"median |error| {sorted(abs(r['error']) for r in results)[len(results) // 2]:.1%}")
    print("fit on all runs, log MFU = " + " + ".join(f"{c:+.4f} {n}" for n, c in zip(FEATURES, coef)))
    doc = {"runs": results, "within_25_percent": within, "count": len(results), "coefficients": coef}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
