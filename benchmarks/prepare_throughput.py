"""Throughput and peak memory of `budgetlm prepare` against a plain-Python baseline, side by side.

    python benchmarks/prepare_throughput.py --data /work/shared/data/gutenberg

Runs, each in its own process (so peak RSS is that run's alone), on the same machine in one go:

1. ours:     `python -m budgetlm prepare DATA --tokenizer bpe --vocab-size V --json`, end to end
             (reading, tokenizer training, encoding, shards, manifest).
2. baseline: the plain loop: read each file as one document, train the same tokenizer the same way
             (`budgetlm.data.tokenizer.train_tokenizer`), then `tok.encode(doc).ids` one document at
             a time in a single Python loop, append the end-of-text id, write one uint16 array.

Then the encoding stage alone, with ours's trained tokenizer on the same text: a one-by-one
`encode` loop, `encode_batch`, `encode_batch_fast` (what prepare uses) and a 2-process pool of
`encode` loops, to show which way of using the cores is fastest here.

Last, `--encode-rounds` rounds that alternate, back to back, prepare's encode stage alone (a child
`prepare --tokenizer-from` the run above: spool reading, `encode_batch_fast`, ids to arrays, shard
writes) and the tokenizer's limit on the same pieces in a fresh child: the faster of one
`encode_batch_fast` call over all pieces and calls of `--batch-chars` characters. The ratio is the
median over rounds of limit seconds / prepare seconds: alternating keeps a noisy machine's drift out
of it.

Throughput is MB (1e6 bytes) of UTF-8 text per second of wall clock. Prints a markdown table and,
with --json, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_child(cmd: list[str]) -> tuple[dict, float, float, float]:
    """Run `cmd`; return (its JSON stdout, wall seconds, peak RSS in MiB, CPU seconds user+sys)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return json.loads(out.decode().strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024, cpu


# --------------------------------------------------------------------------------------------------
# the baseline, run in a child process


def _files(data: list[str]) -> list[Path]:
    from budgetlm.data.sources import expand_inputs

    return expand_inputs(data)


def _documents(data: list[str]) -> list[str]:
    return [f.read_text(encoding="utf-8", errors="replace") for f in _files(data)]


def _pieces(docs: list[str]) -> list[str]:
    """The pieces prepare encodes: each document cut at line ends into blocks of prepare's default size."""
    from budgetlm.data.prepare import PrepareConfig
    from budgetlm.data.sources import pieces_of

    block_chars = PrepareConfig().block_chars
    return [p.text for d in docs for p in pieces_of(d, block_chars)]


def baseline_worker(data: list[str], vocab_size: int, out: Path) -> dict:
    import numpy as np

    from budgetlm.data.tokenizer import special_ids, train_tokenizer

    t0 = time.perf_counter()
    files = _files(data)
    nbytes = sum(len(f.read_bytes().decode("utf-8", "replace").encode("utf-8")) for f in files)
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    tok = train_tokenizer("bpe", (f.read_text(encoding="utf-8", errors="replace") for f in files), vocab_size)
    t_train = time.perf_counter() - t1
    eot = special_ids(tok)["eot"]
    t2 = time.perf_counter()
    ids: list[int] = []
    for f in files:  # the plain loop: one document at a time, one process
        ids.extend(tok.encode(f.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False).ids)
        ids.append(eot)
    np.asarray(ids, dtype=np.uint16).tofile(out)
    t_encode = time.perf_counter() - t2
    return {"bytes": nbytes, "tokens": len(ids), "documents": len(files), "read_seconds": t_read,
            "tokenizer_seconds": t_train, "encode_seconds": t_encode,
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------------
# encode stage variants, in this process, with ours's tokenizer


def _loop(args):
    path, texts = args
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    return sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)


def encode_variants(tokenizer_path: Path, data: list[str]) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    docs = _documents(data)
    pieces = _pieces(docs)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    results = {}

    import resource

    def cpu() -> float:  # this process (all threads) + finished children (the pool workers)
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def timed(name, fn):
        t, c = time.perf_counter(), cpu()
        fn()
        dt, dc = time.perf_counter() - t, cpu() - c
        results[name] = {"seconds": round(dt, 3), "mb_per_s": round(nbytes / 1e6 / dt, 3),
                         "cpu_s": round(dc, 3), "mb_per_cpu_s": round(nbytes / 1e6 / dc, 3)}

    timed("loop encode, whole documents, 1 process", lambda: [tok.encode(d, add_special_tokens=False).ids for d in docs])
    timed("loop encode, 64 KiB pieces, 1 process", lambda: [tok.encode(p, add_special_tokens=False).ids for p in pieces])
    timed("encode_batch (offsets), pieces", lambda: tok.encode_batch(pieces, add_special_tokens=False))
    timed("encode_batch_fast, pieces (prepare)", lambda: tok.encode_batch_fast(pieces, add_special_tokens=False))
    workers = os.cpu_count() or 1
    halves = [(str(tokenizer_path), pieces[i::workers]) for i in range(workers)]

    def pool():
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_loop, halves))

    timed(f"process pool of {workers} encode loops, pieces", pool)
    return results


