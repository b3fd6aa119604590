"""`budgetlm generate --model RUN --prompt TEXT`: sample a continuation from a causal model."""

from __future__ import annotations

import argparse
from typing import Any

from budgetlm import ui


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="run directory of a trained causal model")
    parser.add_argument("--prompt", default="", help="text to continue (default: empty, the start of a document)")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="most tokens to generate (default: 200)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="X", help="sampling temperature; 0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=200, metavar="N", help="sample among the k most likely tokens; 0 = all (default: 200)")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="X", help="nucleus sampling mass in (0, 1]; 1 = off (default: 1.0)")
    parser.add_argument("--seed", type=int, default=None, metavar="N", help="random seed (default: a fresh one, reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    parser.add_argument("--checkpoint", default="latest", choices=["latest", "best"],
                        help="which checkpoint of the run to load (default: latest)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm.generate import check_prompt, check_sampling, complete, load_causal

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    check_prompt(args.prompt)
    model, tok, meta = load_causal(args.model, args.device, args.checkpoint)
    out = ui.console().file
    out.write(args.prompt)
    out.flush()

    def show(piece: str) -> None:
        out.write(piece)
        out.flush()

    c = complete(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                 args.seed, on_text=show)
    out.write("\n")
    out.flush()
    return {"text": c.text, "prompt": args.prompt, "tokens": c.tokens, "prompt_tokens": c.prompt_tokens,
            "finish_reason": c.finish_reason, "tokens_per_s": round(c.tokens / c.seconds, 2) if c.seconds > 0 else None,
            "seed": c.seed, "checkpoint": meta.path}
