"""Load test of `budgetlm serve` on loopback: N concurrent clients for a fixed time.

    python benchmarks/serve_load.py --model RUN [--clients 8 --seconds 30 --max-tokens 16]

Starts `budgetlm serve --model RUN --host 127.0.0.1 --max-concurrent CLIENTS` (every client gets
a slot: a 503 would count as an error) on a free port as a real process, waits for
/health, then runs --clients threads that each send requests back to back for --seconds:
/v1/completions (max_tokens, temperature 0.8, every 4th streamed) for a causal run, /v1/classify for
a fine-tuned classifier. Reports requests, errors (any non-200 or transport failure), p50/p90/p99
latency and throughput; then sends SIGTERM and checks the server exits 0 (graceful shutdown).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

PROMPTS = ["The king said", "Once upon a time", "It was a dark and stormy night", "To be, or not to be",
           "She opened the door and", "In the morning the"]
TEXTS = ["a gripping , funny and moving film", "dull , lifeless and far too long",
         "the actors do what they can with a thin script", "one of the best films of the year"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="run directory to serve")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--quantize", default="none", choices=["none", "int8"])
    ap.add_argument("--json-out", default="", help="write the results here as JSON")
    args = ap.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "budgetlm", "serve", "--model", args.model, "--host", "127.0.0.1",
         "--port", str(port), "--quantize", args.quantize, "--max-concurrent", str(args.clients)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        t0 = time.time()
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=1).json()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.time() - t0 > 120:
                    sys.exit(f"server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.2)
        kind = health["kind"]
        lat: list[float] = []
        errors: list[str] = []
        tokens = [0]
        lock = threading.Lock()
        deadline = time.perf_counter() + args.seconds

        def client(i: int) -> None:
            n = 0
            with httpx.Client(base_url=base, timeout=120) as c:
                while time.perf_counter() < deadline:
                    n += 1
                    t = time.perf_counter()
                    try:
                        if kind == "causal":
                            body = {"prompt": PROMPTS[(i + n) % len(PROMPTS)], "max_tokens": args.max_tokens,
                                    "temperature": 0.8, "seed": n}
                            if n % 4 == 0:
                                with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                                    raw = "".join(r.iter_text())
                                ok = r.status_code == 200 and raw.rstrip().endswith("data: [DONE]")
                            else:
                                r = c.post("/v1/completions", json=body)
                                ok = r.status_code == 200
                                if ok:
                                    with lock:
                                        tokens[0] += r.json()["usage"]["completion_tokens"]
                        else:
                            r = c.post("/v1/classify", json={"input": TEXTS[(i + n) % len(TEXTS)]})
                            ok = r.status_code == 200
                    except httpx.HTTPError as e:
                        ok, r = False, None
                        with lock:
                            errors.append(f"{type(e).__name__}: {e}")
                    dt = time.perf_counter() - t
                    with lock:
                        if ok:
                            lat.append(dt)
                        elif r is not None:
                            errors.append(f"HTTP {r.status_code}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        metrics = httpx.get(f"{base}/metrics").text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = "killed after 30s"
    res = {
        "model": os.path.basename(os.path.abspath(args.model)), "kind": kind, "clients": args.clients,
        "seconds": round(wall, 1), "requests": len(lat) + len(errors), "errors": len(errors),
        "error_examples": errors[:5], "p50_ms": round(1000 * pct(lat, 0.5), 1),
        "p90_ms": round(1000 * pct(lat, 0.9), 1), "p99_ms": round(1000 * pct(lat, 0.99), 1),
        "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
        "requests_per_s": round(len(lat) / wall, 2), "quantize": args.quantize,
        "completion_tokens_non_streamed": tokens[0] if kind == "causal" else None,
        "max_tokens": args.max_tokens if kind == "causal" else None,
        "server_exit_code_after_sigterm": code,
        "metrics_lines": [ln for ln in metrics.splitlines() if ln.startswith("budgetlm_requests_total")],
    }
    print(json.dumps(res, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
