"""Token shards: flat arrays of token ids behind a small header, read back through `np.memmap`.

File layout (little-endian), after the idea of modded-nanogpt's checked shard header:

    offset 0   8 bytes  magic  b"BLMTOKS\\0"
    offset 8   uint32   format version (1)
    offset 12  uint32   bytes per token id (2 = uint16, 4 = uint32)
    offset 16  uint64   number of tokens
    offset 24  40 bytes zero (reserved)
    offset 64  tokens

The reader checks magic, version, dtype and that the file holds exactly `count` tokens, so a
truncated or foreign file is refused with one clear line instead of silently training on garbage.

A dataset folder is `manifest.json`, `tokenizer.json`, `train/*.bin`, `val/*.bin`; `open_tokens`
gives one 1-D view over all shards of a split. The manifest records each shard's size and SHA-256;
`open_tokens` compares the size always and the checksum for shards up to `VERIFY_BYTES` (larger
ones: `Dataset.check(full=True)`), and `Dataset.check` refuses token ids beyond the vocabulary.
Datasets written before the checksums existed open with the header and size checks.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from budgetlm.config import BudgetError

MAGIC = b"BLMTOKS\0"
VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQ")  # magic, version, itemsize, count
DTYPES = {2: np.uint16, 4: np.uint32}
MANIFEST_VERSION = 1
SPLITS = ("train", "val")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _header(itemsize: int, count: int) -> bytes:
    return _HEADER.pack(MAGIC, VERSION, itemsize, count).ljust(HEADER_BYTES, b"\0")


class ShardWriter:
    """Append token arrays to one shard file; `close()` writes the final count and fsyncs."""

    def __init__(self, path: str | Path, dtype: np.dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._fh = open(self.path, "wb")
        self._fh.write(_header(self.dtype.itemsize, 0))

    def write(self, tokens: np.ndarray) -> None:
        arr = np.ascontiguousarray(tokens, dtype=self.dtype)
        self._fh.write(arr.tobytes())
        self.count += int(arr.size)

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.seek(0)
        self._fh.write(_header(self.dtype.itemsize, self.count))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def write_shard(path: str | Path, tokens: np.ndarray, dtype: np.dtype | None = None) -> None:
    """Write one whole shard (tests and small tools)."""
    w = ShardWriter(path, dtype if dtype is not None else np.asarray(tokens).dtype)
    w.write(np.asarray(tokens))
    w.close()


def read_header(path: str | Path) -> tuple[np.dtype, int]:
    """(dtype, token count) of a shard; BudgetError if the header or the file size is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as e:
        raise BudgetError(f"cannot read token shard {path}: {e.strerror or e}") from None
    if len(raw) < HEADER_BYTES:
        raise BudgetError(f"corrupt token shard {path}: file shorter than its {HEADER_BYTES}-byte header")
    magic, version, itemsize, count = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise BudgetError(f"corrupt token shard {path}: bad magic {magic!r} (not a budgetlm shard)")
    if version != VERSION:
        raise BudgetError(f"token shard {path} has format version {version}; this budgetlm reads {VERSION}")
    if itemsize not in DTYPES:
        raise BudgetError(f"corrupt token shard {path}: token size {itemsize} bytes (expected 2 or 4)")
    expected = HEADER_BYTES + count * itemsize
    if size != expected:
        raise BudgetError(
            f"corrupt token shard {path}: header says {count} tokens ({expected} bytes) "
            f"but the file has {size} bytes"
        )
    return np.dtype(DTYPES[itemsize]), int(count)


