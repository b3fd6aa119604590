"""Input formats, compression, folders and bad inputs of budgetlm.data.sources."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pytest

from budgetlm.config import BudgetError
from budgetlm.data import sources
from budgetlm.data.sources import Piece, ReadOptions, Stats


def read(paths, **opt) -> tuple[list[Piece], Stats]:
    stats = Stats()
    files = sources.expand_inputs([str(p) for p in paths])
    return list(sources.read_files(files, ReadOptions(**opt), stats)), stats


def texts(pieces):
    return [p.text for p in pieces]


# --- one writer per format; the test below checks that every READERS entry has one


def _txt(p: Path, docs):
    p.write_text("\n\n".join(docs), encoding="utf-8")


def _jsonl(p: Path, docs):
    p.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")


def _json_array(p: Path, docs):
    p.write_text(json.dumps([{"text": d} for d in docs]), encoding="utf-8")


def _csv(p: Path, docs):
    import csv

    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "text"])
        for d in docs:
            w.writerow([1, d])


def _tsv(p: Path, docs):
    # GLUE-style TSV has no quoting, so a field cannot hold a newline
    p.write_text("text\tlabel\n" + "".join(f"{d.replace(chr(10), ' ')}\t0\n" for d in docs), encoding="utf-8")


def _parquet(p: Path, docs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs, "n": list(range(len(docs)))}), p)


WRITERS = {".txt": _txt, ".md": _txt, ".text": _txt, ".jsonl": _jsonl, ".json": _json_array,
           ".csv": _csv, ".tsv": _tsv, ".parquet": _parquet}
DOCS = ['first "quoted" document, with a comma', "second document\nwith two lines", "third — ünïcode"]


def test_every_reader_has_a_test_writer():
    assert set(WRITERS) == set(sources.READERS)


@pytest.mark.parametrize("suffix", sorted(WRITERS))
def test_each_format_reads_its_documents(tmp_path, suffix):
    p = tmp_path / f"data{suffix}"
    WRITERS[suffix](p, DOCS)
    pieces, stats = read([p])
    if suffix in (".txt", ".md", ".text"):  # the whole file is one document by default
        assert len(pieces) == 1 and pieces[0].doc_end and pieces[0].whole
        assert all(d in pieces[0].text for d in DOCS)
    else:
        expected = [d.replace("\n", " ") for d in DOCS] if suffix == ".tsv" else DOCS
        assert texts(pieces) == expected
        assert all(p.doc_end and p.whole for p in pieces)
    assert stats.files == [str(p)] and stats.replacements == 0


@pytest.mark.parametrize("comp", sorted(sources.OPENERS))
def test_each_compression_is_transparent(tmp_path, comp):
    raw = "".join(json.dumps({"text": d}) + "\n" for d in DOCS).encode()
    p = tmp_path / f"data.jsonl{comp}"
    if comp == ".gz":
        p.write_bytes(gzip.compress(raw))
    elif comp == ".xz":
        p.write_bytes(lzma.compress(raw))
    elif comp == ".bz2":
        p.write_bytes(bz2.compress(raw))
    else:
        import zstandard

        p.write_bytes(zstandard.ZstdCompressor().compress(raw))
    assert sources.split_suffix(p) == (".jsonl", comp)
    pieces, _ = read([p])
    assert texts(pieces) == DOCS


def test_txt_document_modes(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    assert texts(read([p], txt_documents="line")[0]) == ["one", "two", "three"]
    assert texts(read([p], txt_documents="paragraph")[0]) == ["one\ntwo\n", "three\n"]
    assert texts(read([p], txt_documents="file")[0]) == ["one\ntwo\n\nthree\n"]


def test_long_file_streams_in_blocks_at_line_ends(tmp_path):
    lines = [f"line number {i} of a long file\n" for i in range(2000)]
    p = tmp_path / "long.txt"
    p.write_text("".join(lines), encoding="utf-8")
    pieces, _ = read([p], block_chars=1000)
    assert len(pieces) > 10
    assert "".join(texts(pieces)) == "".join(lines)  # nothing lost or duplicated
    assert all(t.endswith("\n") for t in texts(pieces))  # cut at line ends
    assert [p.doc_end for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert not any(p.whole for p in pieces)
    assert max(len(t) for t in texts(pieces)) < 2000


def test_long_record_is_cut_into_blocks(tmp_path):
    long = "word " * 500 + "\n" + "more " * 500
    p = tmp_path / "d.jsonl"
    _jsonl(p, [long, "short"])
    pieces, _ = read([p], block_chars=1000)
    assert "".join(t for t in texts(pieces)[:-1]) == long
    assert pieces[-1].text == "short" and pieces[-1].whole


def test_folder_is_recursive_sorted_and_skips_unknown_suffixes(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a.txt").write_text("A", encoding="utf-8")
    (tmp_path / "b" / "deep" / "c.md").write_text("C", encoding="utf-8")
    (tmp_path / "b" / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden.txt").write_text("H", encoding="utf-8")
    files = sources.expand_inputs([str(tmp_path)])
    assert [f.name for f in files] == ["a.txt", "c.md"]


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(BudgetError, match="input not found: .*nope.txt"):
        sources.expand_inputs([str(tmp_path / "nope.txt")])


def test_folder_without_readable_files_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"123")
    with pytest.raises(BudgetError, match="no readable files"):
        sources.expand_inputs([str(tmp_path)])


def test_binary_file_is_skipped_and_recorded(tmp_path):
    (tmp_path / "good.txt").write_text("good text", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"\x00\x01\x02binary" * 10)
    pieces, stats = read([tmp_path])
    assert texts(pieces) == ["good text"]
    assert len(stats.skipped) == 1 and stats.skipped[0][0].endswith("bad.txt")


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"caf\xe9 ok \xff\xfe end")
    pieces, stats = read([p])
    assert pieces[0].text == "caf\ufffd ok \ufffd\ufffd end"
    assert stats.replacements == 3


JAPANESE = "これは日本語の文章です。名前と住所を書いてください。\n" * 20


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-32", "UTF-32")])
def test_utf16_or_32_text_is_refused_by_its_bom_even_in_a_folder(tmp_path, encoding, name):
    (tmp_path / "good.txt").write_text("good text", encoding="utf-8")
    (tmp_path / "wide.txt").write_bytes("the king and the queen\n".encode(encoding))
    with pytest.raises(BudgetError, match=rf"wide.txt is {name} text: budgetlm reads UTF-8; convert it, e.g. "
                                          rf"iconv -f {name} -t UTF-8"):
        read([tmp_path])


@pytest.mark.parametrize("size", [1, 200])  # judged at the end of a short file, after 64 Ki chars of a long one
def test_text_in_another_encoding_is_refused(tmp_path, size):
    p = tmp_path / "sjis.txt"
    p.write_bytes((JAPANESE * size).encode("shift_jis"))
    with pytest.raises(BudgetError, match=r"sjis.txt is not UTF-8 text \(\d+% of its characters are invalid"):
        read([p])


def test_latin1_prose_is_read_with_its_few_bytes_replaced(tmp_path):
    p = tmp_path / "latin1.txt"
    text = "Le café de la rue était fermé, mais la boulangerie à côté vendait du pain.\n" * 50
    p.write_bytes(text.encode("latin-1"))
    pieces, stats = read([p])
    assert stats.replacements == text.count("é") + text.count("à") + text.count("ô")
    assert pieces[0].text == text.replace("é", "\ufffd").replace("à", "\ufffd").replace("ô", "\ufffd")


def test_labelled_readers_use_the_same_decoding_rule(tmp_path):
    from budgetlm.labelled import read_labelled, read_lines

    tsv = tmp_path / "rows.tsv"
    tsv.write_bytes(("text\tlabel\n" + "".join(f"{line}\t1\n" for line in JAPANESE.split())).encode("shift_jis"))
    with pytest.raises(BudgetError, match="rows.tsv is not UTF-8 text"):
        read_labelled(tsv)
    lines = tmp_path / "lines.txt"
    lines.write_bytes(JAPANESE.encode("cp932"))
    with pytest.raises(BudgetError, match="lines.txt is not UTF-8 text"):
        read_lines(lines)
    lines.write_bytes("caf\xe9 au lait, s'il vous pla\xeet\n".encode("latin-1"))
    assert read_lines(lines) == ["caf\ufffd au lait, s'il vous pla\ufffdt"]


def test_utf8_bom_is_dropped(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes("\ufeffhello".encode("utf-8"))
    assert texts(read([p])[0]) == ["hello"]


def test_missing_jsonl_field_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "ok"}\n\n{"body": "no text here"}\n', encoding="utf-8")
    with pytest.raises(BudgetError, match=r"d\.jsonl:3: no field 'text' \(fields: body\).*--text-field"):
        read([p])


def test_other_jsonl_field_and_invalid_json(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"body": "a"}\n{"body": "b"}\n', encoding="utf-8")
    assert texts(read([p], text_field="body")[0]) == ["a", "b"]
    p.write_text('{"body": "a"}\n{not json\n', encoding="utf-8")
    with pytest.raises(BudgetError, match=r"d\.jsonl:2: invalid JSON"):
        read([p], text_field="body")


def test_missing_csv_column_names_file_and_line(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("sentence,label\nhello,1\n", encoding="utf-8")
    with pytest.raises(BudgetError, match=r"d\.csv:1: no column 'text' \(columns: sentence, label\).*--text-column"):
        read([p])
    assert texts(read([p], text_column="sentence")[0]) == ["hello"]


def test_short_csv_row_names_its_line(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("label\ttext\n1\tfine\n0\n", encoding="utf-8")
    with pytest.raises(BudgetError, match=r"d\.tsv:3: row has 1 fields"):
        read([p])


def test_missing_parquet_column(tmp_path):
    p = tmp_path / "d.parquet"
    _parquet(p, DOCS)
    with pytest.raises(BudgetError, match="no column 'body'"):
        read([p], text_column="body")


def test_hf_dataset_from_save_to_disk_folder(tmp_path):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": DOCS, "label": [0, 1, 0]}),
        "test": datasets.Dataset.from_dict({"text": ["held out"], "label": [1]}),
    })
    dd.save_to_disk(str(tmp_path / "ds"))
    pieces, info = sources.read_hf(str(tmp_path / "ds"), "train", ReadOptions())
    assert texts(pieces) == DOCS and info["rows"] == 3
    pieces, _ = sources.read_hf(str(tmp_path / "ds"), "test", ReadOptions())
    assert texts(pieces) == ["held out"]
    with pytest.raises(BudgetError, match="no split 'validation'"):
        sources.read_hf(str(tmp_path / "ds"), "validation", ReadOptions())
    with pytest.raises(BudgetError, match="no field 'body'"):
        sources.read_hf(str(tmp_path / "ds"), "train", ReadOptions(text_field="body"))


def test_hf_dataset_that_cannot_load_is_a_clear_error(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # not the user's cache
    (tmp_path / "not_a_dataset").mkdir()
    (tmp_path / "not_a_dataset" / "junk.bin").write_bytes(b"\x00\x01 no dataset here")
    with pytest.raises(BudgetError, match="cannot load Hugging Face dataset"):
        sources.read_hf(str(tmp_path / "not_a_dataset"), "train", ReadOptions())


@pytest.mark.parametrize("comp", sorted(sources.OPENERS))
def test_damaged_compressed_file_is_a_clear_error(tmp_path, comp):
    p = tmp_path / f"junk.txt{comp}"
    p.write_bytes(b"this is not compressed data at all")
    with pytest.raises(BudgetError, match="cannot read .*junk.txt"):
        read([p])


def test_truncated_gzip_is_a_clear_error(tmp_path):
    import os

    p = tmp_path / "cut.txt.gz"
    p.write_bytes(gzip.compress(os.urandom(200_000).hex().encode())[:50_000])
    with pytest.raises(BudgetError, match="cannot read .*cut.txt.gz"):
        read([p])


def test_one_hf_reader_for_saved_folders_of_both_kinds(tmp_path):
    """`load_hf_split` reads a save_to_disk DatasetDict folder and a saved single Dataset folder, for
    prepare and for labelled data alike."""
    datasets = pytest.importorskip("datasets")
    from budgetlm.labelled import read_hf_dataset

    rows = {"text": ["a good film", "a bad film"], "label": [1, 0]}
    single = datasets.Dataset.from_dict(rows)
    single.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": single, "validation": single}).save_to_disk(str(tmp_path / "dict"))
    for spec in ("single", "dict"):
        assert sources.load_hf_split(str(tmp_path / spec), "train")["text"] == rows["text"]
        assert read_hf_dataset(str(tmp_path / spec), "train", "text", "", "label").labels == ["1", "0"]
        pieces, info = sources.read_hf(str(tmp_path / spec), "train", ReadOptions())
        assert [p.text for p in pieces] == rows["text"] and info["rows"] == 2
    with pytest.raises(BudgetError, match="no split 'test'"):
        sources.load_hf_split(str(tmp_path / "dict"), "test")


def test_one_json_reader_for_prepare_and_labelled_data(tmp_path):
    from budgetlm.labelled import read_labelled

    arr = tmp_path / "rows.json"
    arr.write_text('[{"text": "x y", "label": "a"}, {"text": "z", "label": "b"}]', encoding="utf-8")
    assert [r for _, r in sources.json_records(arr)][1] == {"text": "z", "label": "b"}
    assert read_labelled(arr).texts == ["x y", "z"]  # an array .json works for labelled data too
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n', encoding="utf-8")
    with pytest.raises(BudgetError, match="bad.jsonl:2: invalid JSON"):
        list(sources.json_records(bad))


def test_hf_hub_name_with_config_and_a_folder_of_data_files(tmp_path, monkeypatch):
    """NAME[:CONFIG] goes to `datasets.load_dataset(NAME, CONFIG, split=...)` (the hub or its cache);
    a folder of data files is loaded by `load_dataset` from the folder, offline."""
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "files"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", ["one", "two"])
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # not the user's cache
    assert sources.load_hf_split(str(folder), "train")["text"] == ["one", "two"]
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": ["from the hub"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert sources.load_hf_split("glue:sst2", "validation")["text"] == ["from the hub"]
    assert sources.load_hf_split("imdb", "train")["text"] == ["from the hub"]
    assert calls == [("glue", "sst2", "validation"), ("imdb", None, "train")]

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hugging Face Hub\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BudgetError, match=r"^cannot load Hugging Face dataset 'imdb' split 'train': Couldn't reach the "
                                          r"Hugging Face Hub$"):
        sources.load_hf_split("imdb", "train")
