"""Read raw text from files, folders, Hugging Face datasets and the built-in corpus, as a stream.

Everything here yields `Piece`s: a document, or a block of at most `block_chars` characters of a
longer document, cut at a line boundary. Pieces keep memory bounded (a 1 GB text file is never read
whole), let tokenization work on batches of similar size, and are the unit of the train/val split,
so even a corpus of one long file gets a validation split. `doc_end` marks the last piece of a
document (the end-of-text token goes after it); `whole` marks a document that fits in one piece
(document-level filters such as `short` only judge those).

Formats are chosen by file suffix through the `READERS` registry; `.gz`, `.xz`, `.bz2` and `.zst`
are opened transparently through `OPENERS`. Invalid UTF-8 is replaced with U+FFFD and counted
(`Stats.replacements`); a file with more than `MAX_REPLACED_FRACTION` of its characters replaced,
or with a UTF-16/UTF-32 byte-order mark, is refused (it is in another encoding); other files with NUL
bytes in their first KB are skipped as binary.

`json_records` is the one JSON reader and `load_hf_split` the one Hugging Face dataset reader of
budgetlm: the labelled-data readers (`budgetlm.labelled`) use them too.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import dataclasses
import gzip
import io
import json
import lzma
import sys
import zlib
from pathlib import Path
from typing import Any, IO, Callable, Iterator

from budgetlm.config import BudgetError


@dataclasses.dataclass
class Piece:
    text: str  # a document or a block of one
    doc_end: bool = True  # last piece of its document: the end-of-text token follows it
    whole: bool = True  # the document is this one piece


@dataclasses.dataclass
class ReadOptions:
    text_field: str = "text"  # field holding the text in .jsonl/.json records and HF datasets
    text_column: str = "text"  # column holding the text in .csv/.tsv/.parquet files
    txt_documents: str = "file"  # what a document is in .txt/.md files: file, paragraph or line
    block_chars: int = 65536  # longer documents are cut into blocks of about this many characters


@dataclasses.dataclass
class Stats:
    replacements: int = 0  # invalid UTF-8 sequences replaced by U+FFFD
    skipped: list = dataclasses.field(default_factory=list)  # (path, reason) of skipped files
    files: list = dataclasses.field(default_factory=list)  # paths read


# --------------------------------------------------------------------------------------------------
# decoding: count replacements through a registered codec error handler

_REPLACED = [0]


def _count_and_replace(err: UnicodeDecodeError):
    _REPLACED[0] += 1
    return "\ufffd", err.end


codecs.register_error("budgetlm-replace", _count_and_replace)


def _zst_open(path: Path) -> IO[bytes]:
    try:
        import zstandard
    except ImportError:
        raise BudgetError(f"{path}: reading .zst needs the zstandard package (pip install zstandard)") from None
    fh = open(path, "rb")
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh, closefd=True))


def _read_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this file is damaged" (bad or truncated compressed data, I/O)."""
    errors: list[type[BaseException]] = [EOFError, OSError, lzma.LZMAError, zlib.error]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


READ_ERRORS = _read_errors()


@contextlib.contextmanager
def damaged_file_errors(path: Path) -> Iterator[None]:
    """Turn a damaged file's error (bad or truncated compressed data, I/O) into a one-line BudgetError."""
    try:
        yield
    except READ_ERRORS as e:
        raise BudgetError(f"cannot read {path}: {e}") from None

# compression suffix -> binary opener
OPENERS: dict[str, Callable[[Path], IO[bytes]]] = {
    ".gz": lambda p: gzip.open(p, "rb"),
    ".xz": lambda p: lzma.open(p, "rb"),
    ".bz2": lambda p: bz2.open(p, "rb"),
    ".zst": _zst_open,
}


def split_suffix(path: Path) -> tuple[str, str]:
    """('.jsonl', '.gz') for data.jsonl.gz; ('.txt', '') for a.txt."""
    suffixes = [s.lower() for s in path.suffixes]
    comp = suffixes[-1] if suffixes and suffixes[-1] in OPENERS else ""
    rest = suffixes[:-1] if comp else suffixes
    return (rest[-1] if rest else ""), comp


def open_binary(path: Path) -> IO[bytes]:
    _, comp = split_suffix(path)
    try:
        return OPENERS[comp](path) if comp else open(path, "rb")
    except OSError as e:
        raise BudgetError(f"cannot open {path}: {e.strerror or e}") from None


