"""Batched generation vs one prompt at a time: the same prompts, the same tokens, one process.

    .venv/bin/python benchmarks/batch_generate.py [--model RUN]
        [--prompts 64 --max-new-tokens 64 --rounds 3 --json-out docs/bench/batch_generate.json]

Generates a completion for each of --prompts prompts (lines of varied length drawn from a fixed
list) twice per round: once as one batch (`generate.complete_batch`, batch size = all prompts, left
padded) and once as --prompts single `generate.complete` calls, alternating which goes first. Greedy
decoding without a stop token, so both paths produce exactly the same tokens (checked) and time the
same work. With --beams N, beam search as `eval --beams` runs it (`seq2seq.translate`: prompts
sorted by length, --batch-size / N of them per search, N cache rows each) against one search per
prompt; the searches stop at the end-of-text token, and both paths must give the same text.
Without --model the model is randomly initialised: width --width, --layers deep, vocab of the
byte-level tokenizer (speed does not depend on what the weights learned). Reports the wall time
of each path (median over rounds), tokens/s, and the ratio single/batch (how many times faster the
batch is).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import locked, machine, write_json  # noqa: E402

WORDS = ("the king said that all the people of the land should come to the castle before the winter "
         "and bring what they had grown in the fields").split()


def prompts(n: int) -> list[str]:
    """n prompts of 1 to 24 words, deterministic."""
    return [" ".join(WORDS[i % 7: i % 7 + 1 + (i * 5) % 24]) for i in range(n)]


def load(args):
    import torch

    if args.model:
        from budgetlm.generate import load_causal

        model, tok, _ = load_causal(args.model, args.device)
        return model, tok
    from budgetlm.data.tokenizer import train_tokenizer
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import Transformer

    tok = train_tokenizer("byte", None)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=args.layers, n_embd=args.width,
                      n_head=max(1, args.width // 64), max_seq_len=args.seq)
    return Transformer(cfg).to(args.device).eval(), tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="a causal run to load (default: a random model, see below)")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per path")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    ap.add_argument("--width", type=int, default=256, help="random model: width")
    ap.add_argument("--layers", type=int, default=4, help="random model: depth")
    ap.add_argument("--seq", type=int, default=512, help="random model: context length")
    ap.add_argument("--beams", type=int, default=1, help="beam search with this many beams (1 = greedy)")
    ap.add_argument("--batch-size", type=int, default=32, help="beam search: cache rows per batch (translate's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--lock", default="/tmp/budgetlm-bench.lock", help="benchmark lock file ('' = none)")
    ap.add_argument("--json-out", default="", help="write the results here as JSON")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load(args)
    texts = prompts(args.prompts)
    batch, single = (_beam_paths if args.beams > 1 else _greedy_paths)(model, tok, texts, args)
    times = {"batch": [], "single": []}
    with locked(args.lock):
        batch(), single()  # warm-up (allocator, kernels); also the equality check below
        for r in range(args.rounds):
            for name, fn in ((("batch", batch), ("single", single)) if r % 2 == 0 else
                             (("single", single), ("batch", batch))):
                t0 = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - t0)
                if name == "batch":
                    batch_out = out
                else:
                    single_out = out
    tokens = args.prompts * args.max_new_tokens  # per path (under beam search: at most this many kept)
    med = {k: statistics.median(v) for k, v in times.items()}
    write_json(args.json_out, {
        "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "beams": args.beams, "rounds": args.rounds,
        "model": args.model or f"random {args.layers} x {args.width}, seq {args.seq}",
        "params": sum(p.numel() for p in model.parameters()),
        "same_text": batch_out == single_out,
        "batch_s": round(med["batch"], 3), "single_s": round(med["single"], 3),
        "batch_tokens_per_s": round(tokens / med["batch"], 1), "single_tokens_per_s": round(tokens / med["single"], 1),
        "speedup": round(med["single"] / med["batch"], 2),
        "times": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "machine": machine(), "threads": torch.get_num_threads(),
    })
    print(f"batch of {args.prompts}: {med['batch']:.2f} s, {args.prompts} single calls: {med['single']:.2f} s, "
          f"ratio {med['single'] / med['batch']:.2f}x", file=sys.stderr)


def _greedy_paths(model, tok, texts, args):
    """(batch, single): greedy completions of all texts in one batch, or one call per text."""
    from budgetlm.generate import complete, complete_batch

    # no stop token: eos = -1 can never be sampled, so both paths run every row to max_new_tokens
    tok_no_eot = _NoEot(tok)
    kw = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0, "top_k": 0}

    def batch():
        return [c.text for c in complete_batch(model, tok_no_eot, texts, batch_size=len(texts), **kw)]

    def single():
        return [complete(model, tok_no_eot, t, **kw).text for t in texts]

    return batch, single


def _beam_paths(model, tok, texts, args):
    """(batch, single): beam search as `eval --beams` runs it, or one search per text."""
    from budgetlm.seq2seq import translate
    from budgetlm.training.checkpoint import Seq2SeqInfo

    info = Seq2SeqInfo(template="{source}", max_target_tokens=args.max_new_tokens)

    def batch():
        return translate(model, tok, info, texts, beams=args.beams, batch_size=args.batch_size)

    def single():
        return [translate(model, tok, info, [t], beams=args.beams)[0] for t in texts]

    return batch, single


class _NoEot:
    """The tokenizer with no end-of-text token: generation never stops early."""

    def __init__(self, tok):
        self.tok = tok

    def token_to_id(self, token: str):
        return None

    def __getattr__(self, name):
        return getattr(self.tok, name)


if __name__ == "__main__":
    main()
