"""Sentiment classification from nothing on a CPU budget: SST-2 or IMDb.

    python benchmarks/sentiment.py --task sst2 --data /work/shared/data --work /tmp/sst2-bench
    python benchmarks/sentiment.py --task imdb --data /work/shared/data --work /tmp/imdb-bench \\
        --train-subset 5000 --test-subset 5000

Pipeline, every step through the `budgetlm` CLI and timed (the sum is the "from nothing" time):
  1. prepare   IMDb's 50k unlabelled reviews (html stripped, lowercased like SST-2) -> WordPiece shards,
               once per --vocab-sizes entry (one tokenizer each)
  2. train     a masked LM on each for --pretrain-budget
  3. finetune  on the task's training set (minus a held-out validation part used for early stopping
               and the best checkpoint), for --finetune-budget; --members K runs it K times (seeds),
               the members taking the masked LMs in turn; --scratch-members S of them start from
               random weights instead (a mixed ensemble)
  4. eval      on the task's test set (SST-2: dev.tsv; IMDb: test.jsonl), fp32 and int8; with
               --members K, of the ensemble (`eval --model A --model B ...`) and of each member
--parallel N runs N budgetlm jobs at once, each with cores/N threads: a model this small keeps two
cores busier as two one-thread jobs than as one two-thread job. Times are wall-clock per stage.
Beside it, on the same split: TF-IDF + logistic regression (scikit-learn; C chosen on the held-out
validation part, never on the test set) and the same members fine-tuned with no pre-training
(`finetune --from-scratch`, same budget). Results: WORK/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import BUDGETLM, tfidf_baseline


def sh(args: list[str], log: Path, threads: int = 0) -> tuple[dict, float]:
    """Run a budgetlm command with --json (with `threads` OpenMP threads; 0 = torch's default);
    return (its JSON result, wall seconds)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.run(BUDGETLM + args, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): budgetlm {' '.join(args)}\n{log.read_text()[-2000:]}")
    print(f"  {dt:7.1f}s  budgetlm {' '.join(args)}", file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1]), dt


def sh_all(jobs: list[tuple[list[str], Path]], parallel: int) -> tuple[list[dict], float]:
    """Run (args, log) jobs `parallel` at a time, each with cores/parallel threads (one thread per
    job when parallel >= cores); return (their JSON results in order, wall seconds of them all)."""
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        done = list(pool.map(lambda job: sh(*job, threads=threads), jobs))
    return [r for r, _ in done], time.perf_counter() - t0