def open_shard(path: str | Path) -> np.ndarray:
    """Memory-map one shard's tokens (read-only, 1-D)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


class TokenView:
    """One contiguous, read-only 1-D view over several memory-mapped shards.

    Supports `len()`, integer indexing and step-1 slicing (which returns a NumPy array, copying
    only across a shard boundary), `.dtype`, `.shape` and `np.asarray(view)` (copies everything)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.dtype = parts[0].dtype if parts else np.dtype(np.uint16)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]),)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[start:stop][::step]
            if stop <= start:
                return np.zeros(0, dtype=self.dtype)
            i = int(np.searchsorted(self.starts, start, side="right")) - 1
            j = int(np.searchsorted(self.starts, stop, side="left")) - 1
            if i == j:
                off = self.starts[i]
                return self.parts[i][start - off : stop - off]
            chunks = []
            for k in range(i, j + 1):
                off = int(self.starts[k])
                a, b = max(start, off) - off, min(stop, int(self.starts[k + 1])) - off
                chunks.append(self.parts[k][a:b])
            return np.concatenate(chunks)
        idx = int(key)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"token index {key} out of range for {n} tokens")
        k = int(np.searchsorted(self.starts, idx, side="right")) - 1
        return self.parts[k][idx - self.starts[k]]

    def __array__(self, dtype=None, copy=None):
        arr = np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=self.dtype)
        return arr.astype(dtype) if dtype is not None else arr


# --------------------------------------------------------------------------------------------------
# dataset folders