# Text that is not UTF-8 in a way replacing a few bytes cannot repair: refused with what to do.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
              (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))

# A file more than this fraction of whose characters are replacements is in another encoding (or is
# binary): Latin-1 prose has a few percent of bytes above 127, each one replacement; Greek or
# Cyrillic in an 8-bit code page, Shift-JIS, GBK or random bytes have most of theirs invalid.
MAX_REPLACED_FRACTION = 0.25


def _wide_encoding(head: bytes) -> str | None:
    """'UTF-16' or 'UTF-32' when `head` starts with that encoding's byte-order mark."""
    return next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)


def _not_utf8(path: Path, what: str, encoding: str) -> BudgetError:
    return BudgetError(f"{path} is {what}: budgetlm reads UTF-8; convert it, e.g. "
                       f"iconv -f {encoding} -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}")


def open_text(path: Path, newline: str | None = "") -> IO[str]:
    """UTF-8 text (BOM dropped), invalid bytes replaced and counted. UTF-16/32 (a BOM, or NUL
    bytes at the start) is refused with a one-line error: read as UTF-8 it would be all garbage."""
    raw = open_binary(path)
    head = raw.peek(1024)[:1024] if hasattr(raw, "peek") else b""
    wide = _wide_encoding(head)
    if wide or b"\x00" in head:
        raw.close()
        raise _not_utf8(path, f"{wide} text" if wide else "not UTF-8 text (it holds NUL bytes)", wide or "UTF-16")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="budgetlm-replace", newline=newline)


def replacements_so_far() -> int:
    """Invalid UTF-8 sequences replaced by `open_text` readers in this process so far."""
    return _REPLACED[0]


def check_decoded(path: Path, replaced: int, chars: int) -> None:
    """Refuse a file whose text is mostly replacement characters (`MAX_REPLACED_FRACTION`): it is in
    another encoding, and replacing its bytes would keep nothing of it."""
    if replaced and replaced > MAX_REPLACED_FRACTION * chars:
        share = f"{min(1.0, replaced / max(chars, 1)):.0%}"
        raise _not_utf8(path, f"not UTF-8 text ({share} of its characters are invalid UTF-8; another "
                        "encoding such as Latin-1, a code page or Shift-JIS, or binary data)", "ENCODING")


def looks_binary(path: Path) -> bool:
    """NUL bytes in the first KB (after decompression) mean this is not UTF-8 text."""
    with damaged_file_errors(path), open_binary(path) as fh:
        head = fh.read(1024)
    return b"\0" in head


# --------------------------------------------------------------------------------------------------
# documents -> pieces