def read_task(task: str, data: Path, train_subset: int, test_subset: int, seed: int):
    """-> (train rows, test rows) as (text, label) lists."""
    if task == "sst2":
        def tsv(p):
            with open(p, encoding="utf-8", newline="") as fh:
                return [(r["sentence"], r["label"]) for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]
        train, test = tsv(data / "sst2/train.tsv"), tsv(data / "sst2/dev.tsv")
    else:
        def jl(p):
            with open(p, encoding="utf-8") as fh:
                return [(r["text"].replace("<br />", " "), str(r["label"])) for r in map(json.loads, fh)]
        train, test = jl(data / "imdb/train.jsonl"), jl(data / "imdb/test.jsonl")
    rng = random.Random(seed)
    if train_subset:
        train = rng.sample(train, train_subset)
    if test_subset:
        test = rng.sample(test, test_subset)
    return train, test


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for text, label in rows:
            fh.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=["sst2", "imdb"], default="sst2")
    ap.add_argument("--data", default="/work/shared/data", help="folder with sst2/ and imdb/")
    ap.add_argument("--work", default="/tmp/budgetlm-sentiment", help="scratch folder (datasets, runs, logs)")
    ap.add_argument("--pretrain-budget", default="15m", help="masked LM pre-training budget")
    ap.add_argument("--finetune-budget", default="8m", help="fine-tuning budget (each of the two models)")
    ap.add_argument("--model", default="auto", help="pre-trained model: auto (the planner's, as train's default), a preset or a depth")
    ap.add_argument("--seq-len", type=int, default=128, help="pre-training context")
    ap.add_argument("--max-len", type=int, default=0, help="fine-tuning tokens per example (0: 64 sst2 / 128 imdb)")
    ap.add_argument("--finetune-args", default="", help="extra flags for both finetune runs (quoted)")
    ap.add_argument("--pretrain-args", default="", help="extra flags for `budgetlm train` (quoted)")
    ap.add_argument("--unsup-mb", type=float, default=0, help="use only this many MB of the unlabelled reviews (0 = all)")
    ap.add_argument("--val-size", type=int, default=2000, help="training examples held out for validation")
    ap.add_argument("--train-subset", type=int, default=0, help="random subset of the training set (0 = all)")
    ap.add_argument("--test-subset", type=int, default=0, help="random subset of the test set (0 = all)")
    ap.add_argument("--reuse-pretrained", action="store_true", help="skip prepare+train if the masked LMs exist in WORK")
    ap.add_argument("--pretrained-from", default="", help="use the masked LM of another run of this script "
                    "(its WORK folder); its prepare/train times count in this task's from-nothing time")
    ap.add_argument("--members", type=int, default=1, help="fine-tune this many times (seeds seed, seed+1, ...; "
                    "the masked LMs in turn) and evaluate the ensemble (`eval --model A --model B ...`) and each member")
    ap.add_argument("--scratch-members", type=int, default=0, help="of the --members, how many start from random "
                    "weights instead of a masked LM (a mixed ensemble: they err differently)")
    ap.add_argument("--vocab-sizes", default="8192", help="comma-separated WordPiece vocabulary sizes: one "
                    "tokenizer and one masked LM each")
    ap.add_argument("--parallel", type=int, default=1, help="budgetlm jobs at once (prepare, pre-training, "
                    "fine-tuning), each with cores/parallel threads")
    ap.add_argument("--skip-scratch", action="store_true", help="skip the no-pre-training baseline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.members < 1 or args.parallel < 1:
        ap.error("--members and --parallel must be at least 1")
    if not 0 <= args.scratch_members <= args.members:
        ap.error("--scratch-members must be between 0 and --members")
    vocabs = [int(v) for v in args.vocab_sizes.split(",")]

    data, work = Path(args.data), Path(args.work)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    max_len = args.max_len or (64 if args.task == "sst2" else 128)
    results: dict = {"task": args.task, "machine": f"{os.cpu_count()} CPU cores (shared)", "args": vars(args),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    train, test = read_task(args.task, data, args.train_subset, args.test_subset, args.seed)
    rng = random.Random(args.seed)
    rng.shuffle(train)
    val, train = train[: args.val_size], train[args.val_size :]
    f_train, f_val, f_test = (write_jsonl(work / f"{n}.jsonl", r) for n, r in (("train", train), ("val", val), ("test", test)))
    results["sizes"] = {"train": len(train), "val": len(val), "test": len(test)}
    print(f"{args.task}: {len(train)} train / {len(val)} val (held out) / {len(test)} test", file=sys.stderr)

    results["tfidf_lr"], _ = tfidf_baseline(train, val, test)
    print(f"  tf-idf + LR: accuracy {results['tfidf_lr']['accuracy']:.4f}", file=sys.stderr)

    timings: dict[str, float] = {}
    # the first vocabulary's folders keep the names of one-tokenizer runs (unsup/, mlm/)
    tags = ["" if i == 0 else f"-{v}" for i, v in enumerate(vocabs)]
    mlms = [work / f"mlm{t}" for t in tags]
    if args.pretrained_from:
        other = json.loads((Path(args.pretrained_from) / "results.json").read_text())
        mlms = [Path(args.pretrained_from) / Path(m).name for m in other.get("mlms", ["mlm"])]
        for k in ("prepare", "pretrain"):
            timings[k] = other["timings_s"][k]
            results[k] = other.get(k)
        results["pretrained_from"] = args.pretrained_from
    elif not (args.reuse_pretrained and all(m.exists() for m in mlms)):
        unsup = data / "imdb/train_unsup.jsonl.gz"
        prep = [(["prepare", "--json", str(unsup), "--out", str(work / f"unsup{t}"), "--tokenizer", "wordpiece",
                  "--vocab-size", str(v), "--tokenizer-train-mb", "20", "--clean", "html", "lowercase",
                  "--val-fraction", "0.01", "--overwrite"] + (["--max-mb", str(args.unsup_mb)] if args.unsup_mb else []),
                 logs / f"prepare{t}.log") for t, v in zip(tags, vocabs)]
        res, timings["prepare"] = sh_all(prep, args.parallel)
        results["prepare"] = res[0] if len(res) == 1 else res
        pretrain = [(["train", "--json", "--data", str(work / f"unsup{t}"), "--out", str(m), "--objective", "masked",
                   "--budget", args.pretrain_budget, "--model", args.model, "--seq-len", str(args.seq_len),
                   *args.pretrain_args.split()], logs / f"train{t}.log") for t, m in zip(tags, mlms)]
        for m in mlms:  # a new run, not a resume of an earlier one
            shutil.rmtree(m, ignore_errors=True)
        res, timings["pretrain"] = sh_all(pretrain, args.parallel)
        results["pretrain"] = res[0] if len(res) == 1 else res
    results["mlms"] = [str(m) for m in mlms]

    ft_common = ["--train", str(f_train), "--val", str(f_val), "--budget", args.finetune_budget,
                 "--max-len", str(max_len), "--overwrite", *args.finetune_args.split()]
    test_keys = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "seconds")
    variants = [("pretrained", args.scratch_members)] + ([] if args.skip_scratch else [("scratch", args.members)])
    for name, n_scratch in variants:
        # --members K: K fine-tunes with seeds seed..seed+K-1 taking the masked LMs in turn, the last
        # n_scratch from random weights; evaluated as an ensemble and (K > 1) alone
        outs = [work / (f"clf-{name}" if args.members == 1 else f"clf-{name}-{i}") for i in range(args.members)]
        scratch = [i >= args.members - n_scratch for i in range(args.members)]
        jobs = [(["finetune", "--json", "--model", str(mlms[i % len(mlms)]), "--out", str(out),
                  "--seed", str(args.seed + i), *ft_common, *(["--from-scratch"] if scratch[i] else [])],
                 logs / f"finetune-{name}-{i}.log") for i, out in enumerate(outs)]
        fts, ft_s = sh_all(jobs, args.parallel)
        members = []
        for i, (ft, out) in enumerate(zip(fts, outs)):
            members.append({"model": mlms[i % len(mlms)].name, "from_scratch": scratch[i],
                            "finetune": {k: ft[k] for k in ("steps", "epochs", "best_step", "train_seconds",
                                                            "accuracy", "f1_macro", "early_stopped")}})
            if args.members > 1:  # with one member the ensemble's eval below is this member's
                ev, _ = sh(["eval", "--json", "--model", str(out), "--text", str(f_test)], logs / f"eval-{name}-{i}.log")
                members[-1]["test"] = {k: ev[k] for k in test_keys}
        model_args = [a for o in outs for a in ("--model", str(o))]
        ev, dt_eval = sh(["eval", "--json", *model_args, "--text", str(f_test)], logs / f"eval-{name}.log")
        results[name] = {"members": members, "finetune": members[0]["finetune"],
                         "test": {k: ev[k] for k in test_keys}}
        members[0].setdefault("test", results[name]["test"])
        if name == "pretrained":
            timings["finetune"], timings["eval"] = ft_s, dt_eval
            q, _ = sh(["eval", "--json", *model_args, "--text", str(f_test), "--quantize", "int8"],
                      logs / "eval-int8.log")
            results[name]["test_int8"] = {k: q[k] for k in ("accuracy", "f1_macro", "seconds")}
        else:
            timings[f"finetune_{name}"] = ft_s
    core = [k for k in ("prepare", "pretrain", "finetune", "eval") if k in timings]
    results["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    results["from_nothing_s"] = round(sum(timings[k] for k in core), 1)
    (work / "results.json").write_text(json.dumps(results, indent=2))

    rows = [("TF-IDF + logistic regression", results["tfidf_lr"]["accuracy"], results["tfidf_lr"]["f1_macro"])]
    k = f", ensemble of {args.members}" if args.members > 1 else ""
    mix = f" ({args.scratch_members} of them from random weights)" if args.scratch_members else ""
    rows.append((f"budgetlm, pre-trained (MLM) + fine-tuned{k}{mix}", results["pretrained"]["test"]["accuracy"],
                 results["pretrained"]["test"]["f1_macro"]))
    rows.append(("  same, int8 dynamic quantization", results["pretrained"]["test_int8"]["accuracy"],
                 results["pretrained"]["test_int8"]["f1_macro"]))
    if "scratch" in results:
        rows.append((f"budgetlm, no pre-training{k}", results["scratch"]["test"]["accuracy"],
                     results["scratch"]["test"]["f1_macro"]))
    for name in ("pretrained", "scratch"):
        for i, m in enumerate(results.get(name, {}).get("members", []) if args.members > 1 else []):
            how = f"{m['model']} tokenizer, random weights" if m["from_scratch"] else m["model"]
            rows.append((f"  {name} member {i} alone ({how})", m["test"]["accuracy"], m["test"]["f1_macro"]))
    print(f"| {args.task} ({results['sizes']['test']} test examples) | accuracy | F1 macro |")
    print("|---|---|---|")
    for name, acc, f1 in rows:
        print(f"| {name} | {acc:.4f} | {f1:.4f} |")
    fp, q8 = results["pretrained"]["test"]["seconds"], results["pretrained"]["test_int8"]["seconds"]
    print(f"\nint8 eval {q8:.2f}s vs fp32 {fp:.2f}s (x{fp / max(q8, 1e-9):.2f}); "
          f"from nothing: {results['from_nothing_s'] / 60:.1f} min ({results['timings_s']})")


if __name__ == "__main__":
    main()