def _batches(pieces: list[str], batch_chars: int) -> list[list[str]]:
    out, cur, size = [], [], 0
    for p in pieces:
        cur.append(p)
        size += len(p)
        if size >= batch_chars:
            out.append(cur)
            cur, size = [], 0
    return out + [cur] if cur else out


def limit_worker(tokenizer_folder: Path, data: list[str], batch_chars: int) -> dict:
    """The tokenizer's limit in a fresh process: seconds of one `encode_batch_fast` call over all
    pieces and of calls of `batch_chars` characters (reading the text is not timed)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_folder / "tokenizer.json"))
    tok.encode_special_tokens = True  # as prepare
    pieces = _pieces(_documents(data))
    t = time.perf_counter()
    tok.encode_batch_fast(pieces, add_special_tokens=False)
    one_call = time.perf_counter() - t
    t = time.perf_counter()
    for b in _batches(pieces, batch_chars):
        tok.encode_batch_fast(b, add_special_tokens=False)
    return {"one_call": one_call, "batched": time.perf_counter() - t}


def encode_rounds(tokenizer_folder: Path, data: list[str], out: Path, rounds: int, batch_chars: int) -> dict:
    """Alternate prepare's encode stage and the tokenizer's limit, each in a fresh child process."""
    import statistics

    rows = []
    for _ in range(rounds):
        lim, _, _, _ = _run_child([sys.executable, __file__, "--data", *data, "--batch-chars", str(batch_chars),
                                   "--limit-worker", str(tokenizer_folder)])
        ours, _, _, _ = _run_child([sys.executable, "-m", "budgetlm", "prepare", *data, "--out", str(out),
                                    "--tokenizer-from", str(tokenizer_folder), "--batch-chars", str(batch_chars),
                                    "--overwrite", "--json"])
        limit = min(lim["one_call"], lim["batched"])
        rows.append({"limit_one_call_s": round(lim["one_call"], 3), "limit_batched_s": round(lim["batched"], 3),
                     "prepare_encode_s": ours["encode_seconds"], "ratio": round(limit / ours["encode_seconds"], 3)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"batch_chars": batch_chars, "rounds": rows,
            "median_ratio": round(statistics.median(r["ratio"] for r in rows), 3)}


# --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", required=True, help="input files/folders (e.g. /work/shared/data/gutenberg)")
    ap.add_argument("--vocab-size", type=int, default=16384, help="BPE vocabulary (default 16384)")
    ap.add_argument("--workdir", default=None, help="where outputs go (default: a temp folder, removed after)")
    ap.add_argument("--skip-variants", action="store_true", help="skip the encode-stage comparison")
    ap.add_argument("--encode-rounds", type=int, default=3,
                    help="alternating rounds of prepare's encode stage against encode_batch_fast (0 skips them)")
    ap.add_argument("--batch-chars", type=int, default=2_000_000, help="prepare's --batch-chars in those rounds")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--baseline-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--limit-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.limit_worker:
        print(json.dumps(limit_worker(Path(args.limit_worker), args.data, args.batch_chars)))
        return
    if args.baseline_worker:
        print(json.dumps(baseline_worker(args.data, args.vocab_size, Path(args.baseline_worker))))
        return

    before_load = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        ours, ours_wall, ours_rss, ours_cpu = _run_child(
            [sys.executable, "-m", "budgetlm", "prepare", *args.data, "--out", str(tmp / "ours"),
             "--tokenizer", "bpe", "--vocab-size", str(args.vocab_size), "--json"])
        base, base_wall, base_rss, base_cpu = _run_child(
            [sys.executable, __file__, "--data", *args.data, "--vocab-size", str(args.vocab_size),
             "--baseline-worker", str(tmp / "base.bin")])
        variants = {} if args.skip_variants else encode_variants(tmp / "ours" / "tokenizer.json", args.data)
        rounds = encode_rounds(tmp / "ours", args.data, tmp / "again", args.encode_rounds,
                               args.batch_chars) if args.encode_rounds else {}

    text_bytes = ours["bytes"]["train"] + ours["bytes"]["val"]
    ours_tokens = ours["tokens"]["train"] + ours["tokens"]["val"]
    result = {
        "data": args.data,
        "cpus": os.cpu_count(),
        "text_mb": round(text_bytes / 1e6, 3),
        "load_avg_before": before_load,
        "load_avg_after": os.getloadavg(),
        "ours": {"wall_s": round(ours_wall, 2), "cpu_s": round(ours_cpu, 2),
                 "mb_per_s": round(text_bytes / 1e6 / ours_wall, 3),
                 "peak_rss_mib": round(ours_rss, 1), "tokens": ours_tokens,
                 "bytes_per_token": ours["bytes_per_token"],
                 "phases_s": {k: ours[k] for k in ("read_seconds", "tokenizer_seconds", "encode_seconds")}},
        "baseline": {"wall_s": round(base_wall, 2), "cpu_s": round(base_cpu, 2),
                     "mb_per_s": round(base["bytes"] / 1e6 / base_wall, 3),
                     "peak_rss_mib": round(base_rss, 1), "tokens": base["tokens"],
                     "phases_s": {k: round(base[k], 3) for k in ("read_seconds", "tokenizer_seconds", "encode_seconds")}},
        "encode_variants": variants,
        "encode_rounds": rounds,
    }
    result["speedup_end_to_end"] = round(base_wall / ours_wall, 3)
    result["speedup_encode_stage"] = round(base["encode_seconds"] / ours["encode_seconds"], 3)
    if args.json:
        print(json.dumps(result))
        return
    print(f"data: {' '.join(args.data)} ({result['text_mb']} MB of text), {result['cpus']} CPUs, "
          f"load average before {before_load[0]:.2f}, after {result['load_avg_after'][0]:.2f}")
    print("| run | wall s | CPU s | MB/s | peak RSS MiB | read s | tokenizer s | encode s | tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("ours", "baseline"):
        r = result[name]
        ph = r["phases_s"]
        print(f"| {name} | {r['wall_s']} | {r['cpu_s']} | {r['mb_per_s']} | {r['peak_rss_mib']} | {ph['read_seconds']} | "
              f"{ph['tokenizer_seconds']} | {ph['encode_seconds']} | {r['tokens']:,} |")
    print(f"speed-up end to end: {result['speedup_end_to_end']}x; encode stage: {result['speedup_encode_stage']}x")
    if variants:
        print("\n| encode stage variant | seconds | MB/s | CPU s | MB per CPU s |\n|---|---|---|---|---|")
        for k, v in variants.items():
            print(f"| {k} | {v['seconds']} | {v['mb_per_s']} | {v['cpu_s']} | {v['mb_per_cpu_s']} |")
    if rounds:
        print(f"\n| round | encode_batch_fast, one call s | same, {args.batch_chars:,}-character calls s | "
              "prepare's encode stage s | limit / prepare |\n|---|---|---|---|---|")
        for i, r in enumerate(rounds["rounds"]):
            print(f"| {i + 1} | {r['limit_one_call_s']} | {r['limit_batched_s']} | {r['prepare_encode_s']} | {r['ratio']} |")
        print(f"median: prepare's encode stage at {rounds['median_ratio']:.0%} of the tokenizer's limit")


if __name__ == "__main__":
    main()
