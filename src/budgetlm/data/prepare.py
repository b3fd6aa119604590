"""`budgetlm prepare INPUT... --out DIR`: clean, tokenize and pack raw text into token shards.

Three streaming passes, so the corpus is never in memory whole:

1. read + clean every input, assign each piece to train or val, and spool the cleaned UTF-8 text
   into the temporary output folder (bounded memory: one piece at a time);
2. train the tokenizer on the train spool (`train_from_iterator`; or load `--tokenizer-from`);
3. encode the spools in batches with `encode_batch_fast` (Rust, all cores) and append the ids,
   one end-of-text token after each document, to memory-mapped shards.

Everything is written into `.NAME.tmp-PID` next to `--out` (`fsio.atomic_dir`) and renamed into
place only when complete, so an interrupted run leaves nothing that looks like a dataset, and
`--overwrite` removes the old dataset only after the new one is whole. The write guard
(`fsio.check_output`) keeps `--out` away from the inputs and lets `--overwrite` replace only a dataset
folder; `fsio.FolderLock` on `--out` refuses a second `prepare` into it while this one writes.

Train/val split: the k-th kept piece goes to val when floor(k*f + 1/2) steps up, so exactly
round(n*f) of n pieces are val, spread evenly through the corpus, identical on every run with the
same inputs and options (a piece is a document, or a ~64 KiB block of a longer one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import struct
import time
import typing
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from budgetlm import __version__, fsio, ui
from budgetlm.config import BudgetError, check_ranges, ranged, to_dict
from budgetlm.data import builtin, clean, shards, sources
from budgetlm.data import tokenizer as toklib


@dataclasses.dataclass
class PrepareConfig:
    tokenizer: Literal["bpe", "wordpiece", "byte"] = "bpe"  # bpe: byte-level BPE (causal models); wordpiece: masked models; byte: 256 byte ids + specials, no training
    vocab_size: int = ranged(0, 0, 2**21)  # tokenizer vocabulary incl. special tokens (0 = sized to the corpus: 1 per 512 train bytes, a power of 2 in 1024-8192; byte is always 262)
    tokenizer_from: str = ""  # reuse this tokenizer.json or Hugging Face tokenizer folder instead of training one
    max_mb: float = ranged(0.0, 0.0, 1e9)  # stop reading after this many MB of cleaned text (0 = read everything); for quick runs
    tokenizer_train_mb: float = ranged(0.0, 0.0, 1e9)  # learn the tokenizer from at most this many MB of train text (0 = all of it)
    text_field: str = "text"  # field holding the text in .jsonl/.json records and --hf-dataset rows
    text_column: str = "text"  # column holding the text in .csv/.tsv/.parquet files
    txt_documents: Literal["file", "paragraph", "line"] = "file"  # what one document is in .txt/.md files
    hf_dataset: str = ""  # Hugging Face dataset NAME[:CONFIG] or a save_to_disk folder, read with `datasets`
    split: str = "train"  # split of --hf-dataset to read
    builtin: str = ""  # built-in corpus needing no download: python-docs (Python reference + stdlib docstrings, ~2 MB) or python (the same + stdlib source, ~12 MB)
    clean: list[str] = dataclasses.field(default_factory=list)  # cleaning steps: html whitespace lowercase accents short dedup compression stopwords (stopwords harms LM pre-training; for bag-of-words classifiers only)
    min_chars: int = ranged(32, 0, 10**9)  # `short` step: drop documents with fewer characters than this
    min_compression: float = ranged(0.1, 0.0, 1.0)  # `compression` step: drop text whose zlib size/raw size is below this (repetitive junk)
    max_compression: float = ranged(0.75, 0.0, 2.0)  # `compression` step: drop text whose zlib size/raw size is above this (random or encoded junk)
    val_fraction: float = ranged(0.1, 0.0, 0.99)  # fraction of pieces (documents or ~64 KiB blocks) held out for validation; ignored with --val
    block_chars: int = ranged(65536, 64, 1 << 30)  # documents longer than this many characters are cut into blocks at line ends
    shard_tokens: int = ranged(100_000_000, 1, 10**12)  # tokens per shard file
    batch_chars: int = ranged(2_000_000, 1, 10**9)  # characters encoded per batch (bounds memory; larger batches keep all cores busy)
    overwrite: bool = False  # replace an existing dataset at --out (the old one is kept until the new one is complete)

    def __post_init__(self) -> None:
        check_ranges(self)
        for name in ("tokenizer", "txt_documents"):  # argparse checks these choices; the Python API here
            allowed = typing.get_args(typing.get_type_hints(PrepareConfig)[name])
            if getattr(self, name) not in allowed:
                raise BudgetError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")


# --------------------------------------------------------------------------------------------------
# spool: length-prefixed cleaned pieces; flag bit 0 = last piece of its document

_REC = struct.Struct("<IB")


class _Spool:
    def __init__(self, path: Path):
        self.path = path
        self.fh = open(path, "wb", buffering=1 << 20)
        self.pieces = self.documents = self.bytes = 0

    def write(self, text: str, doc_end: bool) -> None:
        data = text.encode("utf-8")
        self.fh.write(_REC.pack(len(data), 1 if doc_end else 0))
        self.fh.write(data)
        self.pieces += int(bool(data))
        self.documents += int(doc_end)
        self.bytes += len(data)

    def close(self) -> None:
        self.fh.close()


def _read_spool(path: Path, batch_chars: int, limit_bytes: int = 0) -> Iterator[tuple[list[tuple[str, bool]], int]]:
    """(batch of (text, doc_end), its UTF-8 bytes), batches of about `batch_chars` bytes; stop
    after `limit_bytes` in all."""
    batch: list[tuple[str, bool]] = []
    size = total = 0
    with open(path, "rb", buffering=1 << 20) as fh:
        while True:
            head = fh.read(_REC.size)
            if len(head) < _REC.size:
                break
            n, flag = _REC.unpack(head)
            text = fh.read(n).decode("utf-8")
            batch.append((text, bool(flag & 1)))
            size += n
            total += n
            if size >= batch_chars:
                yield batch, size
                batch, size = [], 0
            if limit_bytes and total >= limit_bytes:
                break
    if batch:
        yield batch, size


# --------------------------------------------------------------------------------------------------
# pass 1: read, clean, split, spool


def _is_val(k: int, f: float) -> bool:
    return math.floor((k + 1) * f + 0.5) > math.floor(k * f + 0.5)


class _Splitter:
    """Routes cleaned pieces to the train/val spools and keeps every document's end-of-text mark,
    even when a filter drops the last piece of a document whose earlier pieces were kept."""

    def __init__(self, spools: dict[str, _Spool], cleaner, val_fraction: float | None, fixed: str | None):
        self.spools, self.cleaner = spools, cleaner
        self.val_fraction, self.fixed = val_fraction, fixed
        self.k = 0
        self.open_split: str | None = None  # split of the last kept piece of an unfinished document
        self.dropped: dict[str, int] = {}

    def add(self, piece: sources.Piece) -> None:
        text, why = self.cleaner(piece.text, piece.whole)
        if text is None:
            self.dropped[why] = self.dropped.get(why, 0) + 1
            if piece.doc_end and self.open_split is not None:
                self.spools[self.open_split].write("", True)  # close the document
                self.open_split = None
            return
        split = self.fixed or ("val" if _is_val(self.k, self.val_fraction or 0.0) else "train")
        self.k += 1
        if self.open_split is not None and self.open_split != split:
            # the document continues in the other split: end this split's run of it, so neither
            # stream ever glues text of two places together without a separator
            self.spools[self.open_split].write("", True)
        self.spools[split].write(text, piece.doc_end)
        self.open_split = None if piece.doc_end else split

    def feed(self, pieces: Iterator[sources.Piece], limit_bytes: int = 0) -> bool:
        """Add pieces; False once both spools together hold `limit_bytes` (0 = no limit)."""
        for piece in pieces:
            if limit_bytes and sum(sp.bytes for sp in self.spools.values()) >= limit_bytes:
                self.finish()
                return False
            self.add(piece)
        return True

    def finish(self) -> None:
        """Close a document cut short (by --max-mb) with its end-of-text mark."""
        if self.open_split is not None:
            self.spools[self.open_split].write("", True)
            self.open_split = None


def _builtin_pieces(name: str, block_chars: int, info: dict) -> Iterator[sources.Piece]:
    h = hashlib.sha256()
    n = size = 0
    for doc_name, text in builtin.builtin_documents(name):
        data = text.encode("utf-8")
        h.update(doc_name.encode() + b"\0" + data + b"\0")
        n, size = n + 1, size + len(data)
        yield from sources.pieces_of(text, block_chars)
    import platform

    info.update({"builtin": name, "python": platform.python_version(), "documents": n,
                 "bytes": size, "sha256": h.hexdigest()})


# --------------------------------------------------------------------------------------------------
# pass 3: encode


class _ShardSet:
    """Writes a split's tokens into numbered shards of at most `shard_tokens` tokens."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int):
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        folder.mkdir(parents=True, exist_ok=True)
        self.done: list[dict] = []
        self.writer: shards.ShardWriter | None = None

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self.writer is None:
                name = f"{len(self.done):06d}.bin"
                self.writer = shards.ShardWriter(self.folder / name, self.dtype)
            room = self.shard_tokens - self.writer.count
            self.writer.write(tokens[:room])
            tokens = tokens[room:]
            if self.writer.count >= self.shard_tokens:
                self._close()

    def _close(self) -> None:
        assert self.writer is not None
        self.writer.close()
        path = self.writer.path
        self.done.append({"file": f"{self.folder.name}/{path.name}", "tokens": self.writer.count,
                          "bytes": path.stat().st_size, "sha256": fsio.sha256_file(path)})
        self.writer = None

    def close(self) -> list[dict]:
        if self.writer is not None:
            self._close()
        return self.done


