"""`budgetlm prepare` end to end: manifest counts, split, tokenizers, CLI contract and bad inputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from budgetlm.cli import main
from budgetlm.config import BudgetError
from budgetlm.data import shards, tokenizer as toklib
from budgetlm.data.prepare import PrepareConfig, _is_val, prepare_dataset
from data_helpers import documents, write_txt_folder


def jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d}) + "\n" for d in docs), encoding="utf-8")
    return path


def cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main(["prepare", *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def decode_docs(out: Path, split: str) -> list[str]:
    tok = toklib.load_tokenizer(out)
    ids = np.asarray(shards.open_tokens(out, split)).tolist()
    eot = toklib.special_ids(tok)["eot"]
    docs, cur = [], []
    for i in ids:
        if i == eot:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    assert not cur, "every split ends with an end-of-text token"
    return docs


# --------------------------------------------------------------------------------------------------
# manifest, counts and the split


def test_cli_json_summary_and_manifest_counts(tmp_path, capsys):
    docs = documents(40, seed=3)
    src = jsonl(tmp_path / "d.jsonl", docs)
    out = tmp_path / "ds"
    code, summary, err = cli(capsys, str(src), "--out", str(out), "--tokenizer", "byte")
    assert code == 0, err
    for key in ("out", "documents", "bytes", "tokens", "bytes_per_token", "vocab_size", "seconds"):
        assert key in summary
    assert summary["out"] == str(out)
    m = shards.read_manifest(out)
    assert sorted(p.name for p in out.iterdir()) == [".budgetlm.json", "manifest.json", "tokenizer.json", "train", "val"]
    # documents: 40 in total, 4 in val (round(40 * 0.1)), every one ended by one EOT
    assert summary["documents"] == {"train": 36, "val": 4}
    all_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert summary["bytes"]["train"] + summary["bytes"]["val"] == all_bytes
    for split in shards.SPLITS:
        tokens = np.asarray(shards.open_tokens(out, split))
        assert len(tokens) == summary["tokens"][split] == m["splits"][split]["tokens"]
        assert int((tokens == m["eot_id"]).sum()) == summary["documents"][split]
        # byte tokenizer: one token per byte plus one EOT per document
        assert summary["tokens"][split] == summary["bytes"][split] + summary["documents"][split]
    assert summary["bytes_per_token"] == 1.0
    assert m["inputs"][0]["path"].endswith("d.jsonl") and len(m["inputs"][0]["sha256"]) == 64
    assert m["inputs"][0]["bytes"] == src.stat().st_size
    assert m["tokenizer"]["special_ids"]["eot"] == m["eot_id"] == 256
    assert m["dtype"] == "uint16" and m["options"]["tokenizer"] == "byte"
    # the documents come back exactly, in order, split between train and val
    assert sorted(decode_docs(out, "train") + decode_docs(out, "val")) == sorted(docs)


def test_split_is_deterministic_and_exact():
    flags = [_is_val(k, 0.1) for k in range(1000)]
    assert sum(flags) == 100 and flags == [_is_val(k, 0.1) for k in range(1000)]
    assert sum(_is_val(k, 0.25) for k in range(8)) == 2
    assert not any(_is_val(k, 0.0) for k in range(100))


def test_same_inputs_give_identical_datasets(tmp_path):
    folder = tmp_path / "src"
    write_txt_folder(folder, n=30)
    cfg = PrepareConfig(tokenizer="bpe", vocab_size=300, val_fraction=0.2)
    a = prepare_dataset([str(folder)], str(tmp_path / "a"), cfg)
    b = prepare_dataset([str(folder)], str(tmp_path / "b"), cfg)
    assert a["tokens"] == b["tokens"] and a["documents"] == b["documents"]
    assert a["documents"]["val"] == 6
    for split in shards.SPLITS:
        np.testing.assert_array_equal(shards.open_tokens(tmp_path / "a", split),
                                      shards.open_tokens(tmp_path / "b", split))
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_long_document_split_into_blocks_keeps_separators(tmp_path):
    # one long file: its blocks are the split unit, so a validation split exists
    lines = [f"Line {i}: " + " ".join(documents(1, seed=i, sentences=1)) + "\n" for i in range(400)]
    src = tmp_path / "book.txt"
    src.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "ds"
    s = prepare_dataset([str(src)], str(out), PrepareConfig(tokenizer="byte", block_chars=2000))
    assert s["bytes"]["val"] > 0 and s["bytes"]["train"] > 0
    assert s["bytes"]["train"] + s["bytes"]["val"] == len("".join(lines).encode())
    train, val = decode_docs(out, "train"), decode_docs(out, "val")
    # every run of consecutive blocks is closed by an EOT in its own split; nothing is lost
    joined = sorted(train + val, key=lambda t: int(t.split(":")[0].split()[1]))
    assert "".join(joined) == "".join(lines)


def test_explicit_val_inputs(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", documents(10, seed=1))
    val = jsonl(tmp_path / "val.jsonl", documents(3, seed=2))
    out = tmp_path / "ds"
    s = prepare_dataset([str(train)], str(out), PrepareConfig(tokenizer="byte"), val_inputs=[str(val)])
    assert s["documents"] == {"train": 10, "val": 3}
    assert decode_docs(out, "val") == documents(3, seed=2)
    assert [i["split"] for i in shards.read_manifest(out)["inputs"]] == ["train", "val"]


def test_several_shards(tmp_path):
    src = jsonl(tmp_path / "d.jsonl", documents(20))
    out = tmp_path / "ds"
    s = prepare_dataset([str(src)], str(out), PrepareConfig(tokenizer="byte", shard_tokens=500, batch_chars=300))
    m = shards.read_manifest(out)
    assert s["shards"]["train"] == len(m["splits"]["train"]["shards"]) > 3
    assert all(sh["tokens"] == 500 for sh in m["splits"]["train"]["shards"][:-1])
    view = shards.open_tokens(out, "train")
    assert len(view) == s["tokens"]["train"]
    assert sorted(decode_docs(out, "train") + decode_docs(out, "val")) == sorted(documents(20))


# --------------------------------------------------------------------------------------------------
# tokenizers and cleaning through prepare


@pytest.mark.parametrize("kind", sorted(toklib.TOKENIZERS))
def test_each_tokenizer_kind(tmp_path, kind):
    folder = tmp_path / "src"
    write_txt_folder(folder, n=20)
    out = tmp_path / kind
    s = prepare_dataset([str(folder)], str(out), PrepareConfig(tokenizer=kind, vocab_size=300 if kind != "byte" else 0))
    m = shards.read_manifest(out)
    assert m["tokenizer"]["kind"] == kind and s["tokenizer"] == kind
    assert set(m["tokenizer"]["special_ids"]) == set(toklib.SPECIAL_TOKENS)
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    assert hf.convert_tokens_to_ids("<|endoftext|>") == m["eot_id"]
    assert s["bytes_per_token"] > (1.5 if kind != "byte" else 0.99)


def test_tokenizer_from_reuses_a_dataset_tokenizer(tmp_path):
    folder = tmp_path / "src"
    write_txt_folder(folder, n=20)
    first = prepare_dataset([str(folder)], str(tmp_path / "a"), PrepareConfig(vocab_size=300))
    second = prepare_dataset([str(folder)], str(tmp_path / "b"), PrepareConfig(tokenizer_from=str(tmp_path / "a")))
    assert second["tokenizer"] == "from:bpe" and second["tokens"] == first["tokens"]
    assert shards.read_manifest(tmp_path / "b")["tokenizer"]["from"] == str(tmp_path / "a")


def test_cleaning_options_reach_the_data(tmp_path):
    docs = ["<p>Hello <b>World</b></p>", "dup text here", "dup text here", "x", "Ünïcode &amp; more"]
    src = jsonl(tmp_path / "d.jsonl", docs)
    out = tmp_path / "ds"
    s = prepare_dataset([str(src)], str(out), PrepareConfig(
        tokenizer="byte", val_fraction=0.0, clean=["html,lowercase", "accents", "dedup", "short"], min_chars=2))
    assert decode_docs(out, "train") == ["\nhello world\n", "dup text here", "unicode & more"]
    assert s["dropped"] == {"dedup": 1, "short": 1}


@pytest.mark.parametrize("steps, same", [(["lowercase"], True), (["html"], False)])
def test_tokenizer_learned_on_lowercased_text_lowercases_new_text(tmp_path, capsys, steps, same):
    # Cased text at fine-tuning or inference time must reach the tokens the (uncased) model knows,
    # not <|unk|>; a cased tokenizer must keep case apart.
    src = jsonl(tmp_path / "d.jsonl", [d.title() for d in documents(60, seed=2)])
    out = tmp_path / "ds"
    prepare_dataset([str(src)], str(out), PrepareConfig(tokenizer="wordpiece", vocab_size=300, clean=steps))
    tok = toklib.load_tokenizer(out)
    unk = toklib.special_ids(tok)["unk"]
    lower = tok.encode("the quiet river walked home").ids
    assert unk not in lower or not same
    assert (tok.encode("The Quiet RIVER Walked Home").ids == lower) is same
    assert shards.read_manifest(out)["tokenizer"]["normalizes"] == (steps if same else [])
    # reusing this tokenizer for lowercased text warns exactly when it would not lowercase new text
    capsys.readouterr()
    prepare_dataset([str(src)], str(tmp_path / "again"), PrepareConfig(tokenizer_from=str(out), clean=["lowercase"]))
    assert ("keeps case" in capsys.readouterr().err) is not same


def test_literal_special_token_text_is_not_a_separator(tmp_path):
    src = jsonl(tmp_path / "d.jsonl", ["talking about <|endoftext|> in text", "second"])
    out = tmp_path / "ds"
    s = prepare_dataset([str(src)], str(out), PrepareConfig(tokenizer="byte", val_fraction=0.0))
    assert s["documents"]["train"] == 2
    assert decode_docs(out, "train")[0] == "talking about <|endoftext|> in text"


def test_builtin_python_docs(tmp_path, capsys):
    out = tmp_path / "pd"
    code, s, err = cli(capsys, "--builtin", "python-docs", "--out", str(out), "--tokenizer", "byte")
    assert code == 0, err
    assert s["documents"]["train"] > 100 and s["documents"]["val"] > 10
    assert 500_000 < s["bytes"]["train"] < 20_000_000
    info = shards.read_manifest(out)["inputs"][0]
    assert info["builtin"] == "python-docs" and len(info["sha256"]) == 64
    text = toklib.load_tokenizer(out).decode(np.asarray(shards.open_tokens(out, "train")[:20000]).tolist())
    assert "Module" in text or "def " in text


def test_hf_dataset_input(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"sentence": documents(12)}).save_to_disk(str(tmp_path / "hf"))
    s = prepare_dataset([], str(tmp_path / "ds"),
                        PrepareConfig(tokenizer="byte", hf_dataset=str(tmp_path / "hf"), text_field="sentence"))
    assert s["documents"]["train"] + s["documents"]["val"] == 12
    assert shards.read_manifest(tmp_path / "ds")["inputs"][0]["rows"] == 12


# --------------------------------------------------------------------------------------------------
# bad inputs: one clear line, exit 2, nothing written


def test_missing_path(tmp_path, capsys):
    code, out, err = cli(capsys, str(tmp_path / "nope"), "--out", str(tmp_path / "ds"))
    assert code == 2 and out is None
    assert err.strip().splitlines() == [f"budgetlm: error: input not found: {tmp_path / 'nope'}"]
    assert not (tmp_path / "ds").exists()


def test_empty_input(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n\n", encoding="utf-8")
    code, _, err = cli(capsys, str(tmp_path / "empty.txt"), "--out", str(tmp_path / "ds"))
    assert code == 2 and "empty input" in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".ds.tmp-*"))  # the temp folder is cleaned up


def test_no_inputs_at_all(tmp_path, capsys):
    code, _, err = cli(capsys, "--out", str(tmp_path / "ds"))
    assert code == 2 and "nothing to prepare" in err


def test_only_binary_files(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(b"\x00\x01" * 100)
    code, _, err = cli(capsys, str(tmp_path / "a.txt"), "--out", str(tmp_path / "ds"))
    assert code == 2 and "skipped" in err and "all inputs were skipped" in err


def test_binary_file_among_good_ones_is_skipped_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "src"
    write_txt_folder(folder, n=10)
    (folder / "zz.txt").write_bytes(b"\x00\x01" * 100)
    code, s, err = cli(capsys, str(folder), "--out", str(tmp_path / "ds"), "--tokenizer", "byte")
    assert code == 0 and s["skipped_files"] == 1
    assert "skipped" in err and "zz.txt" in err


def test_invalid_utf8_is_counted_and_warned(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(b"caf\xe9 and \xff more text here")
    code, s, err = cli(capsys, str(tmp_path / "a.txt"), "--out", str(tmp_path / "ds"), "--tokenizer", "byte")
    assert code == 0 and s["replacements"] == 2
    assert err.count("invalid UTF-8") == 1 and "2 invalid UTF-8" in err
    assert shards.read_manifest(tmp_path / "ds")["replacements"] == 2


def test_missing_field_and_column(tmp_path, capsys):
    src = jsonl(tmp_path / "d.jsonl", ["a", "b"], field="review")
    code, _, err = cli(capsys, str(src), "--out", str(tmp_path / "ds"))
    assert code == 2 and "d.jsonl:1: no field 'text'" in err
    (tmp_path / "d.tsv").write_text("sentence\tlabel\nhi\t1\n", encoding="utf-8")
    code, _, err = cli(capsys, str(tmp_path / "d.tsv"), "--out", str(tmp_path / "ds"), "--text-column", "txt")
    assert code == 2 and "d.tsv:1: no column 'txt'" in err
    assert not (tmp_path / "ds").exists()


def test_vocab_too_small(tmp_path, capsys):
    src = jsonl(tmp_path / "d.jsonl", ["a b c"])
    code, _, err = cli(capsys, str(src), "--out", str(tmp_path / "ds"), "--vocab-size", "100")
    assert code == 2 and "too small" in err and not (tmp_path / "ds").exists()


def test_existing_output_is_refused_then_overwritten(tmp_path, capsys):
    src = jsonl(tmp_path / "d.jsonl", documents(10))
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    out = tmp_path / "ds"
    assert cli(capsys, str(src), "--out", str(out), "--tokenizer", "byte")[0] == 0
    before = (out / "manifest.json").read_bytes()
    code, _, err = cli(capsys, str(src), "--out", str(out), "--tokenizer", "byte")
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert (out / "manifest.json").read_bytes() == before
    # a failing overwrite leaves the old dataset untouched
    names = sorted(p.name for p in out.iterdir())
    code, _, err = cli(capsys, str(tmp_path / "empty.txt"), "--out", str(out), "--overwrite")
    assert code == 2 and "empty input" in err and (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == names  # not even the lock file stays
    code, s, _ = cli(capsys, str(src), "--out", str(out), "--tokenizer", "bpe", "--vocab-size", "300", "--overwrite")
    assert code == 0 and shards.read_manifest(out)["tokenizer"]["kind"] == "bpe"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]  # no temp/old leftovers


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    src = jsonl(tmp_path / "d.jsonl", documents(5))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me", encoding="utf-8")
    code, _, err = cli(capsys, str(src), "--out", str(tmp_path / "mine"), "--overwrite")
    assert code == 2 and "not a folder budgetlm made" in err
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


# --------------------------------------------------------------------------------------------------
# an interrupted run leaves nothing that looks complete


def _big_corpus(path: Path, mb: float) -> None:
    rng = np.random.default_rng(0)
    words = np.array(("alpha beta gamma delta river stone light house garden winter quiet "
                      "little green bright letter morning road window music paper").split())
    with open(path, "w", encoding="utf-8") as fh:
        written = 0
        while written < mb * 1e6:
            line = " ".join(rng.choice(words, 2000)) + "\n"
            fh.write(line)
            written += len(line)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_leaves_no_complete_looking_folder(tmp_path, sig):
    src = tmp_path / "big.txt"
    _big_corpus(src, 24)
    out = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "budgetlm", "prepare", str(src), "--out", str(out), "--tokenizer", "bpe",
         "--vocab-size", "400", "--txt-documents", "line"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        # a shell without job control starts background jobs with SIGINT ignored, and Python keeps an
        # inherited SIG_IGN (no KeyboardInterrupt): give the child the default disposition
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 60
    spool = None
    while time.time() < deadline and proc.poll() is None:  # wait until it is writing
        temps = list(tmp_path.glob(".ds.tmp-*"))
        spool = temps[0] / "spool-train.bin" if temps else None
        if spool is not None and spool.exists() and spool.stat().st_size > 1_000_000:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "prepare finished before it could be interrupted: make the input bigger"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    # nothing at --out but, after a kill, the empty folder the write lock was taken in
    assert not out.exists() or (sig == signal.SIGKILL and [p.name for p in out.iterdir()] == [".budgetlm.lock"])
    for leftover in tmp_path.glob(".ds.*"):
        assert not (leftover / "manifest.json").exists()
    if sig == signal.SIGINT:  # a clean interruption removes its temp folder and says so
        assert not list(tmp_path.glob(".ds.*"))
        assert b"interrupted" in proc.stderr.read()
    else:  # a killed run's temp folder is removed by the next run over the same --out
        assert list(tmp_path.glob(".ds.tmp-*"))
        small = jsonl(tmp_path / "small.jsonl", documents(5))
        prepare_dataset([str(small)], str(out), PrepareConfig(tokenizer="byte"))  # no --overwrite needed
        assert not list(tmp_path.glob(".ds.tmp-*")) and shards.read_manifest(out)


def test_programmatic_api_raises_budget_error(tmp_path):
    with pytest.raises(BudgetError, match="--val-fraction"):
        prepare_dataset([str(tmp_path)], str(tmp_path / "o"), PrepareConfig(val_fraction=1.5))


def test_default_out_is_derived_from_the_input(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imdb").mkdir()
    src = jsonl(tmp_path / "imdb" / "train.jsonl", documents(5))
    code, s, err = cli(capsys, str(src), "--tokenizer", "byte")
    assert code == 0, err
    assert s["out"] == str(tmp_path / "out" / "imdb-train") and "writing to out/imdb-train" in err
    assert shards.read_manifest(tmp_path / "out" / "imdb-train")


def test_unreadable_tokenizer_from_fails_before_reading(tmp_path, capsys):
    src = jsonl(tmp_path / "d.jsonl", documents(5))
    code, _, err = cli(capsys, str(src), "--out", str(tmp_path / "ds"), "--tokenizer-from", str(tmp_path / "nope"))
    assert code == 2 and "tokenizer path not found" in err and not (tmp_path / "ds").exists()


def test_max_mb_stops_reading_and_closes_the_last_document(tmp_path):
    docs = documents(200, seed=4)
    src = jsonl(tmp_path / "d.jsonl", docs)
    s = prepare_dataset([str(src)], str(tmp_path / "ds"), PrepareConfig(tokenizer="byte", max_mb=0.01))
    total = s["bytes"]["train"] + s["bytes"]["val"]
    assert 10_000 <= total < 10_000 + max(len(d) for d in docs)
    for split in shards.SPLITS:  # every split still ends with an end-of-text token
        assert decode_docs(tmp_path / "ds", split) is not None
    # the python-docs corpus can be cut the same way (the demo uses this for quick runs)
    s = prepare_dataset([], str(tmp_path / "pd"), PrepareConfig(tokenizer="byte", builtin="python-docs", max_mb=0.2))
    assert 200_000 <= s["bytes"]["train"] + s["bytes"]["val"] < 300_000


def test_clean_list_swallowing_an_input_gets_a_hint(tmp_path, capsys):
    src = jsonl(tmp_path / "d.jsonl", documents(5))
    code, _, err = cli(capsys, "--clean", "html", str(src), "--out", str(tmp_path / "ds"))
    assert code == 2 and "put INPUT... before --clean" in err


def test_out_inside_or_around_an_input_is_refused(tmp_path, monkeypatch):
    """An output never lies inside an input (it would be read back, or replace it) nor holds one."""
    write_txt_folder(tmp_path / "corpus", n=10)
    before = sorted(p.name for p in (tmp_path / "corpus").iterdir())
    with pytest.raises(BudgetError, match="lies inside the input"):
        prepare_dataset([str(tmp_path / "corpus")], str(tmp_path / "corpus" / "ds"), PrepareConfig(tokenizer="byte"))
    with pytest.raises(BudgetError, match="contains the input"):
        prepare_dataset([str(tmp_path / "corpus")], str(tmp_path), PrepareConfig(tokenizer="byte", overwrite=True))
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == before


def test_a_dataset_from_before_markers_can_be_overwritten(tmp_path, capsys):
    """A folder with a budgetlm manifest but no `.budgetlm.json` marker is a dataset prepare made."""
    src = jsonl(tmp_path / "d.jsonl", documents(10))
    out = tmp_path / "ds"
    assert cli(capsys, str(src), "--out", str(out), "--tokenizer", "byte")[0] == 0
    (out / ".budgetlm.json").unlink()
    assert shards.Dataset.open(out).tokens("train") is not None  # still loads
    code, _, err = cli(capsys, str(src), "--out", str(out), "--tokenizer", "byte")
    assert code == 2 and "--overwrite" in err
    assert cli(capsys, str(src), "--out", str(out), "--tokenizer", "byte", "--overwrite")[0] == 0
    assert (out / ".budgetlm.json").exists()


def test_a_second_prepare_into_a_folder_being_written_is_refused(tmp_path, capsys):
    from budgetlm import fsio

    src = jsonl(tmp_path / "d.jsonl", documents(10))
    out = tmp_path / "ds"
    with fsio.FolderLock(out):  # as the first prepare holds it while it builds
        code, _, err = cli(capsys, str(src), "--out", str(out), "--tokenizer", "byte")
        assert code == 2 and "is being written by process" in err
        assert [p.name for p in out.iterdir()] == [".budgetlm.lock"]
    assert cli(capsys, str(src), "--out", str(out), "--tokenizer", "byte")[0] == 0  # once it is free
    assert ".budgetlm.lock" not in [p.name for p in out.iterdir()]


def test_a_failed_prepare_leaves_no_folder_behind(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    code, _, err = cli(capsys, str(tmp_path / "empty.txt"), "--out", str(tmp_path / "ds"))
    assert code == 2 and not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds*"))


def test_unwritable_output_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import errno

    from budgetlm import fsio

    def denied(self):  # what mkdir gives in a folder without write permission (even root on a read-only mount)
        raise PermissionError(errno.EACCES, "Permission denied", str(self.folder))

    monkeypatch.setattr(fsio.FolderLock, "__enter__", denied)
    src = jsonl(tmp_path / "d.jsonl", documents(5))
    code, _, err = cli(capsys, str(src), "--out", str(tmp_path / "ro" / "ds"), "--tokenizer", "byte")
    assert code == 2 and "cannot write" in err and "Permission denied" in err and "Traceback" not in err


@pytest.mark.parametrize("field, value, message", [
    ("tokenizer", "sentencepiece", "--tokenizer must be one of bpe, wordpiece, byte"),
    ("txt_documents", "page", "--txt-documents must be one of file, paragraph, line"),
    ("vocab_size", 10**9, "--vocab-size must be [0, 2097152]"),
    ("shard_tokens", 0, "--shard-tokens must be"),
    ("min_compression", float("nan"), "--min-compression must be"),
])
def test_python_api_checks_every_setting(field, value, message):
    with pytest.raises(BudgetError, match=re.escape(message)):
        PrepareConfig(**{field: value})


def test_every_prepare_flag_shows_its_default():
    import argparse

    from budgetlm.commands.prepare import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for action in parser._actions:
        if action.dest not in ("help", "inputs"):
            assert "(default: " in action.help, action.dest


def test_builtin_python_is_the_docs_next_to_the_standard_library_source():
    import ast

    from budgetlm.data import builtin

    docs = sum(len(t.encode()) for _, t in builtin.python_docs())
    names, size, parsed = [], 0, 0
    for name, text in builtin.python_all():
        names.append(name)
        size += len(text.encode())
        if name.startswith("source:") and parsed < 20:  # source documents are the modules' own code
            ast.parse(text)
            parsed += 1
    assert parsed == 20 and any(n.startswith("pydoc:") or n.startswith("stdlib:") for n in names)
    assert not any("test" in n.split(":")[1].split(".") for n in names if n.startswith("source:"))
    assert 3 * docs < size <= builtin.MAX_BYTES + builtin.MAX_SOURCE_BYTES
    assert set(builtin.BUILTINS) == {"python-docs", "python"}
