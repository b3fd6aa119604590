"""Labelled text for classification: read csv/tsv/jsonl (or a Hugging Face dataset), map labels to
ids, check the input makes sense, tokenize, and cut into padded batches.

Used by `finetune`, `classify` and `eval` of a classifier; torch-light (torch only in `collate`).
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from budgetlm.config import BudgetError
from budgetlm.data.sources import (check_decoded, damaged_file_errors, json_records, load_hf_split, open_text,
                                   replacements_so_far, split_suffix)


@dataclass
class Labelled:
    """Columns of one labelled file. `labels` are raw strings (None when the file has no labels)."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[str] | None
    source: str


# --------------------------------------------------------------------------------------------------
# reading


# Files open through `prepare`'s reader: compressed (.gz .xz .bz2 .zst) like plain, a BOM dropped,
# invalid UTF-8 replaced by U+FFFD rather than failing half-way through a file; UTF-16/32 and files
# that are mostly invalid UTF-8 refused (`data.sources.check_decoded`).
def _rows_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    for where, row in json_records(path):
        if not isinstance(row, dict):
            raise BudgetError(f"{where}: each line must be a JSON object")
        yield where.rsplit(":", 1)[-1].strip(), row


def _rows_delimited(path: Path, delimiter: str) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(sys.maxsize)
    with open_text(path) as fh:
        # GLUE-style .tsv files are not quoted (sentences contain bare quote characters)
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(fh, delimiter=delimiter, quoting=quoting)
        if not reader.fieldnames:
            raise BudgetError(f"{path} is empty: expected a header row naming the columns")
        for i, row in enumerate(reader, 2):
            yield i, row


# format suffix -> rows as (line or item, record) of one file
READERS: dict[str, Callable[[Path], Iterator[tuple[int | str, dict]]]] = {
    ".jsonl": _rows_jsonl,
    ".json": _rows_jsonl,
    ".csv": lambda p: _rows_delimited(p, ","),
    ".tsv": lambda p: _rows_delimited(p, "\t"),
}