def _encode_split(tok, spool: Path, out: _ShardSet, eot: int, batch_chars: int, bar) -> int:
    """Encode one spool into shards; returns the token count."""
    from concurrent.futures import ThreadPoolExecutor

    dtype = out.dtype
    total = 0

    def encode(batch, nbytes):
        # encode_batch_fast: no offsets; the Rust side releases the GIL and uses every core
        return batch, nbytes, tok.encode_batch_fast([t for t, _ in batch], add_special_tokens=False)

    # one batch in flight while the previous one is converted and written
    with ThreadPoolExecutor(1) as pool:
        pending = None
        for batch, nbytes in _read_spool(spool, batch_chars):
            nxt = pool.submit(encode, batch, nbytes)
            if pending is not None:
                total += _write_batch(*pending.result(), out, eot, dtype, bar)
            pending = nxt
        if pending is not None:
            total += _write_batch(*pending.result(), out, eot, dtype, bar)
    return total


def _write_batch(batch, nbytes: int, encodings, out: _ShardSet, eot: int, dtype, bar) -> int:
    arrays = []
    for (text, doc_end), enc in zip(batch, encodings):
        arrays.append(np.asarray(enc.ids, dtype=dtype))
        if doc_end:
            arrays.append(np.asarray([eot], dtype=dtype))
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)
    out.write(tokens)
    if bar is not None:
        bar.advance(0, nbytes)
    return int(tokens.size)


