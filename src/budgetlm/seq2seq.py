"""Sequence-to-sequence fine-tuning of a causal model (translation, summarisation, short answers).

    budgetlm finetune --task seq2seq --model RUN --train train.en --train-target train.de \\
        --val val.en --val-target val.de --out RUN-mt --budget 10m
    budgetlm eval --model RUN-mt --text test.en test.de --beams 4      # BLEU, chrF, exact match, F1
    budgetlm generate --model RUN-mt --prompt "A man in an orange hat."  # the template is applied

Pairs come from two aligned text files (line i of --train with line i of --train-target), or from
one .csv/.tsv/.jsonl file with --source-column and --target-column. Each pair becomes
`template(source) target <|endoftext|>`, the template stored with the run so that `generate`, `eval`
and `serve` build the same prompt from a raw source. The loss is on the target tokens (and the
closing end-of-text) only. Short pairs are packed into rows of the model's context, separated by
their end-of-text tokens, the way pre-training packs documents; attention is not masked at the
pair boundaries (the fused causal attention kernel has no per-row document mask on CPU), which the
end-of-text token and the template's fixed prefix make harmless in practice.

Validation computes the loss on the validation pairs and corpus BLEU (sacrebleu) of greedy
translations of up to 200 of them; the best BLEU keeps its checkpoint and drives --patience.
Decoding: greedy or beam search (`beams` > 1, KV cache reordered per step, length-normalised scores
with `length_penalty` as in Wu et al. 2016), both over batches of sentences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from budgetlm import runtime, ui
from budgetlm.config import BudgetError, to_dict
from budgetlm.finetuning import FinetuneResult, Validator, finetune_loop
from budgetlm.metrics import exact_match, token_f1
from budgetlm.training.checkpoint import CheckpointMeta, Seq2SeqInfo

VAL_BLEU_PAIRS = 200  # validation pairs translated for BLEU at each validation


def _lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise BudgetError(f"no file at {path}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BudgetError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def read_pairs(source: str, target: str = "", source_column: str = "source",
               target_column: str = "target") -> tuple[list[str], list[str]]:
    """(sources, targets): two aligned text files, or one column file when `target` is empty."""
    if target:
        src, tgt = _lines(source), _lines(target)
        if len(src) != len(tgt):
            raise BudgetError(f"{source} has {len(src):,} lines but {target} has {len(tgt):,}: they must be aligned")
        where = lambda i: f"line {i + 1} of {source} / {target}"  # noqa: E731
    else:
        from budgetlm.labelled import read_labelled

        data = read_labelled(source, source_column, target_column, "", need_labels=False)
        src, tgt = data.texts, data.pairs or []
        where = lambda i: f"row {i + 1} of {source}"  # noqa: E731
    if not src:
        raise BudgetError(f"{source} holds no pairs")
    for i, (s, t) in enumerate(zip(src, tgt)):
        if not s.strip() or not t.strip():
            raise BudgetError(f"{where(i)}: empty {'source' if not s.strip() else 'target'}")
    return src, tgt


# --------------------------------------------------------------------------------------------------
# tokens


def prompt_of(info: Seq2SeqInfo, source: str) -> str:
    return info.template.replace("{source}", source)


def encode_pairs(tok, info: Seq2SeqInfo, sources: Sequence[str], targets: Sequence[str], eot: int,
                 context: int, what: str) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids + end-of-text) per pair; a pair longer than the context is refused."""
    prompts = tok.encode_batch([prompt_of(info, s) for s in sources], add_special_tokens=False)
    tgts = tok.encode_batch(list(targets), add_special_tokens=False)
    out = []
    for i, (p, t) in enumerate(zip(prompts, tgts)):
        n = len(p.ids) + len(t.ids) + 1
        if n > context:
            raise BudgetError(f"{what} pair {i + 1}: prompt and target take {n} tokens, more than the model's "
                              f"context of {context}: shorten it or drop it")
        out.append((p.ids, [*t.ids, eot]))
    return out


