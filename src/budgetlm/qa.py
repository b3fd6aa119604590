"""Extractive question answering: SQuAD-format data, windows over long contexts, training, answers.

    budgetlm finetune --task qa --model MLM_RUN --train train.json --val dev.json --out RUN-qa
    budgetlm answer --model RUN-qa --question "Who wrote it?" --context "..."
    budgetlm eval --model RUN-qa --text dev.json            # exact match and F1 (SQuAD v1.1 / v2.0)

Input is SQuAD v1.1 JSON: {"data": [{"paragraphs": [{"context": ..., "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}, or v2.0, whose questions may be `"is_impossible": true`
(the context does not answer them). Each question becomes one or more windows
`[CLS] question [SEP] piece of the context [SEP]`: a context longer than a window is covered by
overlapping pieces, `doc_stride` tokens shared between neighbours (the recipe of BERT's SQuAD runs and
transformers' run_qa.py). A window whose piece does not hold the answer is trained to point at [CLS].
The answer of a question is the best start <= end span of at most `max_answer_len` tokens, inside the
context, over all its windows (start logit + end logit), mapped back to characters of the context.
A run trained with unanswerable questions (each of their windows points at [CLS]) answers "" when the
[CLS] score (start + end logit at [CLS], the lowest over the question's windows) beats the best span:
BERT's SQuAD 2.0 rule, as transformers' run_qa.py applies it (threshold 0).

The model is a budgetlm masked run under `models.heads.SpanExtractor` (laid out as transformers'
ModernBertForQuestionAnswering, so `export` writes an AutoModelForQuestionAnswering folder), or a local
Hugging Face folder of the BERT family as `AutoModelForQuestionAnswering`; a Hugging Face tokenizer
lays the pair out its own way (`PairLayout`: BERT's token types, RoBERTa's double `</s>`).
Training goes through `finetuning.finetune_loop` (the one fine-tuning loop); the checkpoint kept is
the one with the best validation F1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from budgetlm import runtime, ui
from budgetlm.config import BudgetError, to_dict
from budgetlm.finetuning import Batches, FinetuneResult, Validator, finetune_loop
from budgetlm.hfmodels import is_hf_folder
from budgetlm.labelled import collate, length_sorted_batches
from budgetlm.metrics import answer_metrics
from budgetlm.training.checkpoint import CheckpointMeta, QAInfo


@dataclass
class Example:
    id: str  # the question's id
    question: str
    context: str
    answers: list[str]  # gold answer texts (empty when unknown)
    start: int = -1  # character offset of the first gold answer in the context (-1 = unknown)
    impossible: bool = False  # SQuAD v2.0: the context does not answer the question


def _field(obj: Any, key: str, where: str, kind: type) -> Any:
    if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
        raise BudgetError(f"{where}: expected a {kind.__name__} under {key!r} (SQuAD layout)")
    return obj[key]


def read_squad(path: str | Path, need_answers: bool = True) -> list[Example]:
    """Every question of a SQuAD v1.1 or v2.0 file; each gold span must be the text at its offset."""
    p = Path(path)
    if not p.is_file():
        raise BudgetError(f"no SQuAD file at {path}")
    try:
        text = p.read_text(encoding="utf-8")
        if not text.strip():
            raise BudgetError(f"{path} is empty: expected SQuAD JSON")
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BudgetError(f"{path} is not SQuAD JSON: {e}") from None
    out: list[Example] = []
    for a, article in enumerate(_field(doc, "data", str(path), list)):
        for g, para in enumerate(_field(article, "paragraphs", f"{path} data[{a}]", list)):
            where = f"{path} data[{a}].paragraphs[{g}]"
            ctx = _field(para, "context", where, str)
            if not ctx.strip():
                raise BudgetError(f"{where}: empty context")
            for q, qa in enumerate(_field(para, "qas", where, list)):
                out.append(_example(qa, ctx, f"{where}.qas[{q}]", need_answers))
    if not out:
        raise BudgetError(f"{path} holds no questions")
    return out


def _example(qa: dict, ctx: str, where: str, need_answers: bool) -> Example:
    question = _field(qa, "question", where, str)
    if not question.strip():
        raise BudgetError(f"{where}: empty question")
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise BudgetError(f"{where}: is_impossible must be true or false")
    answers = [] if impossible else qa.get("answers") or []  # v2.0 keeps "plausible_answers" apart
    if need_answers and not answers and not impossible:
        raise BudgetError(f"{where}: no answers (training and evaluation need at least one, "
                          f"or \"is_impossible\": true)")
    texts, start = [], -1
    for i, ans in enumerate(answers):
        text, pos = _field(ans, "text", f"{where}.answers[{i}]", str), ans.get("answer_start")
        if not isinstance(pos, int) or pos < 0 or ctx[pos: pos + len(text)] != text or not text:
            raise BudgetError(f"{where}.answers[{i}]: the span {text!r} at {pos} is not in its context "
                              f"(context[{pos}:{pos}+{len(text)}] = {ctx[pos: pos + len(text)]!r})"
                              if isinstance(pos, int) else f"{where}.answers[{i}]: answer_start must be an integer")
        texts.append(text)
        start = pos if start < 0 else start
    return Example(str(qa.get("id", where)), question, ctx, texts, start, impossible)


# --------------------------------------------------------------------------------------------------
# windows


@dataclass
class PairLayout:
    """Where a model's special tokens go around a (question, context) pair, and the token type of each
    part. budgetlm: `[CLS] question [SEP] context [SEP]`, no token types; a Hugging Face tokenizer: its
    own pair template (BERT's is the same with types 0 then 1, RoBERTa's doubles the middle `</s>`)."""

    prefix: list[int]  # ids before the question
    middle: list[int]  # ids between the question and the context
    suffix: list[int]  # ids after the context
    pad: int  # the padding id
    types: tuple[int, int, int, int, int] | None = None  # token type of prefix, question, middle, context, suffix

    @classmethod
    def budgetlm(cls, specials: dict[str, int]) -> "PairLayout":
        return cls([specials["cls"]], [specials["sep"]], [specials["sep"]], specials["pad"])

    @classmethod
    def of_hf(cls, tok) -> "PairLayout":
        """The layout a fast `transformers` tokenizer gives a pair (read off a probe pair)."""
        enc = tok("a", "b", truncation=False)
        seq, ids, tt = enc.sequence_ids(), enc["input_ids"], enc.get("token_type_ids")
        q, c = [k for k, s in enumerate(seq) if s == 0], [k for k, s in enumerate(seq) if s == 1]
        if not q or not c:
            raise BudgetError(f"the tokenizer {type(tok).__name__} does not encode a question and a context as a pair")
        pre, mid, suf = slice(0, q[0]), slice(q[-1] + 1, c[0]), slice(c[-1] + 1, len(ids))

        def first(part: slice) -> int:  # special tokens of one part share a type (BERT: [SEP] 0, last [SEP] 1)
            return int(tt[part.start]) if part.stop > part.start else 0

        types = None if tt is None else (first(pre), int(tt[q[0]]), first(mid), int(tt[c[0]]), first(suf))
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or tok.unk_token_id or 0)
        return cls(list(ids[pre]), list(ids[mid]), list(ids[suf]), pad, types)

    @property
    def extra(self) -> int:
        """Special tokens per window."""
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def type_ids(self, n_question: int, n_context: int) -> list[int] | None:
        if self.types is None:
            return None
        tp, tq, tm, tc, ts = self.types
        return ([tp] * len(self.prefix) + [tq] * n_question + [tm] * len(self.middle) + [tc] * n_context
                + [ts] * len(self.suffix))


@dataclass
class Windows:
    ids: list[list[int]]  # token ids of each window
    example: list[int]  # which example each window belongs to
    offsets: list[list[tuple[int, int] | None]]  # per token: its characters in the context, None outside it
    spans: np.ndarray  # (N, 2) start and end token of the answer in each window (0, 0 = [CLS]: not here)
    types: list[list[int]] | None = None  # token type ids of each window (models that take them)


def windows(tok, layout: PairLayout, examples: Sequence[Example], info: QAInfo) -> Windows:
    """The model inputs of `examples` (see the module docstring); `tok` is a `tokenizers.Tokenizer`."""
    qs = tok.encode_batch([e.question for e in examples], add_special_tokens=False)
    cs = tok.encode_batch([e.context for e in examples], add_special_tokens=False)
    out = Windows([], [], [], np.zeros((0, 2), dtype=np.int64), [] if layout.types else None)
    spans: list[tuple[int, int]] = []
    for i, (e, q, c) in enumerate(zip(examples, qs, cs)):
        qids = q.ids[: info.max_question_len]
        room = info.max_len - len(qids) - layout.extra  # context tokens per window
        if room <= info.doc_stride:
            raise BudgetError(f"--max-len {info.max_len} leaves {room} context tokens per window after a "
                              f"{len(qids)}-token question: raise --max-len or lower --doc-stride ({info.doc_stride})")
        n_ctx, s, head = len(c.ids), 0, len(layout.prefix) + len(qids) + len(layout.middle)
        while True:
            piece = range(s, min(s + room, n_ctx))
            out.ids.append([*layout.prefix, *qids, *layout.middle, *(c.ids[k] for k in piece), *layout.suffix])
            out.offsets.append([None] * head + [c.offsets[k] for k in piece] + [None] * len(layout.suffix))
            if out.types is not None:
                out.types.append(layout.type_ids(len(qids), len(piece)))
            out.example.append(i)
            spans.append(_answer_tokens(e, c.offsets, piece, head))
            if piece.stop >= n_ctx:
                break
            s += room - info.doc_stride
    out.spans = np.array(spans, dtype=np.int64).reshape(-1, 2)
    return out


def _answer_tokens(e: Example, offsets, piece: range, head: int) -> tuple[int, int]:
    """Window positions of the first gold answer's first and last token, or (0, 0) when the piece
    does not hold all of it."""
    if e.start < 0 or not piece:
        return 0, 0
    a, b = e.start, e.start + len(e.answers[0])
    first = next((k for k in piece if offsets[k][1] > a), None)
    last = next((k for k in reversed(piece) if offsets[k][0] < b), None)
    if first is None or last is None or first > last or offsets[piece.start][0] > a or offsets[piece.stop - 1][1] < b:
        return 0, 0
    return head + first - piece.start, head + last - piece.start


# --------------------------------------------------------------------------------------------------
# answers


@torch.no_grad()
def span_logits(model, win: Windows, pad_id: int, batch_size: int = 32,
                device: torch.device | str = "cpu") -> list[tuple[np.ndarray, np.ndarray]]:
    """(start logits, end logits) of each window, in order."""
    ids = win.ids
    out: list[Any] = [None] * len(ids)
    for batch in length_sorted_batches([len(s) for s in ids], batch_size):
        idx, mask, tt = collate([ids[i] for i in batch], pad_id, [win.types[i] for i in batch] if win.types else None)
        kwargs = {"token_type_ids": tt.to(device)} if tt is not None else {}
        (start, end), _ = model(idx.to(device), attention_mask=mask.to(device), **kwargs)
        for j, i in enumerate(batch):
            n = len(ids[i])
            out[i] = (start[j, :n].float().cpu().numpy(), end[j, :n].float().cpu().numpy())
    return out


def _answer(text: str = "", score: float = -math.inf, start: int = 0, end: int = 0,
            no_answer: bool = False) -> dict[str, Any]:
    return {"answer": text, "score": score, "start": start, "end": end, "no_answer": no_answer}


def best_answers(examples: Sequence[Example], win: Windows, logits, max_answer_len: int,
                 top: int = 20, unanswerable: bool = False) -> list[dict[str, Any]]:
    """The best span of each example over its windows: answer text, score, character start and end;
    with `unanswerable`, "" (no_answer) where the [CLS] score beats it (see the module docstring)."""
    best = [_answer() for _ in examples]
    null = [math.inf] * len(examples)  # the lowest [CLS] score over each example's windows
    for w, (start, end) in enumerate(logits):
        offs, ex = win.offsets[w], win.example[w]
        null[ex] = min(null[ex], float(start[0] + end[0]))
        ctx_tokens = np.array([o is not None for o in offs])
        s_cand = [k for k in np.argsort(-start)[: top * 4] if ctx_tokens[k]][:top]
        e_cand = [k for k in np.argsort(-end)[: top * 4] if ctx_tokens[k]][:top]
        for s in s_cand:
            for e in e_cand:
                score = float(start[s] + end[e])
                if s <= e < s + max_answer_len and score > best[ex]["score"]:
                    a, b = offs[s][0], offs[e][1]
                    best[ex] = _answer(examples[ex].context[a:b], score, a, b)
    for i, b in enumerate(best):
        if unanswerable and null[i] > b["score"]:
            best[i] = b = _answer(score=null[i], no_answer=True)
        b["score"] = None if b["score"] == -math.inf else round(b["score"], 4)
    return best


@dataclass
class LoadedQA:
    """A question-answering run ready for answers: `answer(questions, contexts)`."""

    model: torch.nn.Module
    tokenizer: Any  # a `tokenizers.Tokenizer` (a Hugging Face run's: its fast tokenizer's backend)
    info: QAInfo
    meta: CheckpointMeta
    device: torch.device
    layout: PairLayout

    def answer(self, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 32) -> list[dict[str, Any]]:
        examples = [Example(str(i), q, c, []) for i, (q, c) in enumerate(zip(questions, contexts))]
        for e in examples:
            if not e.question.strip() or not e.context.strip():
                raise BudgetError("a question and a context must both be non-empty")
        return predict(self, examples, batch_size)


def predict(loaded: LoadedQA, examples: Sequence[Example], batch_size: int = 32) -> list[dict[str, Any]]:
    win = windows(loaded.tokenizer, loaded.layout, examples, loaded.info)
    logits = span_logits(loaded.model, win, loaded.layout.pad, batch_size, loaded.device)
    return best_answers(examples, win, logits, loaded.info.max_answer_len, unanswerable=loaded.info.unanswerable)


def scores(answers: Sequence[str], examples: Sequence[Example]) -> dict[str, Any]:
    """Exact match and F1 in percent as SQuAD's scripts give them: an unanswerable question's gold
    answer is "" (v2.0), and a file with such questions also gets the answerable and unanswerable
    ones apart (v2.0's HasAns and NoAns)."""
    golds = [e.answers or [""] for e in examples]
    out: dict[str, Any] = answer_metrics(answers, golds)
    if any(e.impossible for e in examples):
        for name, want in (("has_answer", False), ("no_answer", True)):
            keep = [i for i, e in enumerate(examples) if e.impossible == want]
            m = answer_metrics([answers[i] for i in keep], [golds[i] for i in keep])
            out.update({f"{name}_exact_match": m["exact_match"], f"{name}_f1": m["f1"], f"{name}_questions": len(keep)})
    return out


def hf_reader(tok) -> tuple[Any, PairLayout]:
    """(`tokenizers.Tokenizer`, pair layout) of a `transformers` tokenizer: windows need the character
    offsets only a fast tokenizer has. The backend is a copy without truncation or padding."""
    from tokenizers import Tokenizer

    if not getattr(tok, "is_fast", False):
        raise BudgetError(f"question answering needs a fast tokenizer (a tokenizer.json) for character offsets; "
                          f"{type(tok).__name__} is not one")
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend, PairLayout.of_hf(tok)


def qa_reader(meta: CheckpointMeta) -> tuple[Any, PairLayout]:
    """(tokenizer, pair layout) of a question-answering run, as it was fine-tuned."""
    if meta.kind == "hf-qa":
        from budgetlm.hf import require_transformers

        return hf_reader(require_transformers().AutoTokenizer.from_pretrained(str(meta.run_dir / "hf_tokenizer")))
    from budgetlm.data.tokenizer import load_tokenizer, special_ids

    if not meta.tokenizer_path:
        raise BudgetError(f"{meta.run_dir} has no tokenizer.json next to its checkpoint")
    tok = load_tokenizer(meta.tokenizer_path)
    return tok, PairLayout.budgetlm(special_ids(tok))


def load_qa(run: str | Path, device: str = "cpu", which: str = "best") -> LoadedQA:
    from budgetlm.training.checkpoint import load_model

    model, meta = load_model(run, device=device, which=which)
    if meta.qa is None:
        raise BudgetError(f"{run} is not a question-answering run (made by `budgetlm finetune --task qa`)")
    tok, layout = qa_reader(meta)
    return LoadedQA(model, tok, meta.qa, meta, torch.device(device), layout)


def evaluate_qa(run: str | Path, path: str | Path, batch_size: int = 32, device: str = "cpu",
                which: str = "best") -> dict[str, Any]:
    """Exact match and F1 (percent, `scores`) of a run on a SQuAD-format file."""
    import time

    loaded = load_qa(run, device, which)
    examples = read_squad(path)
    t0 = time.perf_counter()
    preds = predict(loaded, examples, batch_size)
    return {**scores([p["answer"] for p in preds], examples),
            "seconds": round(time.perf_counter() - t0, 3), "source": str(path)}


# --------------------------------------------------------------------------------------------------
# training: `budgetlm finetune --task qa`


@dataclass
class _Source:
    """What fine-tuning starts from: the model with a span head, and how it reads text."""

    model: torch.nn.Module
    tokenizer: Any  # a `tokenizers.Tokenizer`
    layout: PairLayout
    tokenizer_path: str | None  # copied into every checkpoint (budgetlm runs; a Hugging Face run keeps hf_tokenizer/)
    meta: CheckpointMeta  # the checkpoints' meta


def _window_settings(cfg, context: int) -> QAInfo:
    max_len = cfg.max_len or min(384, context)  # 384: BERT's SQuAD window
    if max_len > context:
        raise BudgetError(f"--max-len {max_len} exceeds the model's context ({context} tokens)")
    stride = cfg.doc_stride or max_len // 3  # BERT's SQuAD recipe: 128 of 384
    return QAInfo(max_len=max_len, doc_stride=stride, max_question_len=max_len // 2,
                  max_answer_len=cfg.max_answer_len, source_run=str(Path(cfg.model).resolve()))


def _budgetlm_source(cfg, tmp: Path) -> _Source:
    """A budgetlm masked run under a `SpanExtractor`."""
    from budgetlm.data.tokenizer import load_tokenizer, special_ids
    from budgetlm.models.heads import SpanExtractor
    from budgetlm.training.checkpoint import load_model

    lm, meta = load_model(cfg.model, device="cpu")
    if meta.kind != "lm":
        raise BudgetError(f"{cfg.model} is already fine-tuned: pass the pre-trained masked run")
    if lm.cfg.causal:
        raise BudgetError(f"{cfg.model} is a causal model: question answering needs a masked one "
                          "(budgetlm train --objective masked)")
    if not meta.tokenizer_path:
        raise BudgetError(f"{cfg.model} has no tokenizer.json next to its checkpoint")
    model = SpanExtractor(replace(lm.cfg, dropout=cfg.dropout)) if cfg.from_scratch else \
        SpanExtractor.from_lm(lm, dropout=cfg.dropout)
    tok = load_tokenizer(meta.tokenizer_path)
    info = _window_settings(cfg, lm.cfg.max_seq_len)
    return _Source(model, tok, PairLayout.budgetlm(special_ids(tok)), meta.tokenizer_path,
                   CheckpointMeta(kind="qa", model_config=to_dict(model.cfg), objective="question-answering", qa=info))


def _hf_source(cfg, tmp: Path) -> _Source:
    """A local Hugging Face folder (BERT family) as `AutoModelForQuestionAnswering`; its tokenizer is
    saved into the run (hf_tokenizer/), as for Hugging Face classifiers."""
    from budgetlm.hf import HFQuestionAnswerer, dropout_overrides, require_transformers

    transformers = require_transformers()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
        config = transformers.AutoConfig.from_pretrained(cfg.model, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a broken folder
        raise BudgetError(f"cannot load the Hugging Face model in {cfg.model}: {str(e).splitlines()[0]}") from None
    backend, layout = hf_reader(tok)
    config.update(dropout_overrides(config, cfg.dropout))
    auto = transformers.AutoModelForQuestionAnswering
    try:
        hf = auto.from_config(config) if cfg.from_scratch else \
            auto.from_pretrained(cfg.model, config=config, local_files_only=True)
    except (ValueError, OSError) as e:  # no question-answering class for this architecture, missing weights
        raise BudgetError(f"{cfg.model}: {str(e).splitlines()[0]}") from None
    limit = min(getattr(tok, "model_max_length", 0) or 10**9, getattr(config, "max_position_embeddings", 0) or 10**9)
    info = _window_settings(cfg, limit)
    tok.save_pretrained(str(tmp / "hf_tokenizer"))
    return _Source(HFQuestionAnswerer(hf), backend, layout, None,
                   CheckpointMeta(kind="hf-qa", model_config=config.to_dict(), objective="question-answering", qa=info))


class SpanBatches(Batches):
    """Training batches of windows whose labels are the answer's (start, end) token positions."""

    def __call__(self) -> dict[str, torch.Tensor]:
        batch = super().__call__()
        spans = batch.pop("labels")  # (B, 2)
        return {**batch, "start_positions": spans[:, 0], "end_positions": spans[:, 1]}


class QAValidator(Validator):
    """Validation F1 (and exact match) on the held-out questions; the best F1 is kept."""

    def __init__(self, cfg, out: Path, meta: CheckpointMeta, tokenizer_path, steps_per_epoch: int,
                 examples: Sequence[Example], win: Windows, pad_id: int, device):
        super().__init__(cfg, out, meta, tokenizer_path, steps_per_epoch, metric="f1")
        self.examples, self.win, self.pad_id, self.device = examples, win, pad_id, device

    def measure(self, model):
        logits = span_logits(model, self.win, self.pad_id, 64, self.device)
        preds = best_answers(self.examples, self.win, logits, self.meta.qa.max_answer_len,
                             unanswerable=self.meta.qa.unanswerable)
        met = scores([p["answer"] for p in preds], self.examples)
        return met["f1"], None, met, {"exact_match": met["exact_match"], "f1": met["f1"]}


def split_examples(cfg) -> tuple[list[Example], list[Example]]:
    """(training, validation) questions: --val, or a tenth of --train held out."""
    train = read_squad(cfg.train)
    if cfg.val:
        return train, read_squad(cfg.val)
    if len(train) < 10:
        raise BudgetError(f"{cfg.train} has {len(train)} questions: too few to hold out a validation set; pass --val")
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    k = max(1, len(train) // 10)
    return [train[i] for i in sorted(order[k:])], [train[i] for i in sorted(order[:k])]


def qa_task(cfg):
    """The fine-tuning task "qa" (finetuning.finetune's registry): reads and checks the SQuAD files,
    returns the trainer."""
    if cfg.hf_dataset:
        raise BudgetError("--task qa reads SQuAD-format JSON files: give --train FILE (and --val FILE)")
    train, val = split_examples(cfg)  # bad input is refused before anything is written
    return lambda tmp: finetune_qa(cfg, tmp, train, val)


def finetune_qa(cfg, tmp: Path, train: list[Example], val: list[Example]) -> FinetuneResult:
    """Fine-tune `cfg.model` (a FinetuneConfig) for extractive question answering, written into `tmp`."""
    import time

    from budgetlm.training.track import MetricsLogger

    rt = runtime.init_runtime(cfg.device, cfg.precision, seed=cfg.seed)
    hf = is_hf_folder(Path(cfg.model))
    src = (_hf_source if hf else _budgetlm_source)(cfg, tmp)
    info = replace(src.meta.qa, unanswerable=any(e.impossible for e in train))
    pad, meta = src.layout.pad, replace(src.meta, run_config=to_dict(cfg), qa=info)
    t0 = time.perf_counter()
    tr, va = windows(src.tokenizer, src.layout, train, info), windows(src.tokenizer, src.layout, val, info)
    none = f", {sum(e.impossible for e in train):,} of them unanswerable" if info.unanswerable else ""
    ui.info(f"fine-tuning {'Hugging Face' if hf else 'budgetlm'} model from {cfg.model} for question answering on "
            f"{len(train):,} questions{none} ({len(tr.ids):,} windows of up to {info.max_len} tokens), validating on "
            f"{len(val):,} [{rt.device_type} {rt.precision}]")
    setup = runtime.prepare_training(src.model, rt, compile="off")
    batches = SpanBatches(tr.ids, tr.spans, tr.types, pad, cfg.batch_size, cfg.seed)
    validator = QAValidator(cfg, tmp, meta, src.tokenizer_path, batches.steps_per_epoch, val, va, pad, rt.device)
    metrics = MetricsLogger(tmp / "metrics.jsonl", cfg.track, tmp, to_dict(cfg))
    try:
        result = finetune_loop(cfg, setup, batches, validator, rt, metrics)
        if not validator.history or validator.history[-1]["step"] != result.state.step:
            with torch.no_grad():
                validator(setup.model, result.state)  # the final state always gets a validation
    finally:
        metrics.close()
    st = result.state
    return FinetuneResult(
        run_dir=str(cfg.out), backbone="hf" if hf else "budgetlm", source=cfg.model, from_scratch=cfg.from_scratch,
        labels=[], train_examples=len(train), val_examples=len(val), steps=st.step,
        epochs=round(st.step / batches.steps_per_epoch, 3), best_step=validator.best_step,
        early_stopped=result.stopped_early, interrupted=result.interrupted, train_seconds=round(st.elapsed_s, 2),
        wall_seconds=round(time.perf_counter() - t0, 2), metric="f1", history=validator.history,
        metrics=validator.best)