# --------------------------------------------------------------------------------------------------
# output folder handling


def _dataset_folder(out: Path) -> str | None:
    """'dataset' for a folder `prepare` made (its marker, or a budgetlm manifest from before markers)."""
    made = fsio.read_marker(out)
    if made is None and (out / "manifest.json").is_file():
        try:
            shards.read_manifest(out)
            made = "dataset"
        except BudgetError:
            pass
    return made


# --------------------------------------------------------------------------------------------------
# the programmatic API


def prepare_dataset(inputs: list[str], out: str, cfg: PrepareConfig,
                    val_inputs: list[str] | None = None) -> dict:
    """Build a dataset folder at `out`; returns the summary that `prepare --json` prints."""
    t0 = time.perf_counter()
    if not out:
        raise BudgetError("--out DIR is required")
    out_path = Path(out).expanduser().absolute()
    inputs = list(inputs or [])
    names = _check_request(inputs, cfg)
    # fail before reading anything: a bad vocabulary size or an unreadable --tokenizer-from
    reused = toklib.load_tokenizer(cfg.tokenizer_from) if cfg.tokenizer_from else None
    if reused is None:
        toklib.check_vocab(cfg.tokenizer, cfg.vocab_size)
    cleaner_args = dict(min_chars=cfg.min_chars, min_compression=cfg.min_compression,
                        max_compression=cfg.max_compression)
    train_cleaner = clean.build_cleaner(names, **cleaner_args)
    files = sources.expand_inputs(inputs)
    val_files = sources.expand_inputs(val_inputs) if val_inputs else []
    guard = lambda: fsio.check_output(out_path, [*inputs, *(val_inputs or []), cfg.tokenizer_from],  # noqa: E731
                                      "dataset", overwrite=cfg.overwrite, made_by=_dataset_folder(out_path))
    guard()
    try:
        with _locked(out_path):
            guard()  # again under the lock: another prepare may have finished meanwhile
            fsio.remove_dead_temps(out_path)
            with fsio.atomic_dir(out_path, replace=True) as tmp:
                summary = _build(tmp, out_path, files, val_files, cfg, reused, train_cleaner,
                                 clean.build_cleaner(names, **cleaner_args), names, t0)
                fsio.write_marker(tmp, "dataset")
    except OSError as e:
        raise _write_error(e, out_path, 2 * sum(f.stat().st_size for f in files + val_files)) from None
    return summary


