"""`budgetlm generate --model RUN --prompt TEXT`: sample a continuation from a causal model.
`budgetlm generate --model RUN --input prompts.txt|prompts.jsonl --output results.jsonl`: many prompts,
decoded in batches, one JSON record per prompt."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from budgetlm import ui
from budgetlm.config import BudgetError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="run directory of a trained causal model, or a local Hugging Face Llama folder")
    parser.add_argument("--prompt", default="", help="text to continue (default: empty, the start of a document)")
    parser.add_argument("--input", default="", metavar="FILE",
                        help="many prompts: a .jsonl file of records with a \"prompt\" field, or any other file "
                             "with one prompt per line, blank lines skipped (default: none, use --prompt)")
    parser.add_argument("--output", default="", metavar="FILE",
                        help="with --input: JSON lines, one record per prompt in input order: the input record "
                             "(or {\"prompt\"}) plus completion, finish_reason, tokens, prompt_tokens, seed "
                             "(written atomically) (default: none)")
    parser.add_argument("--batch-size", type=int, default=16, metavar="N",
                        help="with --input: prompts decoded together (default: 16)")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="most tokens to generate (default: 200)")
    parser.add_argument("--temperature", type=float, default=0.8, metavar="X", help="sampling temperature; 0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=200, metavar="N", help="sample among the k most likely tokens; 0 = all (default: 200)")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="X", help="nucleus sampling mass in (0, 1]; 1 = off (default: 1.0)")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help="random seed; with --input every prompt uses it (default: a fresh one, reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    parser.add_argument("--checkpoint", default="latest", choices=["latest", "best"],
                        help="which checkpoint of the run to load (default: latest)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm.generate import as_prompt, check_prompt, check_sampling, complete, load_causal

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    if args.input or args.output:
        return run_file(args)
    check_prompt(args.prompt)
    model, tok, meta = load_causal(args.model, args.device, args.checkpoint)
    out = ui.console().file
    out.write(args.prompt)
    out.flush()

    def show(piece: str) -> None:
        out.write(piece)
        out.flush()

    c = complete(model, tok, as_prompt(meta, args.prompt), args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                 args.seed, on_text=show)
    out.write("\n")
    out.flush()
    return {"text": c.text, "prompt": args.prompt, "tokens": c.tokens, "prompt_tokens": c.prompt_tokens,
            "finish_reason": c.finish_reason, "tokens_per_s": round(c.tokens / c.seconds, 2) if c.seconds > 0 else None,
            "seed": c.seed, "checkpoint": meta.path}


def read_prompts(path: str) -> list[dict[str, Any]]:
    """The records of an --input file, each with a string "prompt"; one-line errors naming the line."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BudgetError(f"--input {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BudgetError(f"cannot read --input {path}: {e}") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if p.suffix.lower() != ".jsonl":
            records.append({"prompt": line})
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BudgetError(f"{path} line {n} is not JSON: {e.msg}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            raise BudgetError(f"{path} line {n} needs a \"prompt\" field holding a string")
        try:  # JSON escapes can spell lone surrogates, which no tokenizer (nor --output) can encode
            json.dumps(rec, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BudgetError(f"{path} line {n} holds a lone surrogate (\\ud800-\\udfff): not valid Unicode text") from None
        records.append(rec)
    if not records:
        raise BudgetError(f"--input {path} holds no prompts")
    return records


def run_file(args: argparse.Namespace) -> dict[str, Any]:
    from budgetlm.fsio import atomic_file
    from budgetlm.generate import as_prompt, complete_batch, load_causal

    if args.prompt:
        raise BudgetError("--prompt and --input are exclusive: put the prompt in the --input file")
    if not args.input or not args.output:
        raise BudgetError("--input and --output go together (prompts in, one JSON record per prompt out)")
    if args.batch_size < 1:
        raise BudgetError(f"--batch-size must be at least 1, got {args.batch_size}")
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise BudgetError("--output must not be the --input file")
    records = read_prompts(args.input)
    model, tok, meta = load_causal(args.model, args.device, args.checkpoint)
    t0 = time.perf_counter()
    done = complete_batch(model, tok, [as_prompt(meta, r["prompt"]) for r in records], args.max_new_tokens, args.temperature,
                          args.top_k, args.top_p, args.seed, args.batch_size)
    seconds = time.perf_counter() - t0
    with atomic_file(args.output) as fh:
        for rec, c in zip(records, done):
            row = {**rec, "completion": c.text, "finish_reason": c.finish_reason, "tokens": c.tokens,
                   "prompt_tokens": c.prompt_tokens, "seed": c.seed}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tokens = sum(c.tokens for c in done)
    ui.info(f"{len(records)} completions ({tokens} tokens in {seconds:.1f} s) written to {args.output}")
    return {"output": args.output, "prompts": len(records), "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None, "batch_size": args.batch_size,
            "checkpoint": meta.path}
