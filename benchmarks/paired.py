"""Is a budgetlm classifier really better than TF-IDF + LR on the same test set? A paired comparison.

    python benchmarks/paired.py --work /tmp/sst2d                  # after benchmarks/sentiment.py --work /tmp/sst2d
    python benchmarks/paired.py --work /tmp/sst2d --variant scratch

Both classifiers answer the same test examples, so their errors are compared example by example
rather than as two independent accuracies: on 872 SST-2 sentences one accuracy has a standard error
of about 1.3 points, but most examples are right (or wrong) for both classifiers and only the
disagreements carry information. Reported: both accuracies; the examples only one of them gets
right; McNemar's exact test on those (a two-sided binomial test, McNemar 1947); and a 95% interval
for the accuracy difference from a paired bootstrap over test examples (10,000 resamples).

The TF-IDF + LR baseline is refitted with sentiment.py's own code on WORK's train/val/test files (it
is deterministic, and its accuracy is checked against WORK/results.json); the budgetlm side is
`budgetlm classify` with every member of WORK/clf-VARIANT* as one ensemble, checked against the
ensemble's `eval` accuracy in results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from common import BUDGETLM, tfidf_baseline


def read_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as fh:
        return [(r["text"], str(r["label"])) for r in map(json.loads, fh)]


def budgetlm_predictions(runs: list[Path], test: Path) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pred.jsonl"
        models = [a for r in runs for a in ("--model", str(r))]
        proc = subprocess.run(BUDGETLM + ["classify", "--json", *models, "--input", str(test), "--output", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            sys.exit(f"budgetlm classify failed: {proc.stderr.strip().splitlines()[-1:]}")
        with open(out, encoding="utf-8") as fh:
            return [str(r["label"]) for r in map(json.loads, fh)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="WORK folder of a finished benchmarks/sentiment.py run")
    ap.add_argument("--variant", default="pretrained", choices=["pretrained", "scratch"],
                    help="which budgetlm ensemble of the run to compare with TF-IDF + LR")
    ap.add_argument("--resamples", type=int, default=10_000, help="paired bootstrap resamples")
    args = ap.parse_args()
    work = Path(args.work)
    results = json.loads((work / "results.json").read_text())
    train, val, test = (read_rows(work / f"{n}.jsonl") for n in ("train", "val", "test"))
    y = np.array([label for _, label in test])

    tfidf, tfidf_pred = tfidf_baseline(train, val, test)
    runs = sorted(p for p in work.glob(f"clf-{args.variant}*") if p.is_dir())
    ours = np.array(budgetlm_predictions(runs, work / "test.jsonl"))
    a, b = ours == y, np.array(tfidf_pred) == y  # (N,) right or wrong, per test example
    for name, got, want in (("TF-IDF + LR", b.mean(), results["tfidf_lr"]["accuracy"]),
                            ("budgetlm", a.mean(), results[args.variant]["test"]["accuracy"])):
        if abs(got - want) > 1e-9:
            sys.exit(f"{name} accuracy {got:.4f} here but {want:.4f} in results.json: not the same classifier")

    only_ours, only_tfidf = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(only_ours, only_ours + only_tfidf, 0.5).pvalue if only_ours + only_tfidf else 1.0
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(y), size=(args.resamples, len(y)))  # (R, N) resampled test examples
    diffs = a[idx].mean(1) - b[idx].mean(1)  # (R,)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    out = {"task": results["task"], "test_examples": len(y), "members": [r.name for r in runs],
           "budgetlm_accuracy": float(a.mean()), "tfidf_accuracy": float(b.mean()), "tfidf_C": tfidf["C"],
           "difference": float(a.mean() - b.mean()), "only_budgetlm_right": only_ours,
           "only_tfidf_right": only_tfidf, "mcnemar_exact_p": float(p), "bootstrap_95ci": [float(lo), float(hi)]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