def _write_error(e: OSError, out: Path, need_bytes: int) -> BaseException:
    """A full disk, or a folder that cannot be written, as one line; anything else as it is."""
    import errno

    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BudgetError(f"cannot write {e.filename or out}: {e.strerror}; choose another --out")
    return fsio.space_error(e, out, need_bytes) or e


def _check_request(inputs: list[str], cfg: PrepareConfig) -> list[str]:
    """Refuse a request that cannot work before anything is read; the --clean step names."""
    check_ranges(cfg)  # again: a config's fields may have been changed after it was made
    names = [n for item in cfg.clean for n in item.split(",") if n]
    for n in names:
        if n not in clean.CLEAN_STEPS and Path(n).exists():
            raise BudgetError(f"--clean got {n!r}, which is an input path: put INPUT... before --clean")
    if not inputs and not cfg.builtin and not cfg.hf_dataset:
        raise BudgetError("nothing to prepare: give INPUT files/folders, --builtin NAME or --hf-dataset NAME")
    if cfg.builtin and cfg.builtin not in builtin.BUILTINS:
        raise BudgetError(f"unknown built-in corpus {cfg.builtin!r}: choose one of {', '.join(builtin.BUILTINS)}")
    return names


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold `fsio.FolderLock` on `out` while the dataset is built, so a second `prepare` into the same
    folder is refused instead of swapping its result over the first one's. The lock creates `out`
    when it is new; a failed build removes that folder, or the lock file from a folder that was
    there before, so a failure leaves `out` as it found it."""
    created, had_lock = not out.exists(), (out / fsio.LOCK).exists()
    with fsio.FolderLock(out):
        try:
            yield
        except BaseException:
            if not had_lock:
                (out / fsio.LOCK).unlink(missing_ok=True)
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise


def _read_pass(tmp: Path, files, val_files, cfg: PrepareConfig, train_cleaner, val_cleaner):
    """Pass 1: read, clean, split into train/val and spool the pieces; (spools, splitter, stats, inputs)."""
    opt = sources.ReadOptions(text_field=cfg.text_field, text_column=cfg.text_column,
                              txt_documents=cfg.txt_documents, block_chars=cfg.block_chars)
    stats = sources.Stats()
    spools = {s: _Spool(tmp / f"spool-{s}.bin") for s in shards.SPLITS}
    explicit_val = bool(val_files)
    main = _Splitter(spools, train_cleaner, None if explicit_val else cfg.val_fraction,
                     "train" if explicit_val else None)
    extra_inputs: list[dict] = []
    total_bytes = sum(f.stat().st_size for f in files + val_files)
    with ui.progress("reading", total=total_bytes or None, unit="bytes") as bar:
        advance = lambda p: bar.advance(0, p.stat().st_size)  # noqa: E731
        limit = int(cfg.max_mb * 1e6)
        more = main.feed(sources.read_files(files, opt, stats, on_file=advance), limit)
        if cfg.builtin and more:
            info: dict = {"builtin": cfg.builtin}
            more = main.feed(_builtin_pieces(cfg.builtin, cfg.block_chars, info), limit)
            extra_inputs.append(info)
        if cfg.hf_dataset and more:
            pieces, info = sources.read_hf(cfg.hf_dataset, cfg.split, opt)
            more = main.feed(pieces, limit)
            extra_inputs.append(info)
        if not more:
            ui.info(f"stopped reading at --max-mb {cfg.max_mb:g}")
        if explicit_val:
            val = _Splitter(spools, val_cleaner, None, "val")
            val.feed(sources.read_files(val_files, opt, stats, on_file=advance))
            for k, v in val.dropped.items():
                main.dropped[k] = main.dropped.get(k, 0) + v
    for sp in spools.values():
        sp.close()
    _check_read(spools, main, stats, cfg, explicit_val)
    return spools, main, stats, extra_inputs


def _check_read(spools, main: _Splitter, stats, cfg: PrepareConfig, explicit_val: bool) -> None:
    for path, reason in stats.skipped:
        ui.warn(f"skipped {path}: {reason}")
    if stats.replacements:
        ui.warn(f"{stats.replacements:,} invalid UTF-8 sequence(s) replaced by U+FFFD")
    if not spools["train"].bytes:
        what = "all inputs were skipped" if stats.skipped and not stats.files else "no text left"
        raise BudgetError(f"empty input: {what}"
                          + (" after cleaning" if main.dropped and what == "no text left" else ""))
    if explicit_val and not spools["val"].bytes:
        raise BudgetError("the --val inputs hold no text (after cleaning)")
    if not explicit_val and cfg.val_fraction > 0 and not spools["val"].pieces:
        ui.warn(f"validation split is empty: only {main.k} piece(s) of text; add text, lower "
                "--block-chars or give --val")


def _tokenizer_pass(train_spool, cfg: PrepareConfig, reused, clean_names: list[str]):
    """Pass 2: the reused tokenizer, or one learned on the train text; (tokenizer, kind, normalizes)."""
    normalizes: list[str] = []  # --clean steps the tokenizer itself applies to new text
    if reused is not None:
        tok = reused
        added = toklib.ensure_specials(tok)
        if added:
            ui.info(f"added special tokens to the reused tokenizer: {' '.join(added)}")
        norm = tok.normalizer
        if "lowercase" in clean_names and (norm is None or norm.normalize_str("A") != "a"):
            ui.warn("--clean lowercase, but the reused tokenizer keeps case: cased text given to the model "
                    "later (finetune, classify, serve) will not be lowercased")
        return tok, f"from:{toklib.tokenizer_kind(tok)}", normalizes
    kind = cfg.tokenizer
    limit = int(cfg.tokenizer_train_mb * 1e6)
    texts = (t for batch, _ in _read_spool(train_spool.path, 1 << 20, limit) for t, _ in batch)
    with ui.progress(f"training {kind} tokenizer", total=None, heartbeat=True):
        vocab = cfg.vocab_size or toklib.auto_vocab(kind, train_spool.bytes)
        tok = toklib.train_tokenizer(kind, texts if toklib.needs_training(kind) else None, vocab)
    normalizes = toklib.apply_cleaning(tok, clean_names)  # raw text later maps to the tokens learned here
    return tok, kind, normalizes


def _encode_pass(tmp: Path, tok, spools, ids: dict[str, int], dtype, cfg: PrepareConfig) -> dict[str, dict]:
    """Pass 3: encode each split's spool into token shards."""
    tok.encode_special_tokens = True  # "<|endoftext|>" inside the corpus is text, not a separator
    split_info: dict[str, dict] = {}
    total_text = spools["train"].bytes + spools["val"].bytes
    with ui.progress("tokenizing", total=total_text, unit="bytes") as bar:
        for split in shards.SPLITS:
            shard_set = _ShardSet(tmp / split, dtype, cfg.shard_tokens)
            n = _encode_split(tok, spools[split].path, shard_set, ids["eot"], cfg.batch_chars, bar)
            sp = spools[split]
            split_info[split] = {"documents": sp.documents, "pieces": sp.pieces, "bytes": sp.bytes,
                                 "tokens": n, "shards": shard_set.close()}
            sp.path.unlink()
    return split_info


