"""CPU time of one training step of the budgetlm model, for A/B checks of model-level changes.

Process CPU time (`time.process_time`) with one thread is far less sensitive to other load on a
shared machine than wall time, so two variants run one after the other can be compared even when
the machine is busy. Variants:

    --no-rope    rotary embeddings replaced by the identity (upper bound of their cost)
    --mallopt    glibc: never serve allocations from mmap, never trim (no page faults for the
                 >32 MB logits tensors on every step)

    .venv/bin/python benchmarks/model_step_cpu.py; .venv/bin/python benchmarks/model_step_cpu.py --mallopt
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no-rope", action="store_true")
    p.add_argument("--mallopt", action="store_true")
    args = p.parse_args()
    if args.mallopt:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2**30)
    torch.set_num_threads(args.threads)
    import budgetlm.models.transformer as T
    from budgetlm.models.config import ModelConfig

    if args.no_rope:
        T.apply_rope = lambda x, cos, sin: x
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=8192, n_layer=6, n_embd=256, n_head=8, intermediate_size=704, max_seq_len=512)
    model = T.Transformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    x, y = torch.randint(0, 8192, (8, 512)), torch.randint(0, 8192, (8, 512))

    def step():
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    step()
    cpu, wall = [], []
    for _ in range(args.steps):
        c0, w0 = time.process_time(), time.perf_counter()
        step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    print(json.dumps({"variant": {"no_rope": args.no_rope, "mallopt": args.mallopt}, "threads": args.threads,
                      "cpu_s_per_step": round(min(cpu), 3), "wall_s_per_step": round(min(wall), 3)}))


if __name__ == "__main__":
    main()
