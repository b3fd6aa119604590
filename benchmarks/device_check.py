"""One prepared check of the GPU paths, with the plan compared to what they measure.

On one CUDA GPU, in a few minutes: causal and masked pre-training in bf16 and in fp16 (GradScaler),
torch.compile off and on; fine-tuning a classifier in fp16; generation; export to Hugging Face with
logit parity; a server smoke test. For every training run the plan of the same shape, batch and
precision on this device is set beside the measurement: peak memory (`torch.cuda.max_memory_allocated`,
target within 10%), step time (target within 20%) and MFU. Everything lands in one JSON file.

    python benchmarks/device_check.py --out device_check.json            # the GPU check
    python benchmarks/device_check.py --device cpu --out /tmp/dc.json    # tiny, runs in the test suite

A step that fails is recorded with its error and the others still run; the exit status is 1 when any
step failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from budgetlm import api, calibration
from budgetlm.catalog import load_catalog
from budgetlm.planning import memory_breakdown

SIZES = {  # per device: model and batch, small enough for minutes in all, big enough to mean something
    "cuda": dict(depth=4, width=512, seq_len=512, batch=16, steps=60, vocab=4096, chars=4_000_000),
    "cpu": dict(depth=2, width=32, seq_len=32, batch=4, steps=4, vocab=300, chars=60_000),
}
WORDS = ("the model trains under a budget of time and memory while the data flows from shards into "
         "batches and the plan predicts the speed of every step on the device it measures").split()


def corpus(path: Path, chars: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines, n = [], 0
    while n < chars:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + "."
        lines.append(line)
        n += len(line) + 1
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def labelled(path: Path, n: int = 200, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = ["text,label"]
    for _ in range(n):
        good = rng.random() < 0.5
        words = [rng.choice(WORDS) for _ in range(8)] + ["great" if good else "awful"] * 2
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{'pos' if good else 'neg'}")
    path.write_text("\n".join(rows), encoding="utf-8")
    return path


def planned(device: str, objective: str, precision: str, size: dict) -> dict:
    """The plan of this shape, batch and precision on this device: memory at the micro-batch and
    predicted tokens/s."""
    p = api.plan(device="local", budget="1h", model=str(size["depth"]), n_embd=size["width"],
                 seq_len=size["seq_len"], objective=objective, precision=precision, vocab_size=size["vocab"])
    dev, _, _ = calibration.local(load_catalog())  # the device `--device local` planned on
    mem = memory_breakdown(p.model, dev, size["batch"], size["seq_len"], precision, False, optimizer=p.optimizer,
                           pred_fraction=None if objective == "causal" else 0.25)["total"]
    return {"tokens_per_s": p.tokens_per_second, "mfu": p.mfu, "mfu_source": p.mfu_source, "memory_bytes": mem,
            "device": p.device}


def pretrain(work: Path, data: Path, device: str, objective: str, precision: str, compile_: str,
             size: dict) -> dict:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = work / f"{objective}-{precision}-{compile_}"
    t0 = time.perf_counter()
    res = api.train(data=str(data), out=str(out), objective=objective, model=str(size["depth"]),
                    n_embd=size["width"], seq_len=size["seq_len"], batch_size=size["batch"],
                    micro_batch=size["batch"], max_steps=size["steps"], device=device, precision=precision,
                    compile=compile_, eval_every=0.0, eval_tokens=4096, progress_every=3600.0)
    row = {"run": str(out), "wall_s": time.perf_counter() - t0, "tokens_per_s": res.tokens_per_s, "mfu": res.mfu,
           "precision": res.precision, "compiled": res.compiled, "val_loss": res.val_loss,
           "nan_skipped": res.nan_skipped}
    if device == "cuda":
        row["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    plan = planned(device, objective, precision, size)
    row["plan"] = plan
    row["step_time_vs_plan"] = plan["tokens_per_s"] / res.tokens_per_s if res.tokens_per_s else None
    if row.get("peak_memory_bytes") and plan["memory_bytes"]:
        row["memory_vs_plan"] = row["peak_memory_bytes"] / plan["memory_bytes"]
    return row


def steps(work: Path, device: str, size: dict) -> list[tuple[str, object]]:
    """(name, thunk) for every check, in order; later ones use the runs earlier ones wrote."""
    data = work / "data"
    precisions = ["bf16", "fp16"] if device == "cuda" else ["fp32", "bf16"]
    compiles = ["off", "on"] if device == "cuda" else ["off"]
    todo: list[tuple[str, object]] = [
        ("prepare", lambda: {k: v for k, v in api.prepare([str(corpus(work / "corpus.txt", size["chars"]))],
                                                          str(data), vocab_size=size["vocab"]).summary.items()
                             if isinstance(v, (int, float, str))}),
    ]
    for objective in ("causal", "masked"):
        for precision in precisions:
            for c in compiles:
                todo.append((f"pretrain {objective} {precision} compile={c}",
                             lambda o=objective, p=precision, c=c: pretrain(work, data, device, o, p, c, size)))
    causal = work / f"causal-{precisions[0]}-off"
    masked = work / f"masked-{precisions[0]}-off"
    ft_precision = "fp16" if device == "cuda" else "fp32"
    todo += [
        ("finetune classifier " + ft_precision, lambda: dataclasses.asdict(api.finetune(
            model=str(masked), train=str(labelled(work / "labels.csv")), out=str(work / "clf"), epochs=1.0,
            batch_size=16, device=device, precision=ft_precision))),
        ("generate", lambda: {"text": api.load(causal, device=device).generate("the model", 16, seed=0)}),
        ("export parity", lambda: export_parity(causal, work / "hf")),
        ("serve smoke", lambda: serve_smoke(causal, device)),
    ]
    return todo


def export_parity(run: Path, out: Path) -> dict:
    from budgetlm.export import ExportConfig, export_run

    return {k: v for k, v in export_run(ExportConfig(model=str(run), out=str(out))).items()
            if isinstance(v, (int, float, str, bool))}


def serve_smoke(run: Path, device: str) -> dict:
    from fastapi.testclient import TestClient

    from budgetlm.serve import create_app
    from budgetlm.serve.services import load_service

    client = TestClient(create_app(load_service(str(run), device=device)))
    r = client.post("/v1/completions", json={"prompt": "the model", "max_tokens": 8, "temperature": 0})
    if r.status_code != 200:
        raise RuntimeError(f"/v1/completions answered {r.status_code}: {r.text[:200]}")
    return {"status": r.status_code, "text": r.json()["choices"][0]["text"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=sorted(SIZES), default="cuda", help="cuda: the check; cpu: a tiny smoke run")
    ap.add_argument("--out", default="device_check.json", help="the JSON file written")
    ap.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu for the smoke version", file=sys.stderr)
        return 2
    size = SIZES[args.device]
    work = Path(args.work or tempfile.mkdtemp(prefix="budgetlm-device-check-"))
    work.mkdir(parents=True, exist_ok=True)
    doc = {"device": args.device, "name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
           "torch": torch.__version__, "size": size, "checks": {}}
    t0 = time.perf_counter()
    for name, thunk in steps(work, args.device, size):
        t = time.perf_counter()
        try:
            doc["checks"][name] = {"ok": True, "seconds": 0.0, "result": thunk()}
        except BaseException as e:  # noqa: BLE001  (a failed step is the finding; the others still run)
            if isinstance(e, KeyboardInterrupt):
                raise
            doc["checks"][name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                   "trace": traceback.format_exc()[-2000:]}
        doc["checks"][name]["seconds"] = time.perf_counter() - t
        print(f"{'ok  ' if doc['checks'][name]['ok'] else 'FAIL'} {name} ({doc['checks'][name]['seconds']:.1f} s)",
              flush=True)
    doc["seconds"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    failed = [n for n, c in doc["checks"].items() if not c["ok"]]
    print(f"{len(doc['checks']) - len(failed)} of {len(doc['checks'])} checks passed in {doc['seconds']:.0f} s; "
          f"wrote {args.out}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