def _build(tmp: Path, out_path: Path, files, val_files, cfg: PrepareConfig, reused, train_cleaner,
           val_cleaner, clean_names: list[str], t0: float) -> dict:
    spools, main, stats, extra_inputs = _read_pass(tmp, files, val_files, cfg, train_cleaner, val_cleaner)
    t_tok = time.perf_counter()
    tok, kind, normalizes = _tokenizer_pass(spools["train"], cfg, reused, clean_names)
    t_enc = time.perf_counter()
    ids = toklib.special_ids(tok)
    vocab_size = tok.get_vocab_size()
    dtype = shards.dtype_for_vocab(vocab_size)
    toklib.save_tokenizer(tok, tmp / "tokenizer.json")
    split_info = _encode_pass(tmp, tok, spools, ids, dtype, cfg)
    seconds = time.perf_counter() - t0
    total_text = sum(s["bytes"] for s in split_info.values())
    text_tokens = sum(s["tokens"] - s["documents"] for s in split_info.values())
    bytes_per_token = total_text / text_tokens if text_tokens else 0.0
    manifest = {
        "format": "budgetlm-dataset",
        "version": shards.MANIFEST_VERSION,
        "budgetlm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": [{"path": str(f), "sha256": fsio.sha256_file(f), "bytes": f.stat().st_size,
                    "split": "val" if f in val_files else "train"}
                   for f in files + val_files if str(f) in stats.files] + extra_inputs,
        "skipped": [{"path": p, "reason": r} for p, r in stats.skipped],
        "options": {**to_dict(cfg), "clean": clean_names},
        "tokenizer": {"kind": kind, "file": "tokenizer.json", "vocab_size": vocab_size, "special_ids": ids,
                      "from": cfg.tokenizer_from or None, "normalizes": normalizes},
        "eot_id": ids["eot"], "dtype": dtype.name, "splits": split_info, "bytes_per_token": bytes_per_token,
        "replacements": stats.replacements, "dropped": main.dropped, "seconds": seconds,
    }
    fsio.atomic_write_json(tmp / "manifest.json", manifest)
    per_split = lambda key: {s: split_info[s][key] for s in shards.SPLITS}  # noqa: E731
    return {
        "out": str(out_path), "documents": per_split("documents"), "bytes": per_split("bytes"),
        "tokens": per_split("tokens"), "bytes_per_token": round(bytes_per_token, 4), "vocab_size": vocab_size,
        "tokenizer": kind, "dtype": dtype.name, "shards": {s: len(split_info[s]["shards"]) for s in shards.SPLITS},
        "replacements": stats.replacements, "skipped_files": len(stats.skipped), "dropped": main.dropped,
        "read_seconds": round(t_tok - t0, 3), "tokenizer_seconds": round(t_enc - t_tok, 3),
        "encode_seconds": round(t0 + seconds - t_enc, 3),
        "seconds": round(seconds, 3), "mb_per_s": round(total_text / 1e6 / seconds, 3) if seconds > 0 else None,
    }
