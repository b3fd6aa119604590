"""Tokenizer kinds (one test per registry entry), special tokens, loading and bad vocab sizes."""

from __future__ import annotations

import pytest

from budgetlm.config import BudgetError
from budgetlm.data import tokenizer as toklib
from data_helpers import documents

TEXTS = documents(60, seed=1)
SAMPLE = "The quiet river walked home. Ünïcode too!"


@pytest.fixture(scope="module")
def trained():
    return {kind: toklib.train_tokenizer(kind, iter(TEXTS), 300) if kind != "byte"
            else toklib.train_tokenizer(kind, None) for kind in toklib.TOKENIZERS}


@pytest.mark.parametrize("kind", sorted(toklib.TOKENIZERS))
def test_each_kind_has_all_specials_and_encodes(trained, kind, tmp_path):
    tok = trained[kind]
    ids = toklib.special_ids(tok)
    assert set(ids) == set(toklib.SPECIAL_TOKENS)
    assert len(set(ids.values())) == len(ids)  # six distinct ids
    enc = tok.encode(SAMPLE).ids
    assert enc and max(enc) < tok.get_vocab_size()
    decoded = tok.decode(enc)
    if kind == "wordpiece":  # whitespace is not kept exactly; words are
        assert "quiet river walked" in decoded.replace(" ##", "")
    else:
        assert decoded == SAMPLE  # byte-level kinds round-trip exactly
    # tokenizer.json loads in transformers as a fast tokenizer with the same ids
    path = tmp_path / "tokenizer.json"
    toklib.save_tokenizer(tok, path)
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert hf(SAMPLE, add_special_tokens=False)["input_ids"] == enc
    assert toklib.load_tokenizer(tmp_path).encode(SAMPLE).ids == enc  # folder form too


def test_byte_kind_is_the_utf8_bytes():
    tok = toklib.train_tokenizer("byte", None)
    assert tok.encode("hé\n").ids == list("hé\n".encode("utf-8"))
    assert tok.get_vocab_size() == 262
    assert toklib.special_ids(tok)["eot"] == 256


def test_bpe_respects_vocab_size(trained):
    assert trained["bpe"].get_vocab_size() <= 300
    # merges were learned: corpus text takes fewer tokens than bytes
    text = TEXTS[0]
    assert len(trained["bpe"].encode(text).ids) < 0.7 * len(text.encode("utf-8"))


def test_vocab_too_small_is_a_clear_error():
    with pytest.raises(BudgetError, match="--vocab-size 200 is too small for a bpe tokenizer.*262"):
        toklib.train_tokenizer("bpe", iter(TEXTS), 200)
    with pytest.raises(BudgetError, match="too small for a wordpiece"):
        toklib.train_tokenizer("wordpiece", iter(TEXTS), 10)


def test_unknown_kind_and_empty_text():
    with pytest.raises(BudgetError, match="unknown tokenizer 'sentencepiece'"):
        toklib.train_tokenizer("sentencepiece", iter(TEXTS), 300)
    with pytest.raises(BudgetError, match="training text is empty"):
        toklib.train_tokenizer("bpe", iter([]), 300)


def test_foreign_tokenizer_gets_missing_specials(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    foreign = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    foreign.pre_tokenizer = pre_tokenizers.Whitespace()
    foreign.save(str(tmp_path / "tokenizer.json"))
    tok = toklib.load_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(BudgetError, match="lacks the special token"):
        toklib.special_ids(tok)
    added = toklib.ensure_specials(tok)
    assert len(added) == 6
    assert toklib.special_ids(tok)["eot"] == 3  # appended after the existing vocabulary
    assert tok.encode("hello world").ids == [0, 1]


def test_load_errors(tmp_path):
    with pytest.raises(BudgetError, match="not found"):
        toklib.load_tokenizer(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BudgetError, match="cannot read tokenizer"):
        toklib.load_tokenizer(tmp_path)


@pytest.mark.parametrize("kind", sorted(toklib.TOKENIZERS))
def test_training_is_deterministic(kind):
    # tokenizers' own WordPieceTrainer fails this (hash-order '##' symbols and tie-breaking)
    runs = {toklib.train_tokenizer(kind, iter(TEXTS), 300 if kind != "byte" else 0).to_str() for _ in range(3)}
    assert len(runs) == 1


def test_wordpiece_learns_continuation_pieces():
    tok = toklib.train_tokenizer("wordpiece", iter(TEXTS), 400)
    vocab = tok.get_vocab()
    assert "##s" in vocab and "s" in vocab  # 's' seen word-initially and inside words
    assert all(not t.startswith("##") or len(t) > 2 for t in vocab)
    # frequent words are whole tokens; an unseen word is split into known pieces, not <|unk|>
    assert tok.encode("river").tokens == ["river"]
    pieces = tok.encode("riverstone").tokens
    assert pieces[0] == "river" and all(p.startswith("##") for p in pieces[1:])
    assert tok.encode("Qzx€").tokens == ["<|unk|>"]  # characters never seen: unknown


@pytest.mark.parametrize("kind, train_bytes, want", [
    ("bpe", None, 8192),  # corpus size unknown: the largest auto choice
    ("bpe", 10_000, 1024),  # tiny corpus: the floor
    ("bpe", 1_003_854, 2048),  # Tiny Shakespeare's 90% split
    ("wordpiece", 2_100_000, 4096),  # the built-in python-docs corpus
    ("bpe", 50_800_000, 8192),  # Gutenberg: capped
    ("byte", 50_800_000, 262),  # the byte kind has one fixed size
])
def test_auto_vocab_is_sized_to_the_corpus(kind, train_bytes, want):
    assert toklib.auto_vocab(kind, train_bytes) == want


def test_apply_cleaning_strips_accents_then_lowercases():
    tok = toklib.train_tokenizer("byte", None)
    assert toklib.apply_cleaning(tok, ["html", "whitespace"]) == []  # these leave the tokenizer alone
    assert tok.encode("Élan").ids != tok.encode("elan").ids
    assert toklib.apply_cleaning(tok, ["lowercase", "accents"]) == ["accents", "lowercase"]
    assert tok.encode("Élan ÜBER").ids == tok.encode("elan uber").ids