def pieces_of(text: str, block_chars: int) -> Iterator[Piece]:
    """Cut a document into pieces of about `block_chars` characters at line boundaries."""
    if len(text) <= block_chars:
        if text.strip():
            yield Piece(text, True, True)
        return
    start, n = 0, len(text)
    while start < n:
        stop = min(start + block_chars, n)
        if stop < n:
            nl = text.rfind("\n", start + block_chars // 2, stop)
            stop = nl + 1 if nl >= 0 else stop
        yield Piece(text[start:stop], stop >= n, False)
        start = stop


def _stream_pieces(lines: Iterator[str], block_chars: int) -> Iterator[Piece]:
    """One document from a stream of lines, in pieces, without holding more than a block."""
    buf: list[str] = []
    size = 0
    pending: str | None = None
    for line in lines:
        buf.append(line)
        size += len(line)
        if size >= block_chars:
            if pending is not None:
                yield Piece(pending, False, False)
            pending, buf, size = "".join(buf), [], 0
    rest = "".join(buf)
    if pending is None:
        if rest.strip():
            yield Piece(rest, True, True)
    elif rest.strip():
        yield Piece(pending, False, False)
        yield Piece(rest, True, False)
    else:
        yield Piece(pending + rest, True, False)


def _limited_lines(fh: IO[str], limit: int) -> Iterator[str]:
    while True:
        line = fh.readline(limit)  # bounded even for a file that is one huge line
        if not line:
            return
        yield line


def _blank_line_docs(lines: Iterator[str]) -> Iterator[str]:
    buf: list[str] = []
    for line in lines:
        if line.strip():
            buf.append(line)
        elif buf:
            yield "".join(buf)
            buf = []
    if buf:
        yield "".join(buf)


def _read_txt(path: Path, opt: ReadOptions) -> Iterator[Piece]:
    with open_text(path) as fh:
        lines = _limited_lines(fh, opt.block_chars)
        if opt.txt_documents == "file":
            yield from _stream_pieces(lines, opt.block_chars)
        elif opt.txt_documents == "paragraph":
            for doc in _blank_line_docs(lines):
                yield from pieces_of(doc, opt.block_chars)
        else:  # line
            for line in lines:
                yield from pieces_of(line.rstrip("\r\n"), opt.block_chars)


def _record_text(rec, field: str, where: str, flag: str):
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        raise BudgetError(f"{where}: expected a JSON object with a {field!r} field, got {type(rec).__name__}")
    if field not in rec:
        fields = ", ".join(list(rec)[:10]) or "none"
        raise BudgetError(f"{where}: no field {field!r} (fields: {fields}); choose one with {flag}")
    value = rec[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BudgetError(f"{where}: field {field!r} is a {type(value).__name__}, not text")
    return value


def json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a .jsonl file (one JSON value per line; blank lines skipped)
    or of a .json file holding one array, plain or compressed. `where` names the file and line (or
    item) for error messages; invalid JSON is a one-line BudgetError naming it. The one JSON reader of
    budgetlm: `prepare` and the labelled-data readers both use it."""
    with open_text(path, newline=None) as fh:
        first = ""
        while True:  # a .json file holding one array is read whole; JSON lines stream
            ch = fh.read(1)
            if not ch or not ch.isspace():
                first = ch
                break
        if first == "[":
            try:
                records = json.loads("[" + fh.read())
            except ValueError as e:
                raise BudgetError(f"{path}: invalid JSON: {e}") from None
            for i, rec in enumerate(records):
                yield f"{path}: item {i}", rec
            return
        for lineno, line in enumerate(_chain_first(first, fh), 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except ValueError as e:
                raise BudgetError(f"{path}:{lineno}: invalid JSON ({e})") from None


def _read_jsonl(path: Path, opt: ReadOptions) -> Iterator[Piece]:
    for where, rec in json_records(path):
        yield from pieces_of(_record_text(rec, opt.text_field, where, "--text-field"), opt.block_chars)


def _chain_first(first: str, fh: IO[str]) -> Iterator[str]:
    line = fh.readline()
    yield first + line
    yield from fh


def _read_csv(path: Path, opt: ReadOptions, delimiter: str) -> Iterator[Piece]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # GLUE-style .tsv files are not quoted: a quote character is just text there
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with open_text(path, newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            return
        if opt.text_column not in header:
            cols = ", ".join(header[:10])
            raise BudgetError(f"{path}:1: no column {opt.text_column!r} (columns: {cols}); "
                              "choose one with --text-column")
        col = header.index(opt.text_column)
        for row in reader:
            if not row:
                continue
            if col >= len(row):
                raise BudgetError(f"{path}:{reader.line_num}: row has {len(row)} fields, "
                                  f"no value for column {opt.text_column!r}")
            yield from pieces_of(row[col], opt.block_chars)


def _read_parquet(path: Path, opt: ReadOptions) -> Iterator[Piece]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BudgetError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    _, comp = split_suffix(path)
    src = io.BytesIO(open_binary(path).read()) if comp else str(path)  # parquet needs seeking
    try:
        pf = pq.ParquetFile(src)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise BudgetError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if opt.text_column not in names:
        raise BudgetError(f"{path}: no column {opt.text_column!r} (columns: {', '.join(names[:10])}); "
                          "choose one with --text-column")
    for batch in pf.iter_batches(columns=[opt.text_column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value:
                yield from pieces_of(str(value), opt.block_chars)


# format suffix -> reader(path, options) -> pieces; "" (no/unknown suffix, named explicitly) is text
READERS: dict[str, Callable[[Path, ReadOptions], Iterator[Piece]]] = {
    ".txt": _read_txt,
    ".md": _read_txt,
    ".text": _read_txt,
    ".jsonl": _read_jsonl,
    ".json": _read_jsonl,
    ".csv": lambda p, o: _read_csv(p, o, ","),
    ".tsv": lambda p, o: _read_csv(p, o, "\t"),
    ".parquet": _read_parquet,
}
NO_BINARY_CHECK = {".parquet"}


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files and folders (recursive, sorted, only known suffixes) -> files. Missing path: error."""
    files: list[Path] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if not p.exists():
            raise BudgetError(f"input not found: {raw}")
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and split_suffix(f)[0] in READERS
            )
            if not found:
                raise BudgetError(f"no readable files in {raw} (looked for {', '.join(READERS)}, "
                                  f"optionally {', '.join(OPENERS)})")
            files.extend(found)
        else:
            files.append(p)
    return files


def read_files(files: list[Path], opt: ReadOptions, stats: Stats,
               on_file: Callable[[Path], None] | None = None) -> Iterator[Piece]:
    """Pieces from each file in order. Binary files are skipped and recorded in `stats`; UTF-16/32
    text and files that are mostly invalid UTF-8 are refused (`check_decoded`)."""
    for path in files:
        fmt, _ = split_suffix(path)
        if fmt not in NO_BINARY_CHECK and looks_binary(path):
            with open_binary(path) as fh:
                wide = _wide_encoding(fh.read(4))
            if wide:
                raise _not_utf8(path, f"{wide} text", wide)
            stats.skipped.append((str(path), "binary (NUL bytes in the first KB)"))
        else:
            stats.files.append(str(path))  # listed even when the reader stops early (--max-mb)
            yield from _checked_pieces(path, READERS.get(fmt, _read_txt)(path, opt), stats)
        if on_file:
            on_file(path)


def _checked_pieces(path: Path, pieces: Iterator[Piece], stats: Stats) -> Iterator[Piece]:
    """`pieces` of one file, its replacements counted into `stats`; a file that turns out to be mostly
    replacement characters is refused after its first 64 Ki characters, or at its end if shorter."""
    start = before = _REPLACED[0]
    chars, judged = 0, False
    with damaged_file_errors(path):
        for piece in pieces:
            stats.replacements += _REPLACED[0] - before
            before = _REPLACED[0]
            chars += len(piece.text)
            if not judged and chars >= 65536:
                check_decoded(path, _REPLACED[0] - start, chars)
                judged = True
            yield piece
    stats.replacements += _REPLACED[0] - before
    if not judged:
        check_decoded(path, _REPLACED[0] - start, chars)


# --------------------------------------------------------------------------------------------------
# Hugging Face datasets


def load_hf_split(spec: str, split: str):
    """One split of a Hugging Face dataset as a `datasets.Dataset`: a `save_to_disk` folder (of a
    DatasetDict or of a single Dataset) or a hub name `NAME[:CONFIG]` (cached or reachable). The one
    HF-dataset reader of budgetlm: `prepare` and the labelled-data readers both use it."""
    try:
        import datasets
    except ImportError:
        raise BudgetError("--hf-dataset needs the datasets package (pip install 'budgetlm[hf]')") from None
    path = Path(spec).expanduser()
    saved = path.is_dir() and any((path / f).exists() for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise BudgetError(f"{spec} has no split {split!r} (splits: {', '.join(ds)})")
                ds = ds[split]
            return ds
        name, _, config = spec.partition(":")  # a hub name, or a folder of data files
        return datasets.load_dataset(str(path) if path.is_dir() else name, config or None, split=split)
    except BudgetError:
        raise
    except Exception as e:  # noqa: BLE001 - offline, missing, malformed: all one message
        raise BudgetError(f"cannot load Hugging Face dataset {spec!r} split {split!r}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def read_hf(spec: str, split: str, opt: ReadOptions) -> tuple[Iterator[Piece], dict]:
    """A Hugging Face dataset split (`load_hf_split`) -> pieces of its text field."""
    ds = load_hf_split(spec, split)
    if opt.text_field not in ds.column_names:
        raise BudgetError(f"{spec}: no field {opt.text_field!r} (fields: {', '.join(ds.column_names)}); "
                          "choose one with --text-field")
    info = {"hf_dataset": spec, "split": split, "rows": len(ds),
            "fingerprint": getattr(ds, "_fingerprint", None)}

    def gen() -> Iterator[Piece]:
        for batch in ds.select_columns([opt.text_field]).iter(batch_size=1024):
            for text in batch[opt.text_field]:
                if text:
                    yield from pieces_of(str(text), opt.block_chars)

    return gen(), info