def _column(row: dict, name: str, path: str, line: int, required: bool = True) -> str | None:
    if name not in row:
        if not required:
            return None
        raise BudgetError(
            f"{path}: no column {name!r} (line {line} has: {', '.join(map(str, row.keys()))}); "
            "choose one with --text-column / --label-column / --text-pair-column"
        )
    value = row[name]
    if value is None or (isinstance(value, str) and not value.strip() and required):
        raise BudgetError(f"{path}:{line}: empty {name!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _from_rows(rows, source: str, text_col: str, pair_col: str, label_col: str, need_labels: bool) -> Labelled:
    texts: list[str] = []
    pairs: list[str] = []
    labels: list[str] = []
    has_labels = None
    for line, row in rows:
        texts.append(_column(row, text_col, source, line))
        if pair_col:
            pairs.append(_column(row, pair_col, source, line))
        if has_labels is None:
            has_labels = label_col in row
            if need_labels and not has_labels:
                _column(row, label_col, source, line)  # raises the one-line "no column" error
        if has_labels:
            labels.append(_column(row, label_col, source, line))
    if not texts:
        raise BudgetError(f"{source} holds no rows")
    return Labelled(texts, pairs if pair_col else None, labels if has_labels else None, source)


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise BudgetError(f"no such file: {path}")
    return path


def read_labelled(
    path: str | Path, text_col: str = "text", pair_col: str = "", label_col: str = "label",
    need_labels: bool = True,
) -> Labelled:
    """Read a .csv/.tsv (header row) or .jsonl (one object per line) file of labelled texts, plain
    or compressed (data.jsonl.gz)."""
    path = _existing_file(path)
    fmt, _ = split_suffix(path)
    reader = READERS.get(fmt)
    if reader is None:
        raise BudgetError(f"{path}: unknown format {fmt or path.suffix!r}; use one of {', '.join(READERS)} "
                          "(optionally .gz, .xz, .bz2 or .zst)")
    before = replacements_so_far()
    with damaged_file_errors(path):
        data = _from_rows(reader(path), str(path), text_col, pair_col, label_col, need_labels)
    check_decoded(path, replacements_so_far() - before, sum(map(len, data.texts + (data.pairs or []))))
    return data


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a plain-text file (plain or compressed), one text each."""
    path = _existing_file(path)
    before = replacements_so_far()
    with damaged_file_errors(path), open_text(path, newline=None) as fh:
        lines = [ln.rstrip("\n") for ln in fh if ln.strip()]
    check_decoded(path, replacements_so_far() - before, sum(map(len, lines)))
    if not lines:
        raise BudgetError(f"{path} holds no text")
    return lines


def is_plain_text(path: str | Path) -> bool:
    return split_suffix(Path(path))[0] == ".txt"


def read_hf_dataset(
    name: str, split: str, text_col: str, pair_col: str, label_col: str, need_labels: bool = True
) -> Labelled:
    """A split of a Hugging Face dataset (a local folder, a saved dataset, or one in the cache).

    `name` may carry a configuration after a colon, e.g. `glue:sst2`. Integer labels with ClassLabel
    names are mapped to those names."""
    ds = load_hf_split(name, split)
    feature = ds.features.get(label_col)
    names = getattr(feature, "names", None)
    rows = (
        (i, {**r, label_col: names[r[label_col]]} if names and label_col in r and r[label_col] >= 0 else r)
        for i, r in enumerate(ds)
    )
    return _from_rows(rows, f"{name}[{split}]", text_col, pair_col, label_col, need_labels)


# --------------------------------------------------------------------------------------------------
# labels


def _as_int(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None


def label_names(train_labels: Sequence[str]) -> list[str]:
    """The sorted label set (numerically when every label is an integer). Needs two classes."""
    distinct = set(train_labels)
    if len(distinct) < 2:
        only = next(iter(distinct), "")
        raise BudgetError(
            f"the training file has a single class ({only!r}): a classifier needs at least two labels"
        )
    if all(_as_int(x) is not None for x in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def encode_labels(labels: Sequence[str], names: Sequence[str], source: str) -> np.ndarray:
    """Raw labels -> ids by position in `names`; labels never seen in training are an error."""
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted(set(labels) - set(index))
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:5])
        raise BudgetError(
            f"{source} has labels not seen in training: {shown} (training labels: {', '.join(names)})"
        )
    return np.array([index[x] for x in labels], dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# tokens and batches


# Which tokens of a text longer than its room to keep. For long reviews the end says the most: Sun et
# al. 2019 ("How to Fine-Tune BERT for Text Classification?") found head+tail (128 + 382 of 510
# tokens, about a quarter from the start) best on IMDb, then tail, then head.
TRUNCATIONS: dict[str, Callable[[list[int], int], list[int]]] = {
    "head": lambda x, n: x[:n],
    "tail": lambda x, n: x[len(x) - n:],  # 0 <= n <= len(x)
    "head+tail": lambda x, n: x[: n // 4] + x[len(x) - (n - n // 4):],
}


def build_inputs(
    a: list[int], b: list[int] | None, max_len: int, prefix: list[int], middle: list[int], suffix: list[int],
    truncate: str = "head",
) -> list[int]:
    """prefix + a (+ middle + b) + suffix, shortening the longer text first to fit `max_len`, each
    text cut as `truncate` says (a TRUNCATIONS key)."""
    room = max_len - len(prefix) - len(suffix) - (len(middle) if b is not None else 0)
    if room < 2:
        raise BudgetError(f"--max-len {max_len} leaves no room for text")
    la, lb = len(a), (len(b) if b is not None else 0)
    while la + lb > room:
        if b is not None and lb > la:
            lb -= 1
        else:
            la -= 1
    cut = TRUNCATIONS[truncate]  # each keeps a text whole when it fits (n == len)
    if b is None:
        return prefix + cut(list(a), la) + suffix
    return prefix + cut(list(a), la) + middle + cut(list(b), lb) + suffix


def collate(seqs: Sequence[Sequence[int]], pad_id: int, extra: Sequence[Sequence[int]] | None = None):
    """Right-pad to the longest sequence: (idx (B, T) long, attention_mask (B, T) long[, extra])."""
    import torch

    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        idx[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    if extra is None:
        return idx, mask, None
    ex = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(extra):
        ex[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return idx, mask, ex


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (for inference: less padding), in original order overall."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------------------------------
# encoders: texts -> token ids, for budgetlm tokenizers and Hugging Face tokenizers


class BudgetlmEncoder:
    """A budgetlm `tokenizer.json` with the input layout of the backbone's family:
    masked (ModernBERT/BERT): [CLS] a [SEP] (b [SEP]);  causal (Llama): a ([SEP] b) <|endoftext|>,
    so the last real token, which a causal classifier pools, is always the same end marker."""

    def __init__(self, tokenizer, causal: bool, max_len: int, truncate: str = "head"):
        from budgetlm.data.tokenizer import special_ids

        self.tok, self.max_len, self.truncate = tokenizer, max_len, truncate
        ids = special_ids(tokenizer)
        self.pad_id = ids["pad"]
        if causal:
            self.prefix, self.middle, self.suffix = [], [ids["sep"]], [ids["eot"]]
        else:
            self.prefix, self.middle, self.suffix = [ids["cls"]], [ids["sep"]], [ids["sep"]]

    def __call__(self, texts: list[str], pairs: list[str] | None = None):
        a = [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]
        b = [e.ids for e in self.tok.encode_batch(pairs, add_special_tokens=False)] if pairs else None
        seqs = [
            build_inputs(x, b[i] if b else None, self.max_len, self.prefix, self.middle, self.suffix, self.truncate)
            for i, x in enumerate(a)
        ]
        return seqs, None


class HFEncoder:
    """A Hugging Face tokenizer (AutoTokenizer): its own special tokens and token type ids."""

    def __init__(self, tokenizer, max_len: int, truncate: str = "head"):
        self.tok, self.max_len = tokenizer, max_len
        tokenizer.truncation_side = "left" if truncate == "tail" else "right"  # head+tail: refused by finetune
        if tokenizer.pad_token_id is None:  # e.g. GPT-2/Llama tokenizers: pad with end-of-text
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, texts: list[str], pairs: list[str] | None = None):
        enc = self.tok(texts, pairs, truncation=True, max_length=self.max_len)
        return enc["input_ids"], enc.get("token_type_ids")