def pack(pairs: Sequence[tuple[list[int], list[int]]], T: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of T input ids and T next-token targets, -100 where there is no loss (prompt positions,
    the step after a pair's end-of-text, padding). Pairs are placed whole and in order into a row
    while they fit."""
    rows_x: list[list[int]] = []
    rows_y: list[list[int]] = []
    x: list[int] = []
    y: list[int] = []
    for p, t in pairs:
        seq = p + t
        if x and len(x) + len(seq) > T:
            rows_x.append(x + [pad] * (T - len(x)))
            rows_y.append(y + [-100] * (T - len(y)))
            x, y = [], []
        x += seq
        y += [-100] * (len(p) - 1) + t + [-100]  # position k predicts seq[k + 1]: target tokens only
    if x:
        rows_x.append(x + [pad] * (T - len(x)))
        rows_y.append(y + [-100] * (T - len(y)))
    return np.array(rows_x, dtype=np.int64), np.array(rows_y, dtype=np.int64)


class PackedBatches:
    """Shuffled epochs of packed rows: each call returns {"idx", "targets"} of `batch_size` rows."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = torch.from_numpy(x), torch.from_numpy(y), batch_size
        self.rng, self.order = np.random.default_rng(seed), np.zeros(0, dtype=np.int64)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __call__(self) -> dict[str, torch.Tensor]:
        if len(self.order) == 0:
            self.order = self.rng.permutation(len(self.x))
        ix, self.order = self.order[: self.batch_size], self.order[self.batch_size:]
        return {"idx": self.x[ix], "targets": self.y[ix]}


# --------------------------------------------------------------------------------------------------
# decoding


@dataclass
class _Beams:
    """One sentence's search: its open hypotheses (one cache row each) and the finished ones."""

    seqs: list[list[int]]  # open hypotheses' new tokens
    scores: torch.Tensor  # (len(seqs),) their summed log-probabilities
    done: list[tuple[float, list[int]]]  # finished: (length-normalised score, tokens)

    def close(self, length_penalty: float) -> None:
        """Rank the open hypotheses with the finished ones (the search stops here)."""
        self.done += [(float(s) / max(1, len(q)) ** length_penalty, q) for s, q in zip(self.scores.tolist(), self.seqs)]
        self.seqs = []

    def expand(self, lp: torch.Tensor, beams: int, eot: int, length_penalty: float) -> list[tuple[int, int]]:
        """Extend by one token from lp (len(seqs), V) log-probabilities; return the (row, token) pairs
        kept, or [] when the search is over (its best finished beats every open hypothesis)."""
        lp = lp + self.scores[:, None]
        top = lp.flatten().topk(min(2 * beams, lp.numel()))
        keep, new_scores = [], []
        for s, flat in zip(top.values.tolist(), top.indices.tolist()):
            b, token = divmod(flat, lp.shape[1])
            if token == eot:
                self.done.append((s / max(1, len(self.seqs[b]) + 1) ** length_penalty, self.seqs[b]))
            elif len(keep) < beams:
                keep.append((b, token))
                new_scores.append(s)
            if len(keep) == beams:
                break
        best_open = max(new_scores) / max(1, len(self.seqs[0]) + 1) ** length_penalty if new_scores else -math.inf
        if not keep or (len(self.done) >= beams and max(d[0] for d in self.done) >= best_open):
            self.close(length_penalty)
            return []
        self.seqs = [self.seqs[b] + [t] for b, t in keep]
        self.scores = torch.tensor(new_scores)
        return keep


@torch.no_grad()
def beam_search(model, prompts: list[list[int]], beams: int, max_new: int, eot: int,
                length_penalty: float = 1.0) -> list[list[int]]:
    """The best continuation of each prompt under beam search, all prompts in one batch (left-padded,
    as `generate_batch` pads; `beams` cache rows per prompt; a finished prompt's rows leave the
    batch). Finished hypotheses are ranked by log-probability / length**length_penalty (GNMT, Wu et
    al. 2016). At most min(max_new, context - the longest prompt's length) steps: `translate` searches
    alone a prompt that the batch's longest would cut short."""
    from budgetlm.generate import prefill

    longest, window = max(len(p) for p in prompts), model.cfg.max_seq_len
    steps = min(max_new, window - longest)
    cache = model.new_kv_cache(batch_size=len(prompts) * beams, max_len=longest + steps)
    logits = prefill(model, [p for p in prompts for _ in range(beams)], cache)  # (rows, V)
    searches = [_Beams([[] for _ in range(beams)], torch.tensor([0.0] + [-math.inf] * (beams - 1)), [])
                for _ in prompts]  # all beams start equal: expand the first only
    active = list(range(len(prompts)))  # prompts with rows in the cache, in cache order
    for _ in range(steps):
        lp = torch.log_softmax(logits.float().cpu(), dim=-1)  # (rows, V)
        rows, tokens, still, first = [], [], [], 0
        for i in active:
            n = len(searches[i].seqs)
            keep = searches[i].expand(lp[first:first + n], beams, eot, length_penalty)
            rows += [first + b for b, _ in keep]
            tokens += [[t] for _, t in keep]
            still += [i] if keep else []
            first += n
        if not still:
            break
        cache.select(rows)
        active = still
        logits = model.step(torch.tensor(tokens, device=model.embed.weight.device), cache)
    for i in active:
        searches[i].close(length_penalty)
    return [max(b.done, key=lambda d: d[0])[1] for b in searches]


def _search_groups(lengths: list[int], limit: int, window: int) -> list[list[int]]:
    """Indices into `lengths` (sorted ascending) searched together: the batch's longest prompt leaves
    window - longest steps, so a shorter prompt that would get more steps alone is searched alone."""
    longest = lengths[-1]
    alone = [j for j, n in enumerate(lengths) if limit > window - longest and n < longest]
    return [[j for j in range(len(lengths)) if j not in alone]] + [[j] for j in alone]


def translate(model, tok, info: Seq2SeqInfo, sources: Sequence[str], beams: int = 1, max_new_tokens: int = 0,
              batch_size: int = 32) -> list[str]:
    """The model's target text for each source: greedy (batched) or beam search."""
    from budgetlm.data.tokenizer import special_ids
    from budgetlm.generate import generate_batch

    eot = special_ids(tok)["eot"]
    prompts = [tok.encode(prompt_of(info, s), add_special_tokens=False).ids for s in sources]
    limit = max_new_tokens or info.max_target_tokens
    out: list[list[int]] = [[] for _ in sources]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad least
    per_batch = max(1, batch_size // beams) if beams > 1 else batch_size
    for k in range(0, len(order), per_batch):
        chunk = order[k:k + per_batch]
        if beams > 1:
            for group in _search_groups([len(prompts[i]) for i in chunk], limit, model.cfg.max_seq_len):
                found = beam_search(model, [prompts[chunk[j]] for j in group], beams, limit, eot, info.length_penalty)
                for j, ids in zip(group, found):
                    out[chunk[j]] = ids
            continue
        for step in generate_batch(model, [prompts[i] for i in chunk], limit, 0.0, stop_ids=[eot]):
            for i, token in zip(chunk, step.tokens):
                if token is not None:
                    out[i].append(token)
    return [tok.decode(ids).strip() for ids in out]


def scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu's defaults), exact match and token F1 (SQuAD rules, %)."""
    try:
        import sacrebleu
    except ImportError:
        raise BudgetError("BLEU and chrF need sacrebleu: pip install sacrebleu") from None
    n = max(1, len(references))
    return {"bleu": sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
            "chrf": sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score,
            "exact_match": 100.0 * sum(exact_match(h, [r]) for h, r in zip(hypotheses, references)) / n,
            "f1": 100.0 * sum(token_f1(h, [r]) for h, r in zip(hypotheses, references)) / n,
            "pairs": len(references)}


# --------------------------------------------------------------------------------------------------
# training: `budgetlm finetune --task seq2seq`


@dataclass
class _Pairs:
    train: tuple[list[str], list[str]]
    val: tuple[list[str], list[str]]


def _read(cfg) -> _Pairs:
    if cfg.hf_dataset:
        raise BudgetError("--task seq2seq reads files: --train SRC --train-target TGT, or a .csv/.tsv/.jsonl "
                          "with --source-column and --target-column")
    if "{source}" not in cfg.template:
        raise BudgetError(f"--template {cfg.template!r} has no {{source}}: the source would never reach the model")
    train = read_pairs(cfg.train, cfg.train_target, cfg.source_column, cfg.target_column)
    if cfg.val:
        return _Pairs(train, read_pairs(cfg.val, cfg.val_target, cfg.source_column, cfg.target_column))
    if len(train[0]) < 10:
        raise BudgetError(f"{cfg.train} has {len(train[0])} pairs: too few to hold out a validation set; pass --val")
    order = np.random.default_rng(cfg.seed).permutation(len(train[0]))
    k = max(1, len(order) // 10)
    pick = lambda ix: ([train[0][i] for i in sorted(ix)], [train[1][i] for i in sorted(ix)])  # noqa: E731
    return _Pairs(pick(order[k:]), pick(order[:k]))


def seq2seq_task(cfg):
    """The fine-tuning task "seq2seq" (finetuning.finetune's registry): reads and checks the pairs,
    returns the trainer."""
    pairs = _read(cfg)  # bad input is refused before anything is written
    return lambda tmp: finetune_seq2seq(cfg, tmp, pairs)


class Seq2SeqValidator(Validator):
    """Validation loss on the validation pairs and BLEU of greedy translations of up to 200 of them."""

    def __init__(self, cfg, out: Path, meta: CheckpointMeta, tokenizer_path, steps_per_epoch: int, tok,
                 rows: tuple[np.ndarray, np.ndarray], val: tuple[list[str], list[str]], device):
        super().__init__(cfg, out, meta, tokenizer_path, steps_per_epoch, metric="bleu")
        self.tok, self.rows, self.val, self.device = tok, rows, val, device

    @torch.no_grad()
    def measure(self, model):
        x, y = (torch.from_numpy(a).to(self.device) for a in self.rows)
        losses = [float(model(x[i:i + 16], y[i:i + 16])[1]) * int((y[i:i + 16] != -100).sum())
                  for i in range(0, len(x), 16)]
        val_loss = sum(losses) / max(1, int((y != -100).sum()))
        src, ref = self.val[0][:VAL_BLEU_PAIRS], self.val[1][:VAL_BLEU_PAIRS]
        met = scores(translate(model, self.tok, self.meta.seq2seq, src), ref)
        return met["bleu"], val_loss, {**met, "val_loss": val_loss}, {"val_loss": val_loss, "bleu": met["bleu"],
                                                                      "chrf": met["chrf"]}


def _source(cfg):
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.training.checkpoint import load_model

    lm, meta = load_model(cfg.model, device="cpu")
    if meta.kind != "lm" or not lm.cfg.causal:
        raise BudgetError(f"{cfg.model} is not a causal language model: --task seq2seq fine-tunes one "
                          "(budgetlm train --objective causal, or a local Hugging Face Llama folder)")
    if not meta.tokenizer_path:
        raise BudgetError(f"{cfg.model} has no tokenizer.json next to its checkpoint")
    if cfg.from_scratch:  # the no-pre-training baseline: same shape and tokenizer, fresh weights
        lm.reset_parameters()
    if cfg.dropout:
        for m in lm.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.dropout
    return lm, load_tokenizer(meta.tokenizer_path), meta.tokenizer_path


def finetune_seq2seq(cfg, tmp: Path, pairs: _Pairs) -> FinetuneResult:
    """Fine-tune the causal model `cfg.model` on source -> target pairs, written into `tmp`."""
    import time

    from budgetlm.data.tokenizer import special_ids
    from budgetlm.training.track import MetricsLogger

    rt = runtime.init_runtime(cfg.device, cfg.precision, seed=cfg.seed)
    model, tok, tok_path = _source(cfg)
    ids = special_ids(tok)
    T = cfg.max_len or model.cfg.max_seq_len
    if T > model.cfg.max_seq_len:
        raise BudgetError(f"--max-len {T} exceeds the model's context ({model.cfg.max_seq_len} tokens)")
    t0 = time.perf_counter()
    train = encode_pairs(tok, _info(cfg, []), *pairs.train, ids["eot"], T, str(cfg.train))
    val = encode_pairs(tok, _info(cfg, []), *pairs.val, ids["eot"], T, str(cfg.val or cfg.train))
    info = _info(cfg, train)
    x, y = pack(train, T, ids["pad"])
    ui.info(f"fine-tuning {cfg.model} for sequence to sequence on {len(train):,} pairs packed into {len(x):,} rows of "
            f"{T} tokens, validating on {len(val):,} [{rt.device_type} {rt.precision}]")
    setup = runtime.prepare_training(model, rt, compile="off")
    meta = CheckpointMeta(kind="lm", model_config=to_dict(model.cfg), objective="causal", seq2seq=info,
                          run_config=to_dict(cfg))
    batches = PackedBatches(x, y, cfg.batch_size, cfg.seed)
    validator = Seq2SeqValidator(cfg, tmp, meta, tok_path, batches.steps_per_epoch, tok, pack(val, T, ids["pad"]),
                                 pairs.val, rt.device)
    metrics = MetricsLogger(tmp / "metrics.jsonl", cfg.track, tmp, to_dict(cfg))
    try:
        result = finetune_loop(cfg, setup, batches, validator, rt, metrics)
        if not validator.history or validator.history[-1]["step"] != result.state.step:
            validator(setup.model, result.state)  # the final state always gets a validation
    finally:
        metrics.close()
    st = result.state
    return FinetuneResult(
        run_dir=str(cfg.out), backbone="budgetlm", source=cfg.model, from_scratch=cfg.from_scratch, labels=[],
        train_examples=len(train), val_examples=len(val), steps=st.step,
        epochs=round(st.step / batches.steps_per_epoch, 3), best_step=validator.best_step,
        early_stopped=result.stopped_early, interrupted=result.interrupted, train_seconds=round(st.elapsed_s, 2),
        wall_seconds=round(time.perf_counter() - t0, 2), metric="bleu", history=validator.history,
        metrics=validator.best)


def _info(cfg, train: list[tuple[list[int], list[int]]]) -> Seq2SeqInfo:
    longest = max((len(t) for _, t in train), default=64)
    return Seq2SeqInfo(template=cfg.template, max_target_tokens=int(1.5 * longest) + 1,
                       source_run=str(Path(cfg.model).resolve()))


def load_seq2seq(run: str | Path, device: str = "cpu", which: str = "best"):
    """(model, tokenizer, Seq2SeqInfo) of a sequence-to-sequence run."""
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.training.checkpoint import load_model

    model, meta = load_model(run, device=device, which=which)
    if meta.seq2seq is None:
        raise BudgetError(f"{run} is not a sequence-to-sequence run (made by `budgetlm finetune --task seq2seq`)")
    return model, load_tokenizer(meta.tokenizer_path), meta.seq2seq


def evaluate_seq2seq(run: str | Path, source: str, target: str = "", beams: int = 1, device: str = "cpu",
                     which: str = "best", source_column: str = "source", target_column: str = "target") -> dict[str, Any]:
    """BLEU, chrF, exact match and F1 of a run's translations of `source` against `target`."""
    import time

    if beams < 1:
        raise BudgetError(f"--beams must be >= 1, got {beams}")
    model, tok, info = load_seq2seq(run, device, which)
    src, ref = read_pairs(source, target, source_column, target_column)
    t0 = time.perf_counter()
    hyp = translate(model, tok, info, src, beams=beams)
    return {**scores(hyp, ref), "beams": beams, "seconds": round(time.perf_counter() - t0, 2),
            "source": str(source), "samples": [{"source": s, "output": h, "reference": r}
                                                for s, h, r in list(zip(src, hyp, ref))[:5]]}