def read_manifest(data_dir: str | Path) -> dict:
    """The dataset's manifest.json; BudgetError when the folder is not a complete dataset."""
    data_dir = Path(data_dir)
    path = data_dir / "manifest.json"
    if not data_dir.is_dir():
        raise BudgetError(f"dataset folder not found: {data_dir}")
    if not path.is_file():
        raise BudgetError(f"{data_dir} is not a prepared dataset (no manifest.json); run `budgetlm prepare`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BudgetError(f"cannot read {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "budgetlm-dataset":
        raise BudgetError(f"{path} is not a budgetlm dataset manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise BudgetError(
            f"{path} has manifest version {manifest.get('version')}; this budgetlm reads {MANIFEST_VERSION}"
        )
    _check_types(manifest, path)
    return manifest


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_types(manifest: dict, path: Path) -> None:
    """A manifest someone edited by hand (tokens as a string, a missing split, a shard outside the
    folder) is named corrupt, instead of failing somewhere later with a traceback."""
    def corrupt(what: str) -> BudgetError:
        return BudgetError(f"{path} is corrupt: {what}; prepare the dataset again")

    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict) or not _count(tok.get("vocab_size")) or tok["vocab_size"] < 1:
        raise corrupt("tokenizer.vocab_size must be a positive integer")
    if manifest.get("dtype") not in ("uint16", "uint32"):
        raise corrupt("dtype must be uint16 or uint32")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not isinstance(splits.get("train"), dict):
        raise corrupt("no 'splits' table with a train split")
    for name, info in splits.items():
        if not isinstance(info, dict) or not all(_count(info.get(k, 0)) for k in ("tokens", "bytes", "documents")):
            raise corrupt(f"split {name!r} must give tokens, bytes and documents as counts")
        shard_list = info.get("shards")
        if not isinstance(shard_list, list) or not all(_shard_entry_ok(sh) for sh in shard_list):
            raise corrupt(f"split {name!r} must list shards with a file inside the dataset folder and a "
                          "token count")


def _shard_entry_ok(shard) -> bool:
    if not isinstance(shard, dict) or not isinstance(shard.get("file"), str) or not _count(shard.get("tokens")):
        return False
    file = Path(shard["file"])
    return (not file.is_absolute() and ".." not in file.parts and _count(shard.get("bytes", 0))
            and isinstance(shard.get("sha256", ""), (str, type(None))))


# Shards up to this size are checked against the manifest's SHA-256 when opened (about 0.2 s per
# 100 MB); larger ones get the header and size checks only, and `Dataset.check(full=True)` checks them fully.
VERIFY_BYTES = 256 * 2**20


@functools.lru_cache(maxsize=256)
def _verified(path: str, mtime_ns: int, size: int, want: str) -> bool:
    from budgetlm.fsio import sha256_file

    return sha256_file(path) == want


def check_shard(path: Path, info: dict, full: bool = False) -> None:
    """Compare a shard with its manifest entry: size always, SHA-256 when small (or `full`).
    Datasets written before checksums existed have none and are taken as they are."""
    want = info.get("sha256")
    if not want:
        return
    try:
        st = path.stat()
    except OSError as e:
        raise BudgetError(f"cannot read token shard {path}: {e.strerror or e}; prepare the dataset again") from None
    if info.get("bytes") is not None and st.st_size != info["bytes"]:
        raise BudgetError(f"corrupt token shard {path}: {st.st_size} bytes, the manifest says {info['bytes']}; "
                          "prepare the dataset again")
    if (full or st.st_size <= VERIFY_BYTES) and not _verified(str(path), st.st_mtime_ns, st.st_size, want):
        raise BudgetError(f"corrupt token shard {path}: its contents do not match the manifest's checksum "
                          "(damaged or modified); prepare the dataset again")


def check_ids(tokens, vocab_size: int, where: str) -> None:
    """Refuse token ids beyond the vocabulary (a shard from another tokenizer, or damaged): the model's
    embedding would fail on them in the middle of a run. The message names the shard file when
    `tokens` are memory-mapped shards (`open_tokens`). A max over a memmap reads the file once."""
    for part in tokens.parts if isinstance(tokens, TokenView) else [tokens]:
        top = int(np.max(part)) if len(part) else -1
        if top >= vocab_size:
            shard = getattr(part, "filename", None)
            raise BudgetError(f"{f'token shard {shard} ({where})' if shard else where} holds token id {top}, "
                              f"beyond the tokenizer's {vocab_size} ids: the shards and tokenizer.json do not "
                              "belong together; prepare the dataset again")


def open_tokens(data_dir: str | Path, split: str):
    """All tokens of `split` ('train' or 'val') as one 1-D read-only array-like (uint16/uint32).

    One shard: the `np.memmap` itself. Several: a `TokenView`. Shards are checked against the
    manifest's token counts, so a shard swapped or cut after `prepare` is refused."""
    if split not in SPLITS:
        raise BudgetError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    info = manifest["splits"].get(split)
    if info is None:
        raise BudgetError(f"{data_dir} has no {split} split")
    parts = []
    for shard in info.get("shards", []):
        check_shard(data_dir / shard["file"], shard)
        arr = open_shard(data_dir / shard["file"])
        if len(arr) != shard["tokens"]:
            raise BudgetError(
                f"token shard {data_dir / shard['file']} holds {len(arr)} tokens, manifest says {shard['tokens']}"
            )
        parts.append(arr)
    if not parts:
        return np.zeros(0, dtype=np.dtype(manifest["dtype"]))
    if len(parts) == 1:
        return parts[0]
    return TokenView(parts)


@dataclass
class Dataset:
    """A prepared dataset folder (what `prepare` writes and `train`/`eval` read)."""

    path: Path  # the folder
    manifest: dict  # its manifest.json
    summary: dict = field(default_factory=dict)  # what `prepare` reported when it wrote the folder

    @classmethod
    def open(cls, path: str | Path) -> "Dataset":
        return cls(Path(path), read_manifest(path))

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    def tokenizer(self):
        from budgetlm.data.tokenizer import load_tokenizer

        return load_tokenizer(self.tokenizer_path)

    def tokens(self, split: str):
        return open_tokens(self.path, split)

    def check(self, full: bool = False) -> None:
        """Every shard against the manifest (`check_shard`: size, and the SHA-256 of small shards or,
        with `full`, of all) and every token id against the vocabulary (`check_ids`)."""
        for split in SPLITS:
            if split in self.manifest["splits"]:
                for shard in self.manifest["splits"][split]["shards"] if full else ():
                    check_shard(self.path / shard["file"], shard, full=True)
                check_ids(self.tokens(split), self.vocab_size, f"the {split} split of {self.path}")

    def split_bytes(self, split: str) -> int:
        """UTF-8 bytes of the split's text (0 when the manifest does not say)."""
        return int(self.manifest["splits"].get(split, {}).get("bytes", 0) or 0)
