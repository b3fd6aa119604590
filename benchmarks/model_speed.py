"""Training-step throughput of the budgetlm model vs transformers' Llama, same size, same weights.

Times forward + backward + AdamW step (fp32) for budgetlm's `Transformer` and for
`transformers.LlamaForCausalLM` holding identical weights, interleaved round by round in one
process so both see the same machine state, and reports tokens/s, their ratio, and model-FLOPs
utilisation against a matmul peak measured in the same run.

Default size is the throughput benchmark's model (benchmarks/hf_throughput.py): width 256, 6 layers, 8 heads, MLP 704,
vocabulary 8192, sequence 512, batch 8 (6.9M parameters).

    flock /tmp/budgetlm-bench.lock .venv/bin/python benchmarks/model_speed.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from common import matmul_peak


def make_step(model, batch, loss_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    def step():
        loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--mlp", type=int, default=704)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4, help="timed rounds per model (interleaved)")
    p.add_argument("--steps", type=int, default=3, help="steps per round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(budgetlm model)")
    p.add_argument("--peak-gflops", type=float, default=0.0,
                   help="also report MFU against this matmul peak (e.g. 180 = a 2-core fp32 CPU's figure)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from budgetlm.export import to_hf
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.presets import num_params
    from budgetlm.models.transformer import Transformer
    from budgetlm.planning import flops_per_token

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab, n_layer=args.layers, n_embd=args.width, n_head=args.heads,
                      intermediate_size=args.mlp, max_seq_len=args.seq, causal=True)
    ours = Transformer(cfg).train()
    theirs = to_hf(ours).train()
    theirs.load_state_dict(to_hf(ours).state_dict())  # independent tensors, same values
    idx = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    runners = {
        "budgetlm": make_step(ours, (x, y), lambda m, b: m(b[0], b[1])[1]),
        "transformers": make_step(theirs, (x, idx), lambda m, b: m(input_ids=b[0], labels=b[0]).loss),
    }
    if args.compile:
        compiled = torch.compile(Transformer(cfg).train())
        runners["budgetlm+compile"] = make_step(compiled, (x, y), lambda m, b: m(b[0], b[1])[1])
    for step in runners.values():  # warm-up (and compilation)
        step()
        step()
    times = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    peaks = [matmul_peak()]
    for _ in range(args.rounds):
        for name, step in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t0) / args.steps)
            cpu[name].append((time.process_time() - c0) / args.steps)
    peaks.append(matmul_peak())
    # The machine may be shared: the best of two peak measurements, and the best step of each model.
    peak = max(peaks)
    tokens = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "params": num_params(cfg),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "matmul_peak_gflops_before_after": [round(x / 1e9, 1) for x in peaks],
        "flops_per_token": fpt,
    }
    for name, ts in times.items():
        best = min(ts)
        result[name] = {"step_s": round(best, 4), "tokens_per_s": round(tokens / best),
                        "cpu_s_per_step": round(min(cpu[name]), 4),
                        "mfu": round(tokens / best * fpt / peak, 3)}
        if args.peak_gflops:
            result[name]["mfu_vs_given_peak"] = round(tokens / best * fpt / (args.peak_gflops * 1e9), 3)
    result["speedup_vs_transformers"] = round(
        result["budgetlm"]["tokens_per_s"] / result["transformers"]["tokens_per_s"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
