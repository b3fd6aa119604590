"""Helpers every benchmark script shares (scripts import this module, never each other).

- `budgetlm(*args)`: one `budgetlm` command in its own process, its --json object back;
- `locked(path)`: the flock that keeps benchmarks from overlapping;
- `split_text`, `prepare_split`, `train_run`: the 90/10 Tiny Shakespeare split and its runs;
- `tfidf_baseline`: the TF-IDF + logistic regression peer of the sentiment benchmarks;
- `median_step(step, n)`: the median wall time of `n` calls of a training step;
- `matmul_peak()`: a square matmul's FLOP/s on this CPU (fp32 unless a dtype is given), the peak MFU figures divide by;
- `machine()`: what a result page must say about where it was measured (CPU model and flags, cores,
  library versions, UTC date);
- `write_json`: print a result and keep it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUDGETLM = [sys.executable, "-m", "budgetlm"]


def budgetlm(*args: str, env: dict | None = None) -> dict:
    """Run one `budgetlm` command in its own process and return its --json object."""
    proc = subprocess.run([*BUDGETLM, *args, "--json"], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"budgetlm {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def locked(lock_path: str | None):
    """Hold the shared benchmark lock (the file `flock` uses); '' or None = no lock."""
    if not lock_path:
        yield
        return
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def split_text(input_path: Path, work: Path) -> tuple[Path, Path]:
    """First 90% of the characters for training, the last 10% for validation."""
    text = Path(input_path).read_text(encoding="utf-8")
    n = int(len(text) * 0.9)
    work.mkdir(parents=True, exist_ok=True)
    tr, va = work / "train.txt", work / "val.txt"
    tr.write_text(text[:n], encoding="utf-8")
    va.write_text(text[n:], encoding="utf-8")
    return tr, va


def prepare_split(input_path: Path, work: Path, *flags: str) -> tuple[Path, dict]:
    """Split the text 90/10 into `work` and prepare it (from scratch) as `work/data`."""
    tr, va = split_text(input_path, work)
    data = work / "data"
    if data.exists():
        shutil.rmtree(data)
    return data, budgetlm("prepare", str(tr), "--val", str(va), "--out", str(data), *flags)


def train_run(data: Path, out: Path, *flags: str) -> tuple[dict, float]:
    """`budgetlm train` into a fresh `out`; returns its summary and the wall seconds."""
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    res = budgetlm("train", "--data", str(data), "--out", str(out), *flags)
    return res, time.perf_counter() - t0


def write_json(path: str, obj: dict) -> None:
    print(json.dumps(obj, indent=2, default=str))
    if path:
        Path(path).write_text(json.dumps(obj, indent=2, default=str))


def median_step(step, n: int) -> float:
    """Median seconds of `n` calls of `step()` (the median shrugs off a stray slow step)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(n: int = 1024, seconds: float = 2.0, dtype=None) -> float:
    """Measured matmul FLOP/s (square n x n, fp32 unless `dtype`), averaged over `seconds`."""
    import torch  # here, so that scripts without torch (plan_backtest.py) can import this module

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0)


def machine() -> dict:
    """The CPU (lscpu model name and the flags that decide bf16 speed), cores and versions."""
    info: dict = {"machine": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "").strip()
        flags = set(fields.get("Flags", "").split())
        info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    except (OSError, subprocess.SubprocessError):
        pass
    for mod in ("torch", "transformers", "tokenizers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version is a courtesy, not a requirement
            pass
    return info


def tfidf_baseline(train, val, test) -> tuple[dict, list[str]]:
    """TF-IDF word 1-2 grams + logistic regression, C chosen on `val` -> (metrics on test, predicted
    test labels); deterministic, so paired.py can refit it."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
    xtr = vec.fit_transform([t for t, _ in train])
    ytr = [y for _, y in train]
    best = None
    for c in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0):  # C chosen on the held-out validation part
        clf = LogisticRegression(C=c, max_iter=3000).fit(xtr, ytr)
        acc = accuracy_score([y for _, y in val], clf.predict(vec.transform([t for t, _ in val])))
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    pred = best[2].predict(vec.transform([t for t, _ in test]))
    yte = [y for _, y in test]
    return {"accuracy": accuracy_score(yte, pred), "f1_macro": f1_score(yte, pred, average="macro"),
            "C": best[1], "val_accuracy": best[0], "seconds": round(time.perf_counter() - t0, 1),
            "features": "tf-idf word 1-2 grams, sublinear tf"}, list(pred)
