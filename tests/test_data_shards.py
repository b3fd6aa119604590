"""Token shards: round trip, header checks, multi-shard views and manifest validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from budgetlm.config import BudgetError
from budgetlm.data import shards


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_round_trip(tmp_path, dtype):
    tokens = np.arange(1000, dtype=dtype) * 7
    shards.write_shard(tmp_path / "s.bin", tokens)
    got = shards.open_shard(tmp_path / "s.bin")
    assert isinstance(got, np.memmap) and got.dtype == dtype
    np.testing.assert_array_equal(got, tokens)
    assert shards.read_header(tmp_path / "s.bin") == (np.dtype(dtype), 1000)


def test_dtype_for_vocab():
    assert shards.dtype_for_vocab(65536) == np.uint16
    assert shards.dtype_for_vocab(65537) == np.uint32


def _corrupt(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("what,offset,data,match", [
    ("magic", 0, b"GARBAGE!", "bad magic"),
    ("version", 8, (99).to_bytes(4, "little"), "format version 99"),
    ("itemsize", 12, (3).to_bytes(4, "little"), "token size 3"),
    ("count", 16, (5000).to_bytes(8, "little"), "header says 5000 tokens"),
])
def test_corrupt_header_is_refused(tmp_path, what, offset, data, match):
    p = tmp_path / "s.bin"
    shards.write_shard(p, np.arange(100, dtype=np.uint16))
    _corrupt(p, offset, data)
    with pytest.raises(BudgetError, match=f"{match}"):
        shards.open_shard(p)


def test_truncated_file_is_refused(tmp_path):
    p = tmp_path / "s.bin"
    shards.write_shard(p, np.arange(100, dtype=np.uint16))
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(BudgetError, match="corrupt token shard"):
        shards.open_shard(p)
    p.write_bytes(b"BLM")
    with pytest.raises(BudgetError, match="shorter than its 64-byte header"):
        shards.open_shard(p)


def _dataset(tmp_path, parts):
    (tmp_path / "train").mkdir()
    info = []
    for i, part in enumerate(parts):
        shards.write_shard(tmp_path / "train" / f"{i:06d}.bin", part)
        info.append({"file": f"train/{i:06d}.bin", "tokens": len(part)})
    manifest = {"format": "budgetlm-dataset", "version": 1, "dtype": "uint16", "tokenizer": {"vocab_size": 64},
                "splits": {"train": {"shards": info}, "val": {"shards": []}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_open_tokens_spans_shards(tmp_path):
    parts = [np.arange(0, 10, dtype=np.uint16), np.arange(10, 25, dtype=np.uint16),
             np.arange(25, 30, dtype=np.uint16)]
    _dataset(tmp_path, parts)
    view = shards.open_tokens(tmp_path, "train")
    full = np.arange(30)
    assert len(view) == 30 and view.dtype == np.uint16 and view.shape == (30,)
    for a, b in [(0, 30), (3, 8), (8, 12), (5, 27), (10, 25), (29, 30), (12, 12)]:
        np.testing.assert_array_equal(view[a:b], full[a:b])
    assert view[-1] == 29 and view[10] == 10
    np.testing.assert_array_equal(view[::7], full[::7])
    np.testing.assert_array_equal(np.asarray(view), full)
    with pytest.raises(IndexError):
        view[30]
    assert len(shards.open_tokens(tmp_path, "val")) == 0


def test_open_tokens_single_shard_is_a_memmap(tmp_path):
    _dataset(tmp_path, [np.arange(5, dtype=np.uint16)])
    assert isinstance(shards.open_tokens(tmp_path, "train"), np.memmap)


def test_shard_swapped_after_prepare_is_refused(tmp_path):
    _dataset(tmp_path, [np.arange(5, dtype=np.uint16)])
    shards.write_shard(tmp_path / "train" / "000000.bin", np.arange(7, dtype=np.uint16))
    with pytest.raises(BudgetError, match="holds 7 tokens, manifest says 5"):
        shards.open_tokens(tmp_path, "train")


def test_manifest_errors(tmp_path):
    with pytest.raises(BudgetError, match="not found"):
        shards.read_manifest(tmp_path / "none")
    with pytest.raises(BudgetError, match="no manifest.json"):
        shards.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2")
    with pytest.raises(BudgetError, match="cannot read"):
        shards.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(BudgetError, match="not a budgetlm dataset manifest"):
        shards.read_manifest(tmp_path)
    with pytest.raises(BudgetError, match="unknown split 'test'"):
        shards.open_tokens(tmp_path, "test")


def _edit(tmp_path, change):
    m = json.loads((tmp_path / "manifest.json").read_text())
    change(m)
    (tmp_path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("what, change", [
    ("shard tokens as a string", lambda m: m["splits"]["train"]["shards"][0].update(tokens="many")),
    ("split tokens as a string", lambda m: m["splits"]["train"].update(tokens="5")),
    ("negative bytes", lambda m: m["splits"]["train"].update(bytes=-1)),
    ("a shard outside the folder", lambda m: m["splits"]["train"]["shards"][0].update(file="../x.bin")),
    ("an absolute shard path", lambda m: m["splits"]["train"]["shards"][0].update(file="/etc/hostname")),
    ("a checksum that is a number", lambda m: m["splits"]["train"]["shards"][0].update(sha256=5)),
    ("no train split", lambda m: m["splits"].pop("train")),
    ("vocab_size as a bool", lambda m: m["tokenizer"].update(vocab_size=True)),
    ("an unknown dtype", lambda m: m.update(dtype="float32")),
])
def test_hand_edited_manifest_is_named_corrupt(tmp_path, what, change):
    _dataset(tmp_path, [np.arange(5, dtype=np.uint16)])
    _edit(tmp_path, change)
    with pytest.raises(BudgetError, match=r"manifest.json is corrupt: .*; prepare the dataset again"):
        shards.read_manifest(tmp_path)


def _checked_dataset(tmp_path, tokens):
    from budgetlm.fsio import sha256_file

    manifest = _dataset(tmp_path, [tokens])
    shard = tmp_path / "train" / "000000.bin"
    manifest["splits"]["train"]["shards"][0].update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return shard


def test_shard_checksum_and_size_are_checked_on_open(tmp_path):
    shard = _checked_dataset(tmp_path, np.arange(50, dtype=np.uint16))
    assert len(shards.open_tokens(tmp_path, "train")) == 50
    raw = bytearray(shard.read_bytes())
    raw[80] ^= 1  # one flipped bit in the token data: header and size still agree
    shard.write_bytes(bytes(raw))
    with pytest.raises(BudgetError, match="corrupt token shard .*000000.bin: its contents do not match"):
        shards.open_tokens(tmp_path, "train")
    shard.write_bytes(bytes(raw) + b"\0\0")
    with pytest.raises(BudgetError, match=r"corrupt token shard .*: 166 bytes, the manifest says 164"):
        shards.open_tokens(tmp_path, "train")
    shard.unlink()
    with pytest.raises(BudgetError, match="cannot read token shard .*000000.bin"):
        shards.open_tokens(tmp_path, "train")


def test_large_shards_get_the_fast_check_on_open_and_the_full_one_on_request(tmp_path, monkeypatch):
    shard = _checked_dataset(tmp_path, np.arange(50, dtype=np.uint16))
    raw = bytearray(shard.read_bytes())
    raw[80] ^= 1
    shard.write_bytes(bytes(raw))
    monkeypatch.setattr(shards, "VERIFY_BYTES", 100)  # this shard now counts as large
    assert len(shards.open_tokens(tmp_path, "train")) == 50  # header and size only
    with pytest.raises(BudgetError, match="do not match the manifest's checksum"):
        shards.Dataset.open(tmp_path).check(full=True)


def test_datasets_written_before_checksums_still_open(tmp_path):
    _dataset(tmp_path, [np.arange(5, dtype=np.uint16)])  # entries without bytes or sha256
    assert list(shards.Dataset.open(tmp_path).tokens("train")) == [0, 1, 2, 3, 4]


def test_token_ids_beyond_the_vocabulary_are_refused_naming_the_shard(tmp_path):
    _dataset(tmp_path, [np.arange(10, dtype=np.uint16), np.array([3, 64, 5], dtype=np.uint16)])
    ds = shards.Dataset.open(tmp_path)  # vocab_size 64: ids 0-63
    with pytest.raises(BudgetError, match=r"token shard .*train/000001.bin \(the train split of .*\) holds token "
                                          r"id 64, beyond the tokenizer's 64 ids"):
        ds.check()
    shards.check_ids(ds.tokens("train"), 65, "fine")
    with pytest.raises(BudgetError, match="^ids holds token id 9"):
        shards.check_ids(np.arange(10), 9, "ids")
