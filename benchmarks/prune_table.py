"""What structured pruning (`budgetlm prune`) costs and saves: for a causal LM run and a fine-tuned
classifier run, at each sparsity, the parameters, the inference speed (tokens/s or examples/s) and the
quality (bits per byte on the LM's val split, accuracy on a labelled file), before and after recovery
training (`--recover-budget`, LMs only: a classifier has no pre-training objective to recover with),
and with `--quantize` the unpruned model with int8 dynamic quantization (`--quantize int8`): serialized
size, speed and quality.

    .venv/bin/python benchmarks/prune_table.py --lm runs/shakespeare --data runs/shakespeare-data \\
        --classifier runs/sst2 --labelled sst2/dev.tsv --recover-budget 2m --out prune.json

Every row is measured in this process, one after the other, with --threads intra-op threads; an LM's
tokens/s is the median of 9 forward passes of a fixed batch of 8 x 256 tokens after 2 warm-up passes.
The pruned runs are written under --work (replaced on each call).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from common import locked, machine, write_json


def forward_tokens_per_s(model, seq_len: int, batch: int = 8, repeats: int = 9) -> float:
    """Inference speed on a fixed random batch: two warm-up passes, then the median of `repeats`
    timed forward passes (one evaluation pass over a split is too noisy to compare sizes)."""
    import statistics

    idx = torch.randint(0, model.cfg.vocab_size, (batch, seq_len))
    times = []
    with torch.no_grad():
        for i in range(repeats + 2):
            t0 = time.perf_counter()
            model(idx)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return batch * seq_len / statistics.median(times)


def size_bytes(model) -> int:
    """Bytes of the model's serialized state dict (int8 layers count their packed weights)."""
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def lm_row(run: Path, data: str, max_tokens: int, quantize: str = "none") -> dict:
    from budgetlm import api
    from budgetlm.quantize import maybe_quantize

    loaded = api.load(run, device="cpu")
    params = sum(p.numel() for p in loaded.model.parameters())
    loaded.model = maybe_quantize(loaded.model.eval(), quantize)
    m = loaded.evaluate(data=data, max_tokens=max_tokens)
    speed = forward_tokens_per_s(loaded.model.eval(), min(256, loaded.model.cfg.max_seq_len))
    return {"params": params, "bytes": size_bytes(loaded.model), "tokens_per_s": round(speed, 1),
            "bits_per_byte": m.get("bits_per_byte"), "loss": m["loss"]}


def classifier_row(run: Path, labelled: str, quantize: str = "none") -> dict:
    from budgetlm import api
    from budgetlm.classify import evaluate_classifier
    from budgetlm.quantize import maybe_quantize

    model = api.load(run).model
    r = evaluate_classifier([run], labelled, which="latest", quantize=quantize)
    return {"params": sum(p.numel() for p in model.parameters()), "bytes": size_bytes(maybe_quantize(model, quantize)),
            "examples_per_s": round(r["examples"] / max(r["seconds"], 1e-9), 1), "accuracy": r["accuracy"]}


def sweep(source: str, work: Path, sparsities: list[float], measure, recover: dict | None,
          quantize: bool = False) -> list[dict]:
    """The source row (and its int8 copy), then each sparsity pruned (and, with `recover`, pruned and
    trained on)."""
    from budgetlm import api

    rows = [{"sparsity": 0.0, "stage": "original", **measure(Path(source))}]
    if quantize:
        rows.append({"sparsity": 0.0, "stage": "int8", **measure(Path(source), "int8")})
        print(rows[-1], flush=True)
    for s in sparsities:
        out = work / f"s{int(s * 100)}"
        api.prune(model=source, out=str(out), sparsity=s, overwrite=True)
        rows.append({"sparsity": s, "stage": "pruned", **measure(out)})
        if recover:
            rec = work / f"s{int(s * 100)}-recovered"
            res = api.prune(model=source, out=str(rec), sparsity=s, overwrite=True, **recover)
            rows.append({"sparsity": s, "stage": f"recovered {recover['recover_budget']}",
                         "recovery_steps": res.recovered["steps"], **measure(rec)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lm", default="", help="causal LM run directory")
    p.add_argument("--data", default="", help="prepared dataset of the LM (val split: bits per byte; train split: recovery)")
    p.add_argument("--classifier", default="", help="fine-tuned classifier run directory")
    p.add_argument("--labelled", default="", help="labelled file the classifier's accuracy is measured on")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--recover-budget", default="", help="recovery training per pruned LM, e.g. 2m (default: none)")
    p.add_argument("--max-tokens", type=int, default=0, help="val tokens for bits per byte (0 = all)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    p.add_argument("--quantize", action="store_true", help="also measure the unpruned model with int8 dynamic quantization")
    p.add_argument("--work", default="runs/prune-table")
    p.add_argument("--lock", default="", help="benchmark lock file (flock)")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    result: dict = {"sparsity": args.sparsity, "recover_budget": args.recover_budget, "machine": machine()}
    with locked(args.lock):
        if args.lm:
            recover = {"recover_budget": args.recover_budget, "data": args.data, "device": "cpu"} \
                if args.recover_budget else None
            result["lm"] = sweep(args.lm, work / "lm", args.sparsity,
                                 lambda r, q="none": lm_row(r, args.data, args.max_tokens, q), recover, args.quantize)
        if args.classifier:
            result["classifier"] = sweep(args.classifier, work / "clf", args.sparsity,
                                         lambda r, q="none": classifier_row(r, args.labelled, q), None, args.quantize)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
